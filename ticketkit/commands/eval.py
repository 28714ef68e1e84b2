"""`ticketkit eval`: measure a ticket (or a dense checkpoint) on its dataset's test set, from
the file alone, or on another dataset of the same image shape and classes (`--dataset`)."""

from __future__ import annotations

from ticketkit.commands import _common as c


def eval_(
    artifact: c.Input = None,
    dataset: c.Dataset = None,
    data: c.Data = None,
    device: c.Device = None,
    json_out: c.Json = False,
) -> None:
    """Accuracy and loss of a ticket (with its per-layer table) or of a dense checkpoint."""
    from rich.table import Table

    from ticketkit.artifacts.ticket import read_artifact
    from ticketkit.training.data import load_for
    from ticketkit.training.loop import evaluate, resolve_device

    path = c.read_input(artifact, "ticket or checkpoint")
    t = read_artifact(path)
    dev = resolve_device(device or "auto")
    ds = load_for(t.input, dataset or t.meta["dataset"], data)
    metrics = evaluate(t.build(dev), ds, dev)
    # what was recorded at creation compares only on the dataset it was measured on
    recorded = t.meta.get("metrics", {}) if ds.name == t.meta["dataset"] else {}
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
    }
    c.emit(record, json_out)
