"""`summary.png` of `find-ticket`: a PNG with one series for the ticket and one per control,
written by every search; without matplotlib the search still succeeds and says on stderr that
no plot was drawn."""

from __future__ import annotations

import sys

from ticketkit.runs.search_plot import plot_search, search_series

PNG = b"\x89PNG\r\n\x1a\n"
SEARCH = "find-ticket --method imp --arch mlp --dataset digits --levels 1 --epochs 1".split()


def level(n: int, k: float, acc: float, controls: bool) -> dict:
    entry = {"level": n, "k": k, "kept": 0, "path": "-", "metrics": {"test_acc1": acc}}
    if controls and n:
        entry["controls"] = {
            name: {"k": k, "kept": 0, "path": "-", "metrics": {"test_acc1": acc - d}}
            for name, d in (("random_mask", 5.0), ("random_reinit", 3.0))
        }
    return entry


def test_the_ticket_and_both_controls_are_three_series(tmp_path):
    levels = [level(0, 1.0, 95.0, True), level(1, 0.8, 94.0, True), level(2, 0.64, 93.0, True)]
    assert search_series(levels) == {
        "ticket": [(100.0, 95.0), (80.0, 94.0), (64.0, 93.0)],
        "random mask": [(80.0, 89.0), (64.0, 88.0)],
        "random reinit": [(80.0, 91.0), (64.0, 90.0)],
    }
    fig = plot_search(levels, tmp_path / "summary.png")
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == [
        "ticket",
        "random mask",
        "random reinit",
    ]
    assert ax.get_xscale() == "log"
    assert (tmp_path / "summary.png").read_bytes()[:8] == PNG
    alone = plot_search(
        [level(0, 1.0, 95.0, False), level(1, 0.8, 94.0, False)], tmp_path / "a.png"
    )
    assert len(alone.axes[0].get_lines()) == 1


def test_a_search_writes_summary_png_or_says_why_not(cli, tmp_path, monkeypatch):
    r = cli(*SEARCH, "--out", tmp_path / "with")
    assert r.code == 0, r.err
    png = next((tmp_path / "with").glob("find-ticket-*/summary.png"))
    assert png.read_bytes()[:8] == PNG and "no plot drawn" not in r.err

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    r = cli(*SEARCH, "--out", tmp_path / "without")
    assert r.code == 0, r.err
    assert "no plot drawn" in r.err and "pip install 'ticketkit[plot]'" in r.err
    assert not list((tmp_path / "without").glob("find-ticket-*/summary.png"))
    assert list((tmp_path / "without").glob("find-ticket-*/summary.json"))
