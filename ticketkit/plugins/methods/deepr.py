"""Deep Rewiring (DeepR; Bellec, Kappel, Maass & Legenstein, ICLR 2018, "Deep Rewiring:
Training very sparse deep networks"): every kept weight takes, after each optimizer step, the
Langevin noise sqrt(2 eta T) * N(0, 1) (eta the current learning rate, T `-o temperature`) and
an L1 pull towards 0 (`-o l1`, alpha in the loss); a kept weight whose sign flipped since the
last check dies (set to 0, its optimizer state cleared), and as many weights are regrown in the
same layer at random among the pruned positions, starting at 0, so every layer keeps its count.

Where this differs from the paper and the reference code (the DSR code's `--DeepR`, research
notes A.6):
- the noise is added to the weight itself after the optimizer step, as the paper's update
  theta <- theta - eta dE/dtheta - eta alpha + sqrt(2 eta T) nu; the DSR code adds it to the
  gradient, so it is also scaled by lr and passed through Nesterov momentum;
- weights are signed parameters (w = s theta, the sign not fixed at init): a regrown weight
  starts at 0 and takes the sign of its first update (the code's reading too; sign 0 is never a
  flip, so a new weight has one free step); with `-o regrow=init` (the code's
  `--big-new-weights`) it starts at a draw of `--init` with that draw's sign; in the paper each
  connection keeps its sign;
- T is constant (the code steps it down on an epoch schedule, research notes A.6); the noise
  stops with the rewiring at epoch `-o stop`;
- a weight is not regrown in the step that killed it unless its layer has no other room, and
  the noise is drawn on the method's seeded CPU generator (a resumed run draws the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.errors import UsageError
from ticketkit.plugins.methods.rewire import RewireMethod, RewireOptions, set_mask_zeroing

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ticketkit.masks import Layer
    from ticketkit.plugin import Setup


@dataclass(frozen=True)
class DeeprOptions(RewireOptions):
    every: str = option("1", "check signs and rewire every N steps (N or Nit), or Nep epochs")
    stop: int = option(0, "last epoch with noise and rewiring (0: until the end of training)")
    temperature: float = option(1e-5, "T: the noise is sqrt(2 lr T) N(0, 1) per step")
    l1: float = option(1e-5, "alpha: L1 penalty alpha * sum |W| added to the loss")


class Deepr(RewireMethod):
    """Noise and L1 on the kept weights; a sign flip kills, a random regrowth refills."""

    def __init__(self, options: Any, setup: Setup) -> None:
        super().__init__(options, setup)
        if not (options.temperature >= 0 and options.l1 >= 0):
            raise UsageError("-o temperature and -o l1 must be >= 0")
        self.signs: list[torch.Tensor] = []  # sign(W) at the last check (saved with the run)

    def choose_masks(self, model: nn.Module) -> None:
        import torch

        from ticketkit.masks import masked_layers

        super().choose_masks(model)
        self.signs = [torch.sign(layer.weight.detach()).cpu() for layer in masked_layers(model)]

    def loss_term(self, model: nn.Module) -> torch.Tensor | None:
        from ticketkit.masks import masked_layers

        if not self.options.l1 or not self.rewiring():
            return None
        # on the stored weights: pruned ones are 0, and |W|'s gradient at 0 is 0
        return self.options.l1 * sum(layer.weight.abs().sum() for layer in masked_layers(model))

    def rewiring(self) -> bool:
        """Before the end of epoch `stop` (0: always)."""
        stop = int(self.options.stop)
        return not stop or self.ctx.epoch < stop

    def after_step(self, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        if self.rewiring() and self.options.temperature > 0:
            self._add_noise(model, list(optimizers.values()))
        super().after_step(model, optimizers)  # `update` at the check steps

    def _add_noise(self, model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
        import torch

        from ticketkit.masks import masked_layers

        lrs = {id(p): g["lr"] for opt in optimizers for g in opt.param_groups for p in g["params"]}
        with torch.no_grad():
            for layer in masked_layers(model):
                std = math.sqrt(2 * lrs.get(id(layer.weight), 0.0) * self.options.temperature)
                noise = torch.randn(layer.shape, generator=self._rng).to(layer.weight)
                layer.weight.add_(noise.mul_(std).mul_(layer.mask))

    def update(self, layers: list[Layer], optimizers: list[torch.optim.Optimizer]) -> None:
        import torch

        for i, layer in enumerate(layers):
            now = torch.sign(layer.weight.detach())
            flipped = (now * self.signs[i].to(now)) < 0
            flipped &= layer.mask != 0
            n = int(flipped.sum())
            if n:
                keep = (layer.mask != 0) & ~flipped
                set_mask_zeroing(layer, keep, optimizers)  # dies: 0, no optimizer state
                grown = self.grow_random(layer, n, flipped)
                set_mask_zeroing(layer, keep | grown, optimizers)
                self.fill_grown(layer, grown)
            self.signs[i] = torch.sign(layer.weight.detach()).cpu()


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="deepr",
            summary="DeepR (Bellec et al. 2018): noise and L1; a sign flip kills, random regrowth",
            factory=Deepr,
            options=DeeprOptions,
            phase="rewire",
        )
    )
