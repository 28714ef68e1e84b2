"""`ticketkit eval`: measure a ticket on its dataset's test set, from the file alone."""

from __future__ import annotations

from typing import Annotated

import typer

from ticketkit.commands import _common as c


def eval_(
    ticket: Annotated[
        str | None, typer.Argument(help="ticket file, '-' or piped from another command")
    ] = None,
    data: c.Data = None,
    device: c.Device = None,
    json_out: c.Json = False,
) -> None:
    """Print top-1/top-5 accuracy, loss and a per-layer table of a ticket."""
    from rich.table import Table

    from ticketkit.core.data import load_dataset
    from ticketkit.core.ticket import Ticket
    from ticketkit.core.train import evaluate, resolve_device
    from ticketkit.errors import UsageError

    path = c.read_input(ticket, "ticket")
    t = Ticket.read(path)
    dev = resolve_device(device or "auto")
    ds = load_dataset(t.meta["dataset"], data)
    if ds.input != t.input:
        raise UsageError(
            f"{path} was made for input {t.input}, but dataset '{ds.name}' gives {ds.input}"
        )
    metrics = evaluate(t.build(dev), ds, dev)
    recorded = t.meta.get("metrics", {})
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
        "method": t.meta.get("method"),
        "k": float(t.meta["k"]),
        "dataset": t.meta["dataset"],
        "weights": t.meta.get("weights"),
        "metrics": metrics,
        "recorded": recorded,
        "layers": t.meta["layers"],
    }
    c.emit(record, json_out)
