"""`ticketkit find-ticket`: a lottery ticket by iterative magnitude pruning with rewinding (IMP).

Each pruning level is a stage of the run with its own ticket, so a killed search continues at
the first unfinished level. stdout: the final ticket's path (or, with --json, one record with a
`levels` list); stderr: a table of the levels and the final ticket's layers.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ticketkit.commands import _common as c
from ticketkit.errors import UsageError
from ticketkit.runs.config import FindTicketConfig
from ticketkit.specs import parse_assignments


@c.show_defaults(FindTicketConfig, width=1.0)  # every built-in arch's
def find_ticket(
    method: Annotated[
        str | None,
        typer.Option("--method", "-m", help="imp or slimming (`ticketkit plugins`)"),
    ] = None,
    arch: Annotated[
        str | None, typer.Option("--arch", help="architecture (see `ticketkit plugins`)")
    ] = None,
    k: Annotated[
        float | None,
        typer.Option("--k", help="kept fraction of weights (slimming: channels), 0 < k <= 1"),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option("--rate", help="fraction of the remaining weights pruned per level (0.2)"),
    ] = None,
    levels: Annotated[
        int | None,
        typer.Option("--levels", help="pruning levels after the dense level 0 (default: to --k)"),
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds", help="reach --k in exactly N levels (1: one-shot); not with --rate/--levels"
        ),
    ] = None,
    rewind: Annotated[
        str | None,
        typer.Option(
            "--rewind", help="survivors restart at: 0 (the init), Nep or Nit of level 0 (0)"
        ),
    ] = None,
    reinit: Annotated[
        str | None,
        typer.Option("--reinit", help="random: fresh random weights each level, not rewinding"),
    ] = None,
    early_bird: Annotated[
        bool | None,
        typer.Option(
            "--early-bird/--no-early-bird",
            help="end dense training once the first pruning's mask stops changing (Early-Bird)",
        ),
    ] = None,
    eb_window: Annotated[
        int | None,
        typer.Option("--eb-window", help="Early-Bird: masks compared, newest and older (5)"),
    ] = None,
    eb_eps: Annotated[
        float | None,
        typer.Option("--eb-eps", help="Early-Bird: normalised Hamming distance held equal (0.1)"),
    ] = None,
    controls: Annotated[
        bool | None,
        typer.Option(
            "--controls/--no-controls",
            help="per level, also train a random mask and the mask with random weights",
        ),
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option("--scope", help="global: one threshold (default); layer: rate per layer"),
    ] = None,
    dataset: c.Dataset = None,
    data: c.Data = None,
    subset: c.Subset = None,
    workers: c.Workers = None,
    init: Annotated[
        str | None,
        typer.Option("--init", help="weight init: kaiming-normal, ... (default: the method's)"),
    ] = None,
    width: Annotated[
        float | None, typer.Option("--width", help="width multiplier of the arch")
    ] = None,
    dense_first: Annotated[
        bool | None,
        typer.Option("--dense-first/--prune-first", help="leave the first layer unpruned"),
    ] = None,
    dense_last: Annotated[
        bool | None,
        typer.Option("--dense-last/--prune-last", help="leave the last layer unpruned"),
    ] = None,
    option: c.Options = None,
    arch_option: c.ArchOptions = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="training epochs per level")
    ] = None,
    batch_size: c.BatchSize = None,
    optimizer: c.Optimizer = None,
    optimizer_option: c.OptimizerOptions = None,
    role_optimizer: c.RoleOptimizers = None,
    lr: c.Lr = None,
    momentum: c.Momentum = None,
    weight_decay: c.WeightDecay = None,
    schedule: c.Schedule = None,
    lr_steps: c.LrSteps = None,
    lr_gamma: c.LrGamma = None,
    warmup: c.Warmup = None,
    seed: c.Seed = None,
    device: c.Device = None,
    amp: c.Amp = None,
    eval_every: c.EvalEvery = None,
    name: c.Name = None,
    out: c.Out = None,
    config: c.ConfigFile = None,
    resume: c.Resume = None,
    force: c.Force = False,
    json_out: c.Json = False,
) -> None:
    """Find a lottery ticket by iterative pruning, one ticket per level; print the final one."""
    from ticketkit import jobs
    from ticketkit.runs import config as configs

    arch_options = parse_assignments(arch_option, "--arch-option")
    if width is not None:
        arch_options["width"] = width
    options: dict[str, Any] = parse_assignments(option, "--option")
    # the method's own options, given their own flags because IMP is what this command is for
    shorthand = {
        "rate": rate,
        "levels": levels,
        "rounds": rounds,
        "rewind": rewind,
        "reinit": reinit,
        "early_bird": early_bird,
        "eb_window": eb_window,
        "eb_eps": eb_eps,
        "controls": controls,
    }
    options.update({key: value for key, value in shorthand.items() if value is not None})
    if "rounds" in options and "rate" in options:  # even --rate 0.2, the default: say so
        raise UsageError("--rounds sets the levels and their rate from --k: drop --rate")
    cfg = c.resolve_config(
        locals(),
        configs.FindTicketConfig,
        "find-ticket",
        parsed={"options": options, "arch_options": arch_options},
        method_defaults=True,
    )
    result = jobs.find_ticket(cfg, c.Progress(), force=force)
    c.console.print(levels_table(result.levels))
    c.show_layers(result)
    c.emit(result.record(), json_out)


def levels_table(levels: list[dict[str, Any]]) -> Any:
    """One row per level: weights kept, the fraction remaining, and the level's accuracy, and
    the top-1 of its controls where they were trained (the ticket should beat both)."""
    from rich.table import Table

    controls = any("controls" in entry for entry in levels)
    table = Table(title="levels", title_justify="left", show_edge=False, pad_edge=False)
    columns = ["level", "kept", "remaining", "top-1", "top-5"]
    columns += ["random mask", "random reinit"] if controls else []
    for column in columns:
        table.add_column(column, justify="left" if column == "level" else "right")
    for entry in levels:
        row = [
            str(entry["level"]),
            f"{entry['kept']:,}",
            f"{100 * entry['k']:.2f}%",
            _acc(entry["metrics"], "test_acc1"),
            _acc(entry["metrics"], "test_acc5"),
        ]
        if controls:
            found = entry.get("controls", {})
            row += [
                _acc(found[name]["metrics"], "test_acc1") if name in found else "-"
                for name in ("random_mask", "random_reinit")
            ]
        table.add_row(*row)
    return table


def _acc(metrics: dict[str, Any], key: str) -> str:
    return f"{metrics.get(key, float('nan')):.2f}%"
