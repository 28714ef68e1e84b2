"""Export a ticket to a file that runs without ticketkit: `dense`, `onnx`, `pt2`, `structured`.

Every format starts from the same network: the ticket rebuilt by `Ticket.build`, whose weights
are the ticket's *effective* weights (zeros where pruned, `alpha * sign` for binary layers)
stored as plain parameters under the arch's own names, with no parametrization left. The file
is written to a temporary name, read back with the consumer's own loader (safetensors +
`load_state_dict`, onnxruntime, `torch.export.load`) and compared with the ticket's logits on
a fixed batch before it is renamed into place: the recorded difference is the exported file's,
not the in-memory model's, and a failed export leaves nothing behind. `structured` (and
`onnx --structured`) first removes the channels that cannot change a logit (structured.py).
Formats are plugins (`ticketkit_register_exporters`, `ExporterSpec`); the built-in writers below
are registered by `ticketkit.plugins.exporters`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketkit.artifacts.ticket import Ticket
from ticketkit.errors import UsageError, did_you_mean
from ticketkit.runs.directory import atomic_write
from ticketkit.specs import ExporterSpec

TOLERANCE = 1e-4  # max |logit difference| a structured export may have: beyond it is a bug
BATCH = 16  # the fixed batch of the logit check: seeded noise, so no dataset is needed


@dataclass
class Exported:
    """What `ticketkit export --json` reports."""

    format: str
    path: str
    bytes: int
    params_total: int
    params_nonzero: int
    max_abs_diff: float
    # structured exports only: the dense network's parameter count, what went, and why not more
    params_before: int | None = None
    channels_removed: dict[str, int] | None = None
    note: str | None = None

    def record(self) -> dict[str, Any]:
        return {"kind": "export", **{k: v for k, v in asdict(self).items() if v is not None}}


def fixed_batch(ticket: Ticket, n: int = BATCH) -> torch.Tensor:
    """The same inputs for every export of every ticket of this input shape."""
    spec = ticket.input
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, spec.channels, spec.height, spec.width, generator=gen)


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) over the model's parameters (buffers such as BN statistics excluded)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int(torch.count_nonzero(p)) for p in params)


def check_target(output: str | Path) -> Path:
    """The output path, refused early when it cannot be written: better than a failure after
    the export has run (and never a directory created on the user's behalf)."""
    path = Path(output)
    if path.is_dir():
        raise UsageError(f"-o {output} is a directory; name the file to write")
    if not path.parent.is_dir():
        raise UsageError(f"-o {output}: directory {path.parent} does not exist")
    return path


def check_format(fmt: str, structured: bool = False) -> ExporterSpec:
    """Options are checked before the ticket is read: extras missing, combinations refused."""
    from ticketkit.registry import get_exporter, names

    formats = names("exporters")
    if fmt not in formats:
        raise UsageError(
            f"unknown export format '{fmt}'{did_you_mean(fmt, formats)} "
            f"(formats: {', '.join(formats)})"
        )
    spec = get_exporter(fmt)
    if structured and fmt != "onnx":
        raise UsageError(
            "--format structured is already structured; drop --structured"
            if spec.structured
            else f"--structured goes with --format onnx; use --format structured, not {fmt}"
        )
    _need(spec)
    if structured:
        _need(get_exporter("structured"))
    return spec


def _need(spec: ExporterSpec) -> None:
    """A format's missing modules, said with its install line (`ExporterSpec.needs`)."""
    import importlib.util

    missing = [m for m in spec.needs if not importlib.util.find_spec(m)]
    if missing:
        raise UsageError(f"--format {spec.name} needs {', '.join(missing)}: {spec.hint}")


def export(ticket: Ticket, fmt: str, output: str | Path, structured: bool = False) -> Exported:
    """Write `ticket` as `fmt` to `output` atomically and measure the written file's logits."""
    spec = check_format(fmt, structured)
    path = check_target(output)
    writer = spec.load()
    model = ticket.build("cpu")
    x = fixed_batch(ticket)
    with torch.no_grad():
        expected = model(x)
    removal = None
    if spec.structured or structured:
        from ticketkit.artifacts.structured import shrink

        removal = shrink(model, x)
    diff: list[float] = []

    def write(tmp: Path) -> None:
        got = writer(model, x, ticket, tmp)
        diff.append(float((got - expected).abs().max()))
        if removal is not None and diff[0] > TOLERANCE:  # removal was meant to be exact
            raise RuntimeError(f"the structured network's logits differ by {diff[0]:.2e}")

    atomic_write(path, write)
    total, nonzero = param_counts(model)
    result = Exported(fmt, str(path), path.stat().st_size, total, nonzero, diff[0])
    if removal is not None:
        result.params_before = removal.params_before
        result.channels_removed = removal.channels
        result.note = removal.note
    return result


# ---- formats: each writes `tmp` and returns the logits of what it wrote, read back -----------


def _dense(model: nn.Module, x: torch.Tensor, ticket: Ticket, tmp: Path) -> torch.Tensor:
    """A plain safetensors state_dict, loadable into the arch built the usual way."""
    from safetensors.torch import load_file, save_file

    from ticketkit.models import build_model

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": "pt", "arch": ticket.meta["arch"]})
    fresh = build_model(ticket.meta["arch"], ticket.input, **ticket.meta["arch_kwargs"])
    fresh.load_state_dict(load_file(str(tmp)))
    with torch.no_grad():
        return fresh.eval()(x)


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim.AUTO},)


def _pt2(model: nn.Module, x: torch.Tensor, ticket: Ticket, tmp: Path) -> torch.Tensor:
    """A `torch.export` program with a dynamic batch dimension."""
    import io

    program = torch.export.export(model, (x,), dynamic_shapes=_dynamic_batch())
    buffer = io.BytesIO()  # torch.export warns about file names not ending in .pt2 (our tmp)
    torch.export.save(program, buffer)
    tmp.write_bytes(buffer.getvalue())
    with torch.no_grad():
        return torch.export.load(io.BytesIO(tmp.read_bytes())).module()(x)


def _onnx(model: nn.Module, x: torch.Tensor, ticket: Ticket, tmp: Path) -> torch.Tensor:
    """One self-contained ONNX file (weights inside), checked in onnxruntime."""
    import warnings

    import onnxruntime as ort

    with warnings.catch_warnings():  # the exporter's chatter is not the user's business
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            dynamic_shapes=_dynamic_batch(),
            external_data=False,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(tmp), external_data=False)
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (out,) = session.run(None, {name: x.numpy()})[:1]
    return torch.from_numpy(out)
