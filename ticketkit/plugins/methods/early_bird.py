"""Early-Bird detection (You et al., ICLR 2020, "Drawing Early-Bird Tickets"): stop dense
training once the mask the pruning would give has stopped changing.

After every epoch of dense training the method computes the mask its first pruning would give
and hands it to `observe`, which keeps the last `window` of them. The ticket is declared when
the newest is within normalised Hamming distance `eps` of every older one (the code's test is
"any distance > eps: not yet"), so the earliest declaration is at epoch `window`.

Where this differs from the reference code (github.com/RICE-EIC/Early-Bird-Tickets), on
purpose:
- The mask is taken at the *end* of each epoch (the code checks at the start of the next one,
  the epoch-0 mask at initialisation); so the distance curve has one point per trained epoch.
- Training stops at the declaration (the code trains on to the end for analysis).
- Any mask works: IMP's unstructured magnitude mask over the prunable weights as well as
  slimming's channel mask over BatchNorm scales; the distance is normalised by the mask's
  length either way.

The window is method state (a list of flat bool tensors), so a resumed run continues the
detection where it stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ticketkit.errors import UsageError

if TYPE_CHECKING:
    import torch


def check(window: int, eps: float) -> None:
    """Refuse settings that could never declare, or always would, before any work."""
    if window < 2:
        raise UsageError(f"--eb-window must be >= 2 (masks compared); got {window}")
    if not 0 <= eps < 1:
        raise UsageError(f"--eb-eps must be in [0, 1), a normalised Hamming distance; got {eps}")


def hamming(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised Hamming distance of two flat bool masks: the fraction of entries that differ."""
    return float((a != b).float().mean())


def observe(
    history: list[torch.Tensor], mask: torch.Tensor, window: int, eps: float, metrics: dict
) -> bool:
    """Append `mask` (flattened, bool, on the CPU) to `history` in place, keep its last
    `window`, and record the distances in the epoch's `metrics`: `eb_distances` (newest to each
    older mask, oldest first) and `eb_distance`, their maximum. True once the window is full and
    every distance is <= eps: the Early-Bird ticket."""
    newest = mask.detach().flatten().bool().cpu()
    older = history[-(window - 1) :] if window > 1 else []
    distances = [round(hamming(newest, old), 6) for old in older]
    history[:] = [*older, newest]
    if distances:
        metrics["eb_distances"] = distances
        metrics["eb_distance"] = max(distances)
    declared = len(history) == window and max(distances) <= eps
    if declared:
        metrics["early_bird"] = True
    return declared


def curve(records: list[dict[str, Any]], stage: str) -> dict[str, Any]:
    """What `summary.json` says of the detection, from the run's metrics lines of `stage`:
    the epoch the ticket was declared (None if never) and the distance per epoch (None until
    there was an older mask). A line written twice (killed between the log and the
    checkpoint) counts once, the later one."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.get("stage") == stage:
            by_epoch[int(record["epoch"])] = record
    epochs = sorted(by_epoch)
    declared = [e for e in epochs if by_epoch[e].get("early_bird")]
    return {
        "epoch": declared[0] if declared else None,
        "distances": [by_epoch[e].get("eb_distance") for e in epochs],
    }
