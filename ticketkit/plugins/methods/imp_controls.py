"""The lottery ticket paper's two controls for every pruned level (Frankle & Carbin 2019,
section 2-3): the same per-layer kept counts with a random mask ("random pruning"), and the
ticket's mask with fresh random weights ("random reinitialisation"). Each is trained with the
level's budget (its `--epochs`, a fresh optimizer and schedule).

Each control is a `Stage` of its own, named `<level>-random-mask` and `<level>-random-reinit`,
right after its level: so it resumes like a level, and its ticket stays on disk in
`stages/<name>/ticket.safetensors`. The level's trained state is method state while its
controls train, so the next level prunes the ticket, never a control.

Where this differs from open_lth's branches (`randomly_prune`, `randomly_reinitialize`):
- The random mask keeps each layer's count of the ticket (open_lth's "layerwise" strategy)
  and starts from the ticket's own starting weights (open_lth's `start_at='rewind'`).
- Both controls draw from seeds fixed by the run's seed and the level (open_lth leaves the
  re-initialisation's seed free), so a resumed or repeated run trains the same controls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CONTROLS = ("random-mask", "random-reinit")


def control_stages(level: int) -> list[str]:
    """The stage names of a level's controls, in the order they train."""
    return [f"{level}-{control}" for control in CONTROLS]


def split_stage(name: str) -> tuple[int, str | None]:
    """A stage name as (level, control): "3" -> (3, None), "3-random-mask" -> (3, "random-mask")."""
    level, _, control = name.partition("-")
    return int(level), control or None


def random_masks(masks: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Masks with each layer's kept count of `masks`, at positions drawn uniformly."""
    import torch

    out = []
    for mask in masks:
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        kept = int(mask.sum())
        flat[torch.randperm(mask.numel(), generator=generator)[:kept]] = True
        out.append(flat.view(mask.shape).to(mask.device))
    return out
