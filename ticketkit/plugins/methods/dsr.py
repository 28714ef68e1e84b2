"""Dynamic Sparse Reparameterization (DSR; Mostafa & Wang, ICML 2019, "Parameter Efficient
Training of Deep Convolutional Neural Networks by Dynamic Sparse Reparameterization"): every
`-o every` steps, until epoch `-o stop`,

1. prune every kept weight with |W| < H, one global threshold over all masked layers (a layer
   that would lose all its weights keeps its largest);
2. regrow the K pruned weights across layers in proportion to each layer's survivors R_l, at
   random pruned positions, starting at 0 (`-o regrow=init`: a draw of `--init`, the code's
   `--big-new-weights`), so the network's total stays the budget while per-layer densities
   move towards the layers whose weights survive;
3. adapt H: halve it if K > (1 + 0.1) N_p, double it if K < (1 - 0.1) N_p (`-o n-prune` = N_p,
   the number of weights to reallocate per update).

The period grows as in the paper's runs (`-o period-schedule=doubling`, the default): `-o every`
(100) doubled at 1/4, 1/2 and 3/4 of the epochs, the code's 100 -> 200 -> 400 -> 800 at epochs
0/25/50/75 of its 100-epoch MNIST and ResNet-50 runs; WRN-28-2's 0/25/80/140 of 200 is
`-o period-schedule=0:100,25:200,80:400,140:800`. `--dense-shortcuts --dense-first
--dense-last` leaves the layers the paper kept dense on a WRN.

Where this differs from the reference code (IntelAI/dynamic-reparameterization, research notes
A.2-A.4, A.11):
- the per-layer growth counts are the largest-remainder rounding of K R_l / sum R (capped by
  each layer's room, the overflow handed on in the same way); the code rounds each share and
  gives the remainder to one random layer;
- dropped weights lose their optimizer state and regrown ones start with none (the code keeps
  stale momentum); a weight is not regrown in the update that pruned it unless no layer has
  other room, so the total is always the budget (the code then grows fewer and warns);
- `doubling` places the doublings at fractions of `--epochs`, not the YAML's fixed epochs;
  masks are element-wise (the code's sub-kernel granularity 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.errors import UsageError
from ticketkit.plugins.methods.rewire import (
    RewireMethod,
    RewireOptions,
    _largest_remainder,
    set_mask_zeroing,
)

if TYPE_CHECKING:
    import torch

    from ticketkit.masks import Layer
    from ticketkit.plugin import Setup


@dataclass(frozen=True)
class DsrOptions(RewireOptions):
    n_prune: int = option(600, "N_p: weights to reallocate per update (H adapts to it)")
    threshold: float = option(1e-3, "initial global magnitude threshold H")
    period_schedule: str = option(
        "doubling",
        "how the period grows: doubling (x2 at 1/4, 1/2, 3/4 of the epochs, the paper's), "
        "constant, or EPOCH:N,... (the period from each epoch on)",
    )


class Dsr(RewireMethod):
    """Global adaptive threshold; regrowth in proportion to the survivors of each layer."""

    default_scope = "global"  # one budget for the network: per-layer counts move

    def __init__(self, options: Any, setup: Setup) -> None:
        super().__init__(options, setup)
        if options.n_prune < 1 or not options.threshold > 0:
            raise UsageError("-o n-prune must be >= 1 and -o threshold > 0")
        self.threshold = float(options.threshold)  # H, method state (saved with checkpoints)

    def update(self, layers: list[Layer], optimizers: list[torch.optim.Optimizer]) -> None:
        import torch

        h = self.threshold
        dropped, survivors = [], []
        for layer in layers:
            kept = layer.mask != 0
            small = kept & (layer.weight.detach().abs() < h)
            if int(kept.sum()) and bool(torch.equal(small, kept)):  # keep the largest
                largest = layer.weight.detach().abs().masked_fill(~kept, -1).flatten().argmax()
                small.view(-1)[largest] = False
            set_mask_zeroing(layer, kept & ~small, optimizers)
            dropped.append(small)
            survivors.append(int((kept & ~small).sum()))
        pruned = sum(int(d.sum()) for d in dropped)
        if pruned:
            self._regrow(layers, optimizers, pruned, survivors, dropped)
        n_p = self.options.n_prune
        if pruned > 1.1 * n_p:
            self.threshold = h / 2
        elif pruned < 0.9 * n_p:
            self.threshold = h * 2

    def _regrow(
        self,
        layers: list[Layer],
        optimizers: list[torch.optim.Optimizer],
        total: int,
        survivors: list[int],
        dropped: list[torch.Tensor],
    ) -> None:
        """`total` weights over the layers, shares proportional to `survivors`: first where
        nothing was just pruned, then (only if the budget needs it) anywhere free."""
        import torch

        left = total
        for barred in (True, False):
            room = [
                layer.numel - int(layer.mask.sum()) - (int(d.sum()) if barred else 0)
                for layer, d in zip(layers, dropped, strict=True)
            ]
            weights = [s if r > 0 else 0 for s, r in zip(survivors, room, strict=True)]
            if sum(weights) == 0:
                weights = [1 if r > 0 else 0 for r in room]
            if sum(weights) == 0:
                continue
            wanted = [left * w / sum(weights) for w in weights]
            counts = _largest_remainder(wanted, room, min(left, sum(room)))
            for layer, d, n in zip(layers, dropped, counts, strict=True):
                if n:
                    grown = self.grow_random(layer, n, d if barred else torch.zeros_like(d))
                    set_mask_zeroing(layer, (layer.mask != 0) | grown, optimizers)
                    self.fill_grown(layer, grown)
            left -= sum(counts)
            if left == 0:
                return


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="dsr",
            summary="DSR (Mostafa & Wang 2019): global adaptive threshold, regrowth by survivors",
            factory=Dsr,
            options=DsrOptions,
            phase="rewire",
        )
    )
