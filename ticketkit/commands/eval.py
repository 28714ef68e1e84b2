"""`ticketkit eval`: measure a ticket (or a dense checkpoint) on its dataset's test set, from
the file alone, or on another dataset of the same image shape and classes (`--dataset`).
A ticket's per-layer densities (kept fraction) are in its table on stderr and, as `density`,
in the JSON record: for `rewire` tickets (DSR, ERK) they differ from layer to layer."""

from __future__ import annotations

from ticketkit.commands import _common as c
from ticketkit.commands.export import Efficiency, show_efficiency


@c.show_defaults(device="auto", workers=0)
def eval_(
    artifact: c.Input = None,
    dataset: c.Dataset = None,
    data: c.Data = None,
    workers: c.Workers = None,
    device: c.Device = None,
    json_out: c.Json = False,
    efficiency: Efficiency = False,
) -> None:
    """Accuracy and loss of a ticket (with its per-layer table) or of a dense checkpoint."""
    from rich.table import Table

    from ticketkit.artifacts.ticket import read_artifact
    from ticketkit.training.data import load_for
    from ticketkit.training.loop import evaluate, resolve_device

    path = c.read_input(artifact, "ticket or checkpoint")
    t = read_artifact(path)
    dev = resolve_device(device or "auto")
    ds = load_for(t.input, dataset or t.meta["dataset"], data, workers=workers or 0)
    metrics = evaluate(t.build(dev), ds, dev)
    # what was recorded at creation compares only on the dataset it was measured on
    recorded = t.meta.get("metrics", {}) if ds.name == t.meta["dataset"] else {}
    differs = [
        (label, metrics[key], recorded[key])
        for key, label in (("test_acc1", "top-1"), ("test_acc5", "top-5"))
        if key in recorded and recorded[key] != metrics[key]
    ]
    if differs:  # recorded on the file's own network and data: only an edit or a change differs
        measured = ", ".join(f"{label} {value:.2f}%" for label, value, _ in differs)
        records = ", ".join(f"{label} {value:.2f}%" for label, _, value in differs)
        c.console.print(
            f"Warning: measured {measured} where {path} records {records}: its metadata was "
            "edited, or the dataset files or the device differ from those of its run",
            markup=False,
            soft_wrap=True,
        )
    if "layers" in t.meta:
        c.console.print(c.layer_table(t.meta["layers"], title=f"{path}"))
    summary = Table(show_header=True, show_edge=False, pad_edge=False)
    for col in ("", "top-1 %", "top-5 %", "loss"):
        summary.add_column(col, justify="right")
    summary.add_row(
        "measured",
        f"{metrics['test_acc1']:.2f}",
        f"{metrics['test_acc5']:.2f}",
        f"{metrics['test_loss']:.4f}",
    )
    if recorded:
        summary.add_row(
            "recorded",
            f"{recorded['test_acc1']:.2f}",
            f"{recorded['test_acc5']:.2f}",
            f"{recorded['test_loss']:.4f}",
        )
    c.console.print(summary)
    record = {
        "kind": "eval",
        "path": str(path),
        "parent": t.meta.get("parent") or None,
        "method": t.meta.get("method", "dense"),
        "k": float(t.meta.get("k", 1.0)),
        "dataset": ds.name,
        "weights": t.meta.get("weights", "dense"),
        "metrics": metrics,
        "recorded": recorded,
        "layers": t.meta.get("layers", {}),
        "density": layer_densities(t.meta.get("layers", {})),
    }
    if efficiency:
        record["efficiency"] = show_efficiency(t, str(path))
    c.emit(record, json_out)


def layer_densities(layers: dict[str, dict]) -> dict[str, float]:
    """Kept fraction per masked layer (as the table's `kept` column, unrounded but to 6
    places, as `rewire`'s density history in metrics.jsonl)."""
    densities = {}
    for path, info in layers.items():
        n = 1
        for d in info["shape"]:
            n *= d
        densities[path] = round(info["kept"] / n, 6) if n else 0.0
    return densities
