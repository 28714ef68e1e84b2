"""`ticketkit runs [DIR]`: the finished runs of an --out directory, told apart and compared.

The table (stderr, like every table ticketkit prints) shows only the columns that differ
between the listed runs, then accuracy and time, so variants of one recipe read as a diff; what
they share is one line under it. `--json` prints every column of every listed run on stdout.
Imports no torch; matplotlib only for `--plot`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ticketkit.commands import _common as c

SHOWN_ALWAYS = ("test_acc1", "test_acc5", "wall_s", "run")
HEADINGS = {"test_acc1": "top-1", "test_acc5": "top-5", "wall_s": "time"}


def runs(
    directory: Annotated[
        Path,
        typer.Argument(help="the --out directory whose results.csv to read (or the CSV file)"),
    ] = Path("runs"),
    method: Annotated[str | None, typer.Option("--method", help="only runs of this method")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="only runs of this arch")] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where", help="only runs whose column KEY is VALUE, e.g. --where seed=0 (repeatable)"
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="write top-1 accuracy vs % weights remaining to FILE.png (needs matplotlib)",
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="print the listed runs as a JSON list of records")
    ] = False,
) -> None:
    """List finished runs (table on stderr, --json records on stdout), filter and plot them."""
    from ticketkit.runs import plot as plots
    from ticketkit.runs import results

    if plot is not None:
        plots.require_matplotlib()
    path = results.results_file(directory)
    records, columns = results.read_results(path)
    asked = [f"{key}={value}" for key, value in (("method", method), ("arch", arch)) if value]
    listed = results.select(records, results.parse_where([*asked, *(where or [])], columns))
    if plot is not None:
        figure = plots.plot(listed, plot)
        labels = figure.axes[0].get_legend_handles_labels()[1]
        c.console.print(
            f"plot: {plot} ({len(labels)} series: {', '.join(labels)})",
            markup=False,
            soft_wrap=True,
        )
    if json_out:
        sys.stdout.write(json.dumps(listed, indent=1, default=str) + "\n")
        sys.stdout.flush()
        return
    show(listed, columns, f"{path}: {len(listed)} of {len(records)} runs")


def show(records: list[dict[str, Any]], columns: list[str], title: str) -> None:
    """The table of `records` on stderr: the columns that differ (option mappings reduced to
    the keys that differ), then accuracy, time and run directory; what every run shares (where
    set) is one line under it."""
    from rich.table import Table

    from ticketkit.runs.results import OUTCOMES, TYPES, varying

    if not records:
        c.console.print(f"{title}: none match", markup=False)
        return
    shown = table_columns(records, columns)
    differ = shown[: -len(SHOWN_ALWAYS)]
    keys = {name: _differing_keys(records, name, columns) for name in differ}
    table = Table(
        title=title, title_justify="left", show_edge=False, pad_edge=False, padding=(0, 1, 0, 0)
    )
    for name in shown:
        numeric = TYPES.get(name) in ("int", "float")
        table.add_column(
            HEADINGS.get(name, name), justify="right" if numeric else "left", overflow="fold"
        )
    for r in records:
        table.add_row(*(_cell(name, r.get(name), keys.get(name)) for name in shown))
    c.console.print(table)
    varied = set(varying(records, columns))
    shared = [
        f"{name}={_cell(name, records[0][name], keys=[])}"
        for name in columns
        if name not in OUTCOMES and name not in varied and records[0].get(name) is not None
    ]
    if shared:
        c.console.print(f"every run (where set): {', '.join(shared)}", markup=False)


def table_columns(records: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """What the table shows: the columns describing how runs were made that differ between
    `records` (kept only where it is not just k), then accuracy, time and run."""
    from ticketkit.runs.results import OUTCOMES, varying

    differ = varying(records, [name for name in columns if name not in OUTCOMES])
    if "kept" in differ and all(_kept_is_k(r) for r in records):
        differ.remove("kept")  # the k column says it
    return [*differ, *SHOWN_ALWAYS]


def _kept_is_k(record: dict[str, Any]) -> bool:
    kept, k = record.get("kept"), record.get("k")
    return kept is None or (isinstance(k, float) and abs(kept - k) < 5e-4)


def _differing_keys(records: list[dict[str, Any]], name: str, columns: list[str]) -> list[str]:
    """For an option mapping: its keys whose values differ between runs (binary_act has its
    own column); empty for other columns."""
    maps = [r[name] for r in records if isinstance(r.get(name), dict)]
    if not maps:
        return []
    every = sorted({key for m in maps for key in m} - set(columns))
    missing = object()
    return [key for key in every if len({repr(m.get(key, missing)) for m in maps}) > 1]


def _cell(name: str, value: Any, keys: list[str] | None = None) -> str:
    """A value as the table shows it: compact; an option mapping as the key=value pairs of
    `keys` (its keys that differ between runs), or as JSON if none are named; a run, and a
    parent, by its run directory's hash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if name in ("test_acc1", "test_acc5"):
            return f"{value:.2f}"
        return f"{value:.1f}s" if name == "wall_s" else f"{value:g}"
    if isinstance(value, dict) and keys is not None and value:
        if not keys:  # the whole mapping, one line
            return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
        pairs = [f"{key}={_cell(key, value[key])}" for key in keys if key in value]
        return "\n".join(pairs) or "-"  # one per line: the table stays narrow
    if isinstance(value, dict):
        return "-"
    if name == "parent":  # the run that made it, as the run column names runs
        return _short(Path(str(value)).parent.name) if "/" in str(value) else str(value)
    return _short(str(value)) if name == "run" else str(value)


def _short(run: str) -> str:
    """A run directory's hash, when its name is the derived `<command>-...-<hash8>` (the other
    parts are columns of their own; `ls runs/*-<hash8>` finds it); a --name as it is."""
    tail = run.rpartition("-")[2]
    return tail if len(tail) == 8 and all(ch in "0123456789abcdef" for ch in tail) else run
