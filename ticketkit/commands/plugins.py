"""`ticketkit plugins`: every registered method, arch, dataset, optimizer and initializer, and
where it came from. Imports no torch."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ticketkit.commands import _common as c

app = typer.Typer(
    help="List registered plugins, or show one plugin's options.", no_args_is_help=False
)


@app.callback(invoke_without_command=True)
def plugins(
    ctx: typer.Context,
    json_out: c.Json = False,
) -> None:
    """List every registered plugin: kind, name, summary and distribution."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from ticketkit.registry import registry

    entries = registry().entries()
    if json_out:
        rows = [
            {
                "kind": e.kind[:-1],
                "name": e.spec.name,
                "summary": e.spec.summary,
                "distribution": e.distribution,
                "version": e.version,
                "plugin": e.plugin,
            }
            for e in entries
        ]
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    rows = [
        (e.kind[:-1], e.spec.name, e.spec.summary, f"{e.distribution} {e.version}") for e in entries
    ]
    if not sys.stdout.isatty():  # piped: one tab-separated line per plugin, for grep and cut
        sys.stdout.writelines("\t".join(row) + "\n" for row in rows)
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("kind", "name", "summary", "from"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    from rich.console import Console

    Console().print(table)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="a registered name, e.g. biprop")],
    json_out: c.Json = False,
) -> None:
    """Show one plugin: what it is, where it came from, its options with types and defaults."""
    from rich.table import Table

    from ticketkit.errors import unknown
    from ticketkit.registry import registry
    from ticketkit.specs import describe_options

    found = registry().find(name)
    if not found:
        raise unknown("plugin", name, [e.spec.name for e in registry().entries()])
    records = [
        {
            "kind": e.kind[:-1],
            "name": e.spec.name,
            "summary": e.spec.summary,
            "distribution": e.distribution,
            "version": e.version,
            "phase": getattr(e.spec, "phase", None),
            "defaults": dict(getattr(e.spec, "defaults", {})),
            "options": describe_options(e.spec.options),
        }
        for e in found
    ]
    if json_out:
        sys.stdout.write(json.dumps(records, indent=1, default=str) + "\n")
        return
    from rich.console import Console

    out = Console()
    for r in records:
        out.print(
            f"[bold]{r['name']}[/bold] ({r['kind']}, from {r['distribution']} {r['version']})"
        )
        out.print(r["summary"])
        if r["defaults"]:
            settings = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in r["defaults"].items())
            out.print(f"trains with {settings} unless told otherwise")
        if not r["options"]:
            out.print("no options")
            continue
        table = Table(show_edge=False, pad_edge=False)
        for col in ("option", "type", "default", "help"):
            table.add_column(col, overflow="fold")
        for o in r["options"]:
            helptext = o["help"] + (f" (one of: {', '.join(o['choices'])})" if o["choices"] else "")
            table.add_row(o["name"], o["type"], str(o["default"]), helptext)
        out.print(table)
