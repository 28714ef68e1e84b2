"""`summary.png` of a `find-ticket` run: top-1 accuracy against % weights remaining (log x axis),
one line for the ticket's levels and, with `--controls`, one for each of the LTH paper's two
controls, so a search can be judged at a glance without a notebook (the figure of Frankle &
Carbin 2019). matplotlib is the optional extra `ticketkit[plot]`: without it the search still
succeeds and says, once on stderr, that no plot was drawn (the hint of `runs --plot`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ticketkit.runs.plot import PLOT_HINT

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SERIES = {"ticket": None, "random mask": "random_mask", "random reinit": "random_reinit"}


def search_series(levels: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """(% weights remaining, top-1) per level for the ticket and each control that was trained,
    in level order; a series with no point is left out (no controls: the ticket alone)."""
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in SERIES}
    for level in levels:
        for name, key in SERIES.items():
            entry = level if key is None else level.get("controls", {}).get(key)
            acc = (entry or {}).get("metrics", {}).get("test_acc1")
            if entry is not None and acc is not None:
                out[name].append((100.0 * float(entry["k"]), float(acc)))
    return {name: points for name, points in out.items() if points}


def plot_search(levels: Iterable[Mapping[str, Any]], path: Path, title: str = "") -> Figure | None:
    """Draw the search into `path` (PNG); the figure, or None when there is nothing to draw
    (no level has an accuracy). Raises ImportError without matplotlib."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from ticketkit.runs.directory import atomic_write

    drawn = search_series(levels)
    if not drawn:
        return None
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for (name, points), marker in zip(drawn.items(), "osD", strict=False):
        ax.plot(*zip(*points, strict=True), marker=marker, markersize=4, label=name)
    ax.set_xscale("log")
    ax.invert_xaxis()  # pruning moves right: 100% of the weights first, as in the LTH paper
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("weights remaining (log scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    return fig


def write_search_plot(
    levels: Iterable[Mapping[str, Any]], path: Path, title: str = ""
) -> tuple[Figure | None, str | None]:
    """`plot_search`, never failing the search for want of matplotlib: (figure, None) when
    drawn, else (None, the line to show on stderr)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None, f"no plot drawn: summary.png needs matplotlib ({PLOT_HINT})"
    fig = plot_search(levels, path, title)
    return fig, None if fig is not None else "no plot drawn: no level has a test accuracy"
