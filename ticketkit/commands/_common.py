"""What every command shares: the stderr console, progress, shared options, input artifacts and
output. Nothing here imports torch.

stdout carries only the artifact path (one line) or, with --json, one JSON object; everything
for humans goes to stderr. Progress bars are transient and drawn only when stderr is a terminal;
otherwise a plain line is printed every 15 seconds.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ticketkit.commands._console import Progress, console  # noqa: F401 (c.Progress)
from ticketkit.errors import UsageError

Dataset = Annotated[
    str | None, typer.Option("--dataset", help="dataset name (see `ticketkit plugins`)")
]
Data = Annotated[str | None, typer.Option("--data", help="directory holding the dataset files")]
Subset = Annotated[
    int | None, typer.Option("--subset", help="train on the first N samples of a fixed shuffle")
]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers", help="processes decoding a streamed dataset (imagenet, large images)"
    ),
]
Epochs = Annotated[int | None, typer.Option("--epochs", help="training epochs")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="training batch size")]
Lr = Annotated[float | None, typer.Option("--lr", help="learning rate")]
Optimizer = Annotated[
    str | None, typer.Option("--optimizer", help="optimizer name: sgd, adam, adamw, ...")
]
Momentum = Annotated[float | None, typer.Option("--momentum", help="SGD momentum")]
WeightDecay = Annotated[
    float | None, typer.Option("--weight-decay", help="weight decay (applies to scores too)")
]
Schedule = Annotated[
    str | None, typer.Option("--schedule", help="learning-rate schedule: cosine, constant, step")
]
LrSteps = Annotated[
    str | None,
    typer.Option(
        "--lr-steps", help="epochs at which --schedule step multiplies the lr, e.g. 30,60"
    ),
]
LrGamma = Annotated[float | None, typer.Option("--lr-gamma", help="the step schedule's factor")]
Warmup = Annotated[
    int | None, typer.Option("--warmup", help="epochs of linear lr warm-up before the schedule")
]
Psg = Annotated[
    bool | None,
    typer.Option(
        "--psg/--no-psg",
        help="predictive sign gradient backward (Peek-a-Boo): an emulation of low-precision "
        "hardware that saves no time",
    ),
]
PsgOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--psg-option",
        help="PSG setting name=value: msb-bits (8), msb-bits-grad (16), threshold (1e-7), "
        "sign (false)",
    ),
]
Seed = Annotated[
    int | None, typer.Option("--seed", help="random seed (weights, scores, data order)")
]
Device = Annotated[
    str | None, typer.Option("--device", help="auto (cuda if present), cpu, cuda, cuda:N")
]
Amp = Annotated[
    str | None,
    typer.Option("--amp", help="mixed precision: bf16, or fp16 with loss scaling (CPU or CUDA)"),
]
Name = Annotated[
    str | None,
    typer.Option("--name", help="run directory name (default: derived from the config)"),
]
Out = Annotated[str | None, typer.Option("--out", help="parent directory of run directories")]
ConfigFile = Annotated[
    str | None, typer.Option("--config", help="YAML file of options (CLI flags win)")
]
Preset = Annotated[
    str | None, typer.Option("--preset", help="a shipped recipe, e.g. biprop-mpt-1-32")
]
Resume = Annotated[
    Path | None,
    typer.Option("--resume", help="continue the run in this directory with its saved config"),
]
Json = Annotated[bool, typer.Option("--json", help="print one JSON record instead of the path")]
EvalEvery = Annotated[
    int | None,
    typer.Option("--eval-every", help="evaluate every N epochs (0: only the final ticket)"),
]
Force = Annotated[bool, typer.Option("--force", help="recompute even if this run already finished")]
ArchOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--arch-option",
        "-A",
        help="arch option name=value, e.g. -A depth=16 (see `ticketkit plugins show ARCH`)",
    ),
]
OptimizerOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--optimizer-option",
        "-O",
        help="optimizer option name=value, e.g. -O nesterov=true (`ticketkit plugins show sgd`)",
    ),
]
RoleOptimizers = Annotated[
    list[str] | None,
    typer.Option(
        "--role-optimizer",
        help="send a parameter role to its own optimizer, ROLE=NAME, e.g. --role-optimizer "
        "norms=adam (roles: weights, binary_weights, scores, norms, other)",
    ),
]
Input = Annotated[
    str | None,
    typer.Argument(
        help="input artifact: a path, '-', or piped from another command", show_default=False
    ),
]
Options = Annotated[
    list[str] | None,
    typer.Option(
        "--option", "-o", help="method option name=value (see `ticketkit plugins show METHOD`)"
    ),
]


def show_defaults(
    config_class: type | None = None, **defaults: Any
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a command so that each option's help ends with its effective default
    ("[default: 10]"): the config dataclass's, or one given as a keyword.

    The options themselves default to None, so that a config file, a preset or a method's own
    defaults can fill what the command line leaves out (precedence: runs/config.py); typer
    would then show no default at all. Each command gets its own copy of a shared option's
    typer info, since the same option has different defaults (`--lr`: 0.1 to prune, 0.01 to
    fine-tune).
    """
    import copy
    import dataclasses
    import typing

    if config_class is not None:
        found = {f.name: f.default for f in dataclasses.fields(config_class)}
        defaults = {**found, **defaults}

    def apply(command: Callable[..., None]) -> Callable[..., None]:
        hints = typing.get_type_hints(command, include_extras=True)
        for name, hint in hints.items():
            value = defaults.get(name, dataclasses.MISSING)
            if value in (None, dataclasses.MISSING) or typing.get_origin(hint) is not Annotated:
                continue  # no default of its own (filled from elsewhere), or not an option
            base, *extras = typing.get_args(hint)
            for i, info in enumerate(extras):
                if isinstance(info, typer.models.OptionInfo):
                    info = extras[i] = copy.copy(info)
                    # escaped: typer renders help as rich markup, where [...] is a tag
                    info.help = f"{info.help} \\[default: {_shown(info, value)}]"
            command.__annotations__[name] = Annotated[(base, *extras)]  # type: ignore[valid-type]
        return command

    return apply


def _shown(info: Any, value: Any) -> str:
    """A default as the user would type it: a switch's flag (`--no-learn-bn`), else the value."""
    # in `Annotated`, typer keeps the first declaration where a default would go
    decls = (info.default, *info.param_decls)
    declared = next((d for d in decls if isinstance(d, str) and "/" in d), None)
    if isinstance(value, bool) and declared is not None:
        on, off = declared.split("/")
        return on if value else off
    return str(value)


def config_values(arguments: dict[str, Any], config_class: type) -> dict[str, Any]:
    """The command's arguments that are keys of its config dataclass (pass `locals()`)."""
    import dataclasses

    keys = {f.name for f in dataclasses.fields(config_class)}
    return {key: value for key, value in arguments.items() if key in keys}


def resolve_config(
    arguments: dict[str, Any],
    config_class: type,
    command: str,
    *,
    parsed: dict[str, dict[str, Any]] | None = None,
    preset: str | None = None,
    method_defaults: bool = False,
) -> Any:
    """The command's effective config, from its arguments (pass `locals()`): the typed
    options, the `-O`/`--role-optimizer` assignments, `parsed` mappings the command built
    itself (arch options with --width, method options), then --resume, the config file, the
    preset and, with `method_defaults`, the chosen method's defaults beneath them."""
    from ticketkit import registry
    from ticketkit.runs import config as configs
    from ticketkit.specs import parse_assignments

    cli = config_values(arguments, config_class)
    given = {
        "optimizer_options": parse_assignments(
            arguments.get("optimizer_option"), "--optimizer-option"
        ),
        "role_optimizers": parse_assignments(arguments.get("role_optimizer"), "--role-optimizer"),
        **(parsed or {}),
    }
    # an empty mapping is "not given": it must not hide the config file's or the preset's
    cli.update({key: mapping or None for key, mapping in given.items()})
    config = arguments.get("config")
    if arguments.get("resume") is not None:
        cli, config = resumed(arguments["resume"], cli, config, preset, config_class, command)
        preset = None
    beneath = registry.method_defaults if method_defaults else None
    return configs.resolve(config_class, cli, config, preset, beneath)


def resumed(
    resume: Path,
    given: dict[str, Any],
    config: str | None,
    preset: str | None,
    config_class: type,
    command: str,
) -> tuple[dict[str, Any], str]:
    """CLI values and config file that continue the run in `resume` (no preset: the saved
    config is complete).

    The run's saved config is its whole config, so any other setting given with --resume would
    be lost without a word: that, and a run of another command, are errors. Only --device and
    --workers may change (a run started on a GPU can finish on the CPU).
    """
    import dataclasses

    from ticketkit.runs.config import read_yaml

    saved = resume / "config.yaml"
    if not saved.is_file():
        raise UsageError(f"--resume {resume}: not a run directory (no config.yaml)")
    keys = {str(key).replace("-", "_") for key in read_yaml(saved, "--resume")}
    if not keys <= {f.name for f in dataclasses.fields(config_class)}:
        raise UsageError(f"--resume {resume}: not a `ticketkit {command}` run")
    flags = {"options": "--option", "optimizer_options": "--optimizer-option"}
    flags["role_optimizers"] = "--role-optimizer"
    flags["arch_options"] = "--arch-option/--width/--binary-act"
    extra = [
        flags.get(k, f"--{k.replace('_', '-')}")
        for k, v in given.items()
        if k not in ("device", "workers") and v is not None
    ]
    extra.sort()
    extra += [flag for flag, v in (("--config", config), ("--preset", preset)) if v is not None]
    if extra:
        raise UsageError(
            f"--resume continues a run with its saved settings; drop {', '.join(extra)} "
            "(only --device and --workers may change)"
        )
    continued = {"name": resume.name, "out": str(resume.parent)}
    continued.update({k: given.get(k) for k in ("device", "workers")})
    return continued, str(saved)


def main_process() -> bool:
    """False on torchrun's ranks other than 0, which neither print nor write (read from the
    environment, as ticketkit.training.distributed does, to keep torch out of the CLI)."""
    return os.environ.get("WORLD_SIZE", "1") in ("", "1") or os.environ.get("RANK") in ("", "0")


def emit(record: dict[str, Any], as_json: bool) -> None:
    """The one thing a command writes to stdout (rank 0's, under torchrun)."""
    if not main_process():
        return
    if as_json:
        sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
    else:
        sys.stdout.write(f"{record['path']}\n")
    sys.stdout.flush()


def read_input(arg: str | None, what: str, configured: str | None = None) -> str:
    """An input artifact: the argument (a path, or `-` for stdin), else the config's `input`,
    else a path line or JSON record piped on stdin."""
    if arg and arg != "-":
        return arg
    if arg is None and configured:
        return configured
    if arg is None and sys.stdin.isatty():
        raise UsageError(f"no {what} given: pass its path or pipe one in")
    text = sys.stdin.read().strip()
    if not text:
        raise UsageError(f"no {what} on stdin: the upstream command printed nothing (did it fail?)")
    line = text.splitlines()[-1].strip()
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"stdin: not a JSON record: {line[:80]}") from None
        if "path" not in record:
            raise UsageError("stdin: the JSON record has no 'path'")
        return str(record["path"])
    return line


def layer_table(layers: dict[str, dict[str, Any]], title: str = "layers") -> Table:
    """Per-layer shape, kept fraction (with a bar) and storage bits."""
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col, justify in (
        ("layer", "left"),
        ("shape", "left"),
        ("kept", "right"),
        ("", "left"),
        ("bits", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for path, info in layers.items():
        n = 1
        for d in info["shape"]:
            n *= d
        frac = info["kept"] / n if n else 0.0
        bar = "█" * round(frac * 20) + "·" * (20 - round(frac * 20))
        bits = n + (info["kept"] if info["weights"] != "values" else 32 * info["kept"])
        table.add_row(
            path, "x".join(map(str, info["shape"])), f"{100 * frac:.1f}%", bar, f"{bits:,}"
        )
    return table


def show_layers(result: Any) -> None:
    """The per-layer sparsity table of a finished ticket, on stderr."""
    if result.layers:
        console.print(layer_table(result.layers, title=f"{result.path}"))
