"""The plot of `ticketkit runs --plot`: accuracy against weights remaining, one series per method
(and arch), the mean and the spread over seeds. matplotlib is an optional extra
(`ticketkit[plot]`), imported only to draw.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ticketkit.errors import UsageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_HINT = "pip install 'ticketkit[plot]'"


# ---- plotting ----------------------------------------------------------------------------------


@dataclass
class Series:
    """One line of the plot: per kept fraction (%), the mean, min and max top-1 accuracy and
    how many runs (seeds) gave them."""

    label: str
    x: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]
    runs: list[int]


def series(records: Iterable[Mapping[str, Any]]) -> list[Series]:
    """Accuracy against % weights remaining, one series per method (a finetune apart from the
    search it started from), split by arch and dataset where the records hold several; runs at
    the same kept fraction in a series are pooled (the spread over seeds)."""
    points = [r for r in records if r.get("test_acc1") is not None and _remaining(r) is not None]
    archs = {r.get("arch") for r in points}
    datasets = {r.get("dataset") for r in points}
    groups: dict[tuple, dict[float, list[float]]] = {}
    for r in points:
        key = (
            r.get("method") or "?",
            r.get("command") == "finetune",
            r.get("arch"),
            r.get("dataset"),
        )
        x = float(f"{_remaining(r):.6g}")
        groups.setdefault(key, {}).setdefault(x, []).append(float(r["test_acc1"]))
    out = []
    for (method, finetuned, arch, dataset), by_x in sorted(groups.items(), key=_order):
        label = method + (" finetuned" if finetuned else "")
        extra = [
            str(v) for v, many in ((arch, len(archs) > 1), (dataset, len(datasets) > 1)) if many
        ]
        label += f" ({', '.join(extra)})" if extra else ""
        xs = sorted(by_x)
        accs = [by_x[x] for x in xs]
        out.append(
            Series(
                label,
                xs,
                [sum(a) / len(a) for a in accs],
                [min(a) for a in accs],
                [max(a) for a in accs],
                [len(a) for a in accs],
            )
        )
    return out


def _order(item: tuple) -> tuple:
    (method, finetuned, arch, dataset), _ = item
    return (method == "dense", str(method), finetuned, str(arch), str(dataset))


def _remaining(record: Mapping[str, Any]) -> float | None:
    """% of weights remaining: the achieved fraction, else (older rows) the asked k."""
    fraction = record.get("kept") if record.get("kept") is not None else record.get("k")
    try:
        return 100.0 * float(fraction) if fraction is not None and float(fraction) > 0 else None
    except (TypeError, ValueError):
        return None


def require_matplotlib() -> None:
    """Fail before any work when the optional plotting dependency is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"--plot needs matplotlib, which is not installed: {PLOT_HINT}") from None


def plot(records: Iterable[Mapping[str, Any]], path: Path) -> Figure:
    """Draw top-1 accuracy against % weights remaining (log axis) into `path` (its suffix picks
    the format: png, pdf, svg); every series is its mean over runs with min-max error bars and,
    across several kept fractions, a shaded band. Returns the figure, whose legend names the
    series drawn."""
    require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from ticketkit.runs.directory import atomic_write

    drawn = series(records)
    if not drawn:
        raise UsageError("--plot: no listed run has an accuracy to plot")
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for s in drawn:
        bars = ax.errorbar(
            s.x,
            s.mean,
            yerr=[
                [m - lo for m, lo in zip(s.mean, s.low, strict=True)],
                [hi - m for m, hi in zip(s.mean, s.high, strict=True)],
            ],
            marker="o",
            markersize=4,
            capsize=3,
            label=s.label,
        )
        if len(s.x) > 1 and any(hi > lo for lo, hi in zip(s.low, s.high, strict=True)):
            ax.fill_between(s.x, s.low, s.high, alpha=0.15, color=bars.lines[0].get_color())
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1% 2% 5% 10% 20% 50% 100%
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("weights remaining (log scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise UsageError(
            f"--plot {path}: cannot write .{fmt} files; use .png ({', '.join(sorted(supported))})"
        )
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=150))
    except OSError as exc:
        raise UsageError(f"--plot {path}: cannot write it ({exc.strerror})") from None
    return fig
