"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune: exploring the
efficacy of pruning for model compression"): training starts dense, and every `-o every` steps
each masked layer is pruned by |W| towards its final count, on the cubic schedule

    s_j = s_f (1 - (1 - j/n)^3),   j = 1..n pruning steps, s_i = 0 (dense)

or the exponential one (a constant fraction of the remaining weights per step), so that the
last pruning step (step n * every, at or before the end of epoch `-o stop`) keeps exactly the
budget: `N_l - floor((1-k) N_l)` per layer (or the ERK counts with `--density erk`).

Where this differs from the reference code (the DSR code's "compressed sparse" baseline,
research notes A.8; Zhu & Gupta's TensorFlow `model_pruning`):
- it starts from the random init of `--arch` (start 0) unless given a dense checkpoint
  (`ticketkit rewire CHECKPOINT`, the references' trained start), and the schedule is stated
  in kept counts, K_l + floor((N_l - K_l)(1 - j/n)^3), so the last step is
  exact; the DSR code prunes int(q * n_active) + 1 per step and lands near the target;
- pruned weights are set to 0 and lose their optimizer state (the references mask them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.errors import UsageError
from ticketkit.plugins.methods.rewire import RewireMethod, set_mask_zeroing, smallest_kept

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ticketkit.masks import Layer


@dataclass(frozen=True)
class GmpOptions:
    every: str = option("1ep", "prune every N steps (N or Nit), or Nep epochs")
    stop: int = option(0, "epoch by whose end k is reached (0: 3/4 of --epochs, rounded up)")
    schedule: str = option("cubic", "how the kept count falls to k", ("cubic", "exponential"))


class Gmp(RewireMethod):
    """Dense at first; pruned by |W| per layer at steps every, 2 every, ..., n every."""

    def initial_counts(self, layers: list[Layer]) -> list[int]:
        return [layer.numel for layer in layers]

    def prunings(self) -> int:
        """n: the number of pruning steps, the last at step n * every."""
        ctx = self.ctx
        stop = int(self.options.stop) or math.ceil(0.75 * ctx.epochs)
        end = min(stop, ctx.epochs) * ctx.steps_per_epoch
        n = end // self.period()
        if n < 1:
            raise UsageError(
                f"gmp: -o every={self.options.every} is longer than the pruning span "
                f"({end} steps to the end of epoch {min(stop, ctx.epochs)}); prune more often"
            )
        return n

    def choose_masks(self, model: nn.Module) -> None:
        super().choose_masks(model)
        self.prunings()  # a span too short fails before any work

    def active(self) -> bool:
        step = self.ctx.step
        return step % self.period() == 0 and step // self.period() <= self.prunings()

    def target(self, total: int, final: int, j: int, n: int) -> int:
        """The kept count after pruning step j of n, from `total` (dense) to `final`."""
        if j >= n:
            return final
        if self.options.schedule == "exponential":
            return max(final, round(total * (final / total) ** (j / n)))
        return final + math.floor((total - final) * (1 - j / n) ** 3)

    def update(self, layers: list[Layer], optimizers: list[torch.optim.Optimizer]) -> None:
        j, n = self.ctx.step // self.period(), self.prunings()
        for layer, final in zip(layers, self.budgets(layers), strict=True):
            kept = int(layer.mask.sum())
            drop = kept - self.target(layer.numel, final, j, n)
            if drop > 0:
                keep = (layer.mask != 0) & ~smallest_kept(layer, drop)
                set_mask_zeroing(layer, keep, optimizers)


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="gmp",
            summary="gradual magnitude pruning (Zhu & Gupta 2017) from dense to k, cubic",
            factory=Gmp,
            options=GmpOptions,
            phase="rewire",
        )
    )
