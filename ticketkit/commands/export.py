"""`ticketkit export`: a ticket as a file that runs without ticketkit (dense safetensors
state_dict, ONNX, or a `torch.export` program), checked against the ticket's logits."""

from __future__ import annotations

from typing import Annotated

import typer

from ticketkit.commands import _common as c

Format = Annotated[
    str,
    typer.Option(
        "--format",
        "-f",
        help="dense (safetensors state_dict), onnx (needs ticketkit\\[onnx]), "
        "pt2 (torch.export program), structured (pt2 with empty channels removed; "
        "needs ticketkit\\[structured]); plugins may add more (`ticketkit plugins`)",
    ),
]
Structured = Annotated[
    bool,
    typer.Option(
        "--structured", help="with --format onnx: the network with empty channels removed"
    ),
]
Output = Annotated[
    str, typer.Option("--output", "-o", help="the file to write (its directory must exist)")
]


def export(
    output: Output,
    artifact: c.Input = None,
    fmt: Format = "dense",
    structured: Structured = False,
    json_out: c.Json = False,
) -> None:
    """Export a ticket's effective weights to a file that loads without ticketkit."""
    from ticketkit.artifacts.export import check_format, check_target
    from ticketkit.artifacts.export import export as run_export
    from ticketkit.artifacts.ticket import Ticket

    check_format(fmt, structured)  # bad options are said before stdin is read or a ticket loaded
    check_target(output)
    ticket = Ticket.read(c.read_input(artifact, "ticket"))
    result = run_export(ticket, fmt, output, structured)
    smaller = ""
    if result.params_before is not None:
        gone = sum((result.channels_removed or {}).values())
        smaller = f" ({gone:,} channels removed; {result.params_before:,} before)"
    c.console.print(
        f"{result.format}: {result.bytes:,} bytes, {result.params_nonzero:,} of "
        f"{result.params_total:,} parameters non-zero{smaller}, max |logit difference| "
        f"{result.max_abs_diff:.2e} against the ticket",
        markup=False,
        soft_wrap=True,
    )
    if result.note:
        c.console.print(f"note: {result.note}", markup=False, soft_wrap=True)
    c.emit(result.record(), json_out)


Efficiency = Annotated[
    bool,
    typer.Option(
        "--efficiency",
        help="also report params, bytes, FLOPs and measured CPU latency, masked vs dense export",
    ),
]


def show_efficiency(bundle: object, path: str) -> dict:
    """Measure `eval --efficiency` (artifacts/efficiency.py), print its table on stderr and
    return the record's `efficiency` entry."""
    from rich.table import Table

    from ticketkit.artifacts.efficiency import efficiency

    report = efficiency(bundle, path)  # type: ignore[arg-type]
    table = Table(title="efficiency", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("", "dense", "ticket", "ratio"):
        table.add_column(col, justify="right" if col else "left")

    def row(label: str, dense: float, ticket: float, fmt: str = "{:,.0f}") -> None:
        ratio = f"{ticket / dense:.3f}x" if dense else "-"
        table.add_row(label, fmt.format(dense), fmt.format(ticket), ratio)

    params, size, flops, lat = (report[k] for k in ("params", "bytes", "flops", "latency_ms"))
    row("parameters (non-zero)", params["total"], params["nonzero"])
    if "structured" in params:
        row("parameters (structured export)", params["total"], params["structured"])
    row("bytes on disk (fp32 vs file)", size["dense_fp32"], size["file"])
    row("FLOPs / image (kept weights)", flops["dense"], flops["kept"])
    if "masked" in lat:
        row(f"CPU ms / batch {lat['batch']} (masked)", lat["dense_export"], lat["masked"], "{:.3f}")
    else:
        table.add_row(f"CPU ms / batch {lat['batch']}", f"{lat['dense_export']:.3f}", "-", "-")
    if "structured_export" in lat:
        row(
            f"CPU ms / batch {lat['batch']} (structured)",
            lat["dense_export"],
            lat["structured_export"],
            "{:.3f}",
        )
    c.console.print(table)
    c.console.print(
        f"Latency: median of {lat['runs']} forward passes on {lat['threads']} CPU threads; "
        f"dense = the dense export (`ticketkit export --format dense`), ticket = the masked "
        f"model (W * mask per forward). {report['note']}.",
        markup=False,
        soft_wrap=True,
    )
    return report
