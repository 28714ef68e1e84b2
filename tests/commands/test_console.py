"""The CLI's progress reporter: images/s on the bar and in the plain lines."""

import io

from rich.console import Console

from ticketkit.commands import _console


def test_progress_shows_images_per_second(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(_console.time, "monotonic", lambda: now[0])
    screen = io.StringIO()
    monkeypatch.setattr(_console, "console", Console(file=screen, force_terminal=False))
    progress = _console.Progress()
    progress.start("pretrain epoch 1/1", 4)
    assert progress.rate() == ""  # nothing reported yet
    now[0] = 2.0
    progress.advance(images=500, loss=2.0)  # no plain line before 15 s
    assert progress.rate() == "250 images/s" and screen.getvalue() == ""
    now[0] = 20.0
    progress.advance(images=500)
    assert "pretrain epoch 1/1: 2/4 loss 2.0000, 50 images/s" in screen.getvalue()


def test_progress_bar_draws_the_rate(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(_console, "console", Console(file=screen, force_terminal=True, width=120))
    progress = _console.Progress()
    progress.start("prune epoch 1/1", 10)
    progress.advance(images=128, loss=1.0)
    progress._bar.refresh()
    progress.stop()
    assert "images/s" in screen.getvalue()
