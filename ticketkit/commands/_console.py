"""The stderr console and the CLI's progress reporter (stdout is kept for results)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

console = Console(stderr=True, highlight=False)


class Progress:
    """The CLI's Reporter: a rich bar on a terminal, periodic plain lines otherwise. The
    training loop reports each step's `images`, shown as images/s since the epoch started
    (what tells a streamed dataset's `--workers` keep up with the model)."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._label = ""
        self._done = self._total = 0
        self._loss = float("nan")
        self._last = self._began = time.monotonic()
        self._images = 0

    def start(self, description: str, total: int) -> None:
        self._label, self._done, self._total = description, 0, total
        self._last = self._began = time.monotonic()
        self._images = 0
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[loss]}"),  # empty until the first step's loss
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, loss="", rate="")

    def rate(self) -> str:
        """Images per second since `start` ("" before any were reported)."""
        seconds = time.monotonic() - self._began
        return f"{self._images / seconds:,.0f} images/s" if self._images and seconds else ""

    def advance(self, **fields: Any) -> None:
        self._done += 1
        self._loss = fields.get("loss", self._loss)
        self._images += fields.get("images", 0)
        if self._bar is not None:
            loss = {"loss": f"loss {fields['loss']:.4f}"} if "loss" in fields else {}
            self._bar.update(self._task, advance=1, rate=self.rate(), **loss)
        elif time.monotonic() - self._last > 15:
            self._last = time.monotonic()
            loss = f" loss {self._loss:.4f}" if self._loss == self._loss else ""  # not NaN
            rate = f", {self.rate()}" if self._images else ""
            console.print(f"{self._label}: {self._done}/{self._total}{loss}{rate}")

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def note(self, message: str) -> None:
        console.print(message, markup=False)


# ---- shared options (defined once) -------------------------------------------------------------
