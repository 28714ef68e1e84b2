"""Sparse Evolutionary Training (SET; Mocanu et al., Nature Communications 2018, "Scalable
training of artificial neural networks with adaptive sparse connectivity inspired by network
science"): at every update, in every masked layer, drop the fraction zeta of the kept weights
closest to zero and regrow as many at random among the pruned positions. Per-layer counts never
change.

Where this differs from the reference code (the DSR code's SET mode, research notes A.5, and
the original SET):
- the number dropped is floor(zeta * kept) (the DSR code drops int(zeta * kept) + 1, RigL
  floor); ties in |W| go to the lower index;
- regrown weights start at 0 with their optimizer state cleared (the DSR code leaves stale
  momentum); `-o regrow=init` draws them from `--init` instead, as original SET draws them at
  random and the DSR code's `--big-new-weights`;
- the update period is `-o every` steps, constant by default (the original rewires once per
  epoch: `-o every=1ep`; the DSR paper's SET runs used DSR's growing period:
  `-o period-schedule=doubling`), and the initial mask is uniformly random (`--density erk` for
  SET's Erdos-Renyi-like start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.errors import UsageError
from ticketkit.plugins.methods.rewire import (
    RewireMethod,
    RewireOptions,
    set_mask_zeroing,
    smallest_kept,
)

if TYPE_CHECKING:
    import torch

    from ticketkit.masks import Layer
    from ticketkit.plugin import Setup


@dataclass(frozen=True)
class SetOptions(RewireOptions):
    zeta: float = option(0.3, "fraction of each layer's kept weights dropped and regrown")


class Set(RewireMethod):
    """Per layer: drop the smallest |W|, regrow as many at random."""

    def __init__(self, options: Any, setup: Setup) -> None:
        super().__init__(options, setup)
        if not 0 <= options.zeta <= 1:
            raise UsageError(f"-o zeta must be in [0, 1]; got {options.zeta}")

    def update(self, layers: list[Layer], optimizers: list[torch.optim.Optimizer]) -> None:
        for layer in layers:
            kept = int(layer.mask.sum())
            n = int(self.options.zeta * kept)
            if n == 0:
                continue
            dropped = smallest_kept(layer, n)
            keep = (layer.mask != 0) & ~dropped
            set_mask_zeroing(layer, keep, optimizers)  # drop first: grown weights start at 0
            grown = self.grow_random(layer, n, dropped)
            set_mask_zeroing(layer, keep | grown, optimizers)
            self.fill_grown(layer, grown)


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="set",
            summary="SET (Mocanu et al. 2018): per layer drop the smallest |W|, regrow at random",
            factory=Set,
            options=SetOptions,
            phase="rewire",
        )
    )
