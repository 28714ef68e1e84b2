"""RigL (Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All Tickets Winners",
ICML 2020), as a `ticketkit rewire` method plugin.

Every `-o every` steps until the end of epoch `-o stop`, in every masked layer separately:

1. drop the n = floor(f(t) * kept) kept weights of smallest |W|;
2. grow the n positions, among those not kept after the drop, where |dL/dW_eff| of the
   current batch (the dense gradient, pruned positions included) is largest;
3. f(t) = alpha / 2 * (1 + cos(pi * min(t, T) / T)), the cosine decay from `-o alpha` (0.3)
   to 0 at T, the last step of epoch `-o stop` (t counts optimizer steps).

Per-layer counts never change, so the budget is exact at every step: `--density uniform`
keeps `N_l - floor((1-k) N_l)` per layer, `--density erk` the Erdos-Renyi-Kernel split of
`N - floor((1-k) N)` (both from ticketkit's shared rewire base class). A grown weight starts at
0 with no momentum (RigL's defaults `grow_init=zeros`, `rigl_acc_scale=0`; `-o regrow=init`
draws it from `--init` instead, as RigL's `grow_init=initial_dist`); a weight dropped
and grown back in the same update is left as it was, value and momentum, as in RigL (its mask
did not change).

Where this differs from the reference code (google-research/rigl, `SparseRigLOptimizerBase`,
research notes B.1):
- RigL skips the optimizer step on mask-update steps; here the step is taken first and the
  mask updated after it with that step's dense gradient (ticketkit updates masks in
  `after_step`), as RigL's own SET and static variants do;
- the first update is at step `every`, not at step 0 (there is no gradient before a step);
- ties in |W| and |grad| go to the lower index (RigL breaks them with N(0, 1e-5) noise);
- `-o stop=0` means 3/4 of `--epochs` (the paper's T_end), rounded up to an epoch.

Registration stays torch-free: torch is imported inside the methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.errors import UsageError
from ticketkit.plugins.methods.rewire import RewireMethod, set_mask_zeroing, smallest_kept

if TYPE_CHECKING:
    import torch

    from ticketkit import Layer, Setup


@dataclass(frozen=True)
class RiglOptions:
    every: str = option("100", "update the masks every N steps (N or Nit), or Nep epochs")
    stop: int = option(0, "last epoch in which masks change (0: 3/4 of --epochs, rounded up)")
    alpha: float = option(0.3, "initial drop fraction, decayed to 0 by a cosine at -o stop")
    regrow: str = option(
        "zero", "value of a grown weight: zero, or init (a draw of --init)", ("zero", "init")
    )


class Rigl(RewireMethod):
    """Per layer: drop the smallest |W|, grow where the dense gradient is largest."""

    dense_grad = True  # the engine keeps dL/dW_eff at pruned positions in `layer.dense_grad`

    def __init__(self, options: Any, setup: Setup) -> None:
        super().__init__(options, setup)
        if not 0 <= options.alpha <= 1:
            raise UsageError(f"-o alpha must be in [0, 1]; got {options.alpha}")

    def end_step(self) -> int:
        """T: the last step in which masks may change, the end of epoch `stop` (0: 3/4 of
        the epochs, the paper's T_end)."""
        ctx = self.ctx
        stop = int(self.options.stop) or math.ceil(0.75 * ctx.epochs)
        return min(stop, ctx.epochs) * ctx.steps_per_epoch

    def drop_fraction(self, step: int) -> float:
        """f(t) = alpha / 2 * (1 + cos(pi * min(t, T) / T)): alpha at t = 0, 0 from T on."""
        end = self.end_step()
        if end <= 0:
            return 0.0
        return self.options.alpha / 2 * (1 + math.cos(math.pi * min(step, end) / end))

    def active(self) -> bool:
        step = self.ctx.step
        return step % self.period() == 0 and step < min(self.end_step() + 1, self.ctx.total_steps)

    def update(self, layers: list[Layer], optimizers: list[torch.optim.Optimizer]) -> None:
        fraction = self.drop_fraction(self.ctx.step)
        for layer in layers:
            grad = layer.dense_grad
            if grad is None:  # no backward has run through this layer yet
                continue
            kept = layer.mask != 0
            n = int(fraction * int(kept.sum()))
            if n == 0:
                continue
            survivors = kept & ~smallest_kept(layer, n)
            grown = grow_by_gradient(grad, survivors, n)
            set_mask_zeroing(layer, survivors | grown, optimizers)
            self.fill_grown(layer, grown & ~kept)  # dropped and grown back: left as it was


def grow_by_gradient(grad: torch.Tensor, survivors: torch.Tensor, n: int) -> torch.Tensor:
    """A boolean tensor of the `n` positions outside `survivors` with the largest |grad|
    (ties: lower index first). Survivors score -1, below any |grad|, and at least `n`
    positions are outside them (n were just dropped), so none is picked twice."""
    import torch

    score = grad.detach().abs().flatten().masked_fill(survivors.flatten(), -1.0)
    picked = torch.argsort(score, descending=True, stable=True)[:n]
    grown = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    grown[picked] = True
    return grown.view(survivors.shape)


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="rigl",
            summary="RigL (Evci et al. 2020): drop the smallest |W|, grow the largest dense "
            "|grad|, cosine drop fraction",
            factory=Rigl,
            options=RiglOptions,
            phase="rewire",
        )
    )
