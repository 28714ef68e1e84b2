"""TensorBoard event files beside metrics.jsonl, when `tensorboard` is installed
(`pip install 'ticketkit[tensorboard]'`); `tensorboard --logdir runs/` then shows every run.

Every numeric field of a metrics record becomes one scalar at step `epoch`, tagged
`<phase>[/<stage>]/<field>` (e.g. `prune/train_loss`, `find-ticket/round-2/test_acc1`,
`prune/mask_changed`; per-layer fields as `prune/density/<layer>`), so
the curves are the metrics file's lines, written by the same call (rank 0 only under torchrun).
Without tensorboard nothing is written and nothing is said: metrics.jsonl holds the same data.
"""

from __future__ import annotations

import atexit
import importlib.util
import math
from functools import cache
from pathlib import Path
from typing import Any

SKIP = {"epoch", "phase", "stage", "stopped", "seconds"}


@cache
def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


_writers: dict[Path, Any] = {}


@atexit.register
def close() -> None:
    """Close the open event file (each writer also holds a thread)."""
    while _writers:
        _writers.popitem()[1].close()


def log(root: Path, record: dict[str, Any]) -> None:
    """Write the record's numbers as scalars of the run's event file (and flush it)."""
    if not available() or "epoch" not in record:
        return
    writer = _writers.get(root)
    if writer is None:
        from torch.utils.tensorboard import SummaryWriter

        close()  # one open event file at a time: a process (the tests) may make many runs
        writer = _writers[root] = SummaryWriter(log_dir=str(root / "tensorboard"))
    prefix = "/".join(str(record[k]) for k in ("phase", "stage") if record.get(k))
    for key, value in _scalars(record):
        writer.add_scalar(f"{prefix}/{key}" if prefix else key, value, int(record["epoch"]))
    writer.flush()


def _scalars(record: dict[str, Any]) -> list[tuple[str, float]]:
    """The record's finite numbers as (tag, value); a dict of numbers (per-layer density)
    becomes one tag per entry, `density/<layer>`."""
    found = []
    for key, value in record.items():
        if key in SKIP:
            continue
        entries = value.items() if isinstance(value, dict) else [("", value)]
        for sub, number in entries:
            if isinstance(number, bool) or not isinstance(number, int | float):
                continue
            if math.isfinite(number):
                found.append((f"{key}/{sub}" if sub else key, number))
    return found
