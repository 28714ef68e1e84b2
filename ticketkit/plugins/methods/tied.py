"""Tied weights, HashedNet-style (Chen, Wilson, Tyree, Weinberger & Chen, ICML 2015,
"Compressing Neural Networks with the Hashing Trick"), as the DSR paper's "tied" baseline
(Mostafa & Wang, ICML 2019): every masked layer of n weights holds K = N - floor((1-k) N)
trainable values, a bank shared by all n positions through a fixed random balanced index map,
so the network trains at the same parameter budget as a sparse one, with no weight at 0.

The bank is kept inside the layer's own weight: position i holds bank[index[i]], where
index[perm[i]] = i mod K for a random permutation `perm` (every bank entry is used floor(n/K)
or ceil(n/K) times), and bank[j] starts as the initial weight at perm[j] (a draw of `--init`).
A hook on the weight's gradient replaces every position's gradient by the sum over its bank
entry's copies (dL/dbank[j] = sum of dL/dW_i over index[i] = j), so every optimizer (SGD,
momentum, weight decay, Adam: elementwise on equal inputs) keeps the copies exactly equal and
trains exactly K values per layer. Nothing is pruned: the ticket's masks keep every weight.

Where this differs from the reference code (the DSR code's `TiedTensor`, research notes A.7):
- K is `N - floor((1-k) N)` (the code's round((1-s) n)); bank[0] is not forced to 0;
- the bank starts from `--init` draws (the code draws U(+-1/sqrt(fan_in)), WRN/ResNet then
  He-normal) and the map is drawn on the method's seeded generator; like the code there is no
  hash function and no sign hash; `--density erk` sizes the banks by ERK;
- the code's `--rescale-tied-gradient` is a no-op there; here `-o gradient=mean` divides each
  bank entry's summed gradient by its number of copies (about 1/k). The sum is the true
  gradient and the default, but it makes the step about 1/k times an untied weight's: at
  k = 0.02 a network without BatchNorm diverges at the learning rate its sparse peers train
  with (benchmarks/RESULTS.md); `mean` trains at that learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.errors import UsageError
from ticketkit.plugins.methods.rewire import RewireMethod

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class TiedOptions:
    gradient: str = option(
        "sum", "sum: a bank entry's true gradient; mean: divided by its copies (about 1/k)"
    )


class Tied(RewireMethod):
    """Dense masks; each layer's weights tied to a bank of the layer's budget."""

    budget = "values"

    def __init__(self, options: Any, setup: Any) -> None:
        super().__init__(options, setup)
        self.gradient = getattr(options, "gradient", "sum")
        if self.gradient not in ("sum", "mean"):
            raise UsageError(f"-o gradient must be sum or mean; got '{self.gradient}'")

    def choose_masks(self, model: nn.Module) -> None:
        import torch

        from ticketkit.masks import masked_layers

        layers = masked_layers(model)
        self.index: list[torch.Tensor] = []  # rebuilt by `prepare`, from the seed alone
        for layer, size in zip(layers, self.budgets(layers), strict=True):
            perm = torch.randperm(layer.numel, generator=self._rng)
            index = torch.empty(layer.numel, dtype=torch.long)
            index[perm] = torch.arange(layer.numel) % size
            index = index.to(layer.weight.device)
            with torch.no_grad():
                flat = layer.weight.view(-1)
                bank = flat[perm.to(flat.device)[:size]].clone()
                flat.copy_(bank[index])
            mean = self.gradient == "mean"
            layer.weight.register_hook(_summed_over_copies(index, size, mean))
            self.index.append(index)

    def active(self) -> bool:
        return False  # the map is fixed: nothing to rewire

    def period(self, epoch: int | None = None) -> int:
        return 1  # no `-o every`

    def end_epoch(self, model: nn.Module, metrics: dict[str, Any]) -> str | None:
        from ticketkit.masks import masked_layers

        # the trainable values per layer (the banks); counting distinct floats instead would
        # undercount: two bank entries may hold the same float by chance
        metrics["values"] = {
            layer.path: int(index.max()) + 1
            for layer, index in zip(masked_layers(model), self.index, strict=True)
        }
        return None

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("index", None)  # derived from the seed by `prepare`, not saved
        return state


def _summed_over_copies(index: torch.Tensor, size: int, mean: bool = False) -> Any:
    """A gradient hook: each position gets the summed (or, with `mean`, averaged) gradient of
    its bank entry."""
    import torch

    copies = torch.bincount(index, minlength=size).to(torch.float32) if mean else None

    def hook(grad: torch.Tensor) -> torch.Tensor:
        flat = grad.reshape(-1)
        where = index.to(flat.device)  # a no-op unless the model moved after `prepare`
        sums = torch.zeros(size, dtype=flat.dtype, device=flat.device).index_add_(0, where, flat)
        if copies is not None:
            sums /= copies.to(sums)
        return sums[where].view_as(grad)

    return hook


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="tied",
            summary="tied weights (HashedNet-style): k*n shared trainable values per layer",
            factory=Tied,
            options=TiedOptions,
            phase="rewire",
        )
    )
