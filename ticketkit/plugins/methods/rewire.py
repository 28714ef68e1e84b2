"""What the sparse-training methods of `ticketkit rewire` share: the parameter budget, initial
per-layer densities (uniform or ERK), random initial masks, and drop/regrow on the masks with
the optimizer state kept consistent.

Conventions, chosen once for every rewire method (research notes dsr-rigl-lth-earlybird.md,
sections A.2, A.11 and B):

- The budget is exact. With `--density uniform` every masked layer keeps
  `N_l - floor((1-k) N_l)` weights (as `prune --scope layer`); with `--density erk` the network
  keeps `N - floor((1-k) N)`, split over layers by Erdos-Renyi-Kernel (RigL's `sparse_utils`:
  density_l proportional to sum(shape_l) / prod(shape_l), layers that would exceed 1 made dense
  and the rest re-solved), rounded by largest remainder so the counts sum to the budget exactly.
- A dropped weight is set to 0 and its optimizer state (momentum, Adam's moments) cleared with
  `ticketkit.masks.clear_optimizer_state`; a regrown weight therefore starts at 0 with no
  momentum. The DSR code never resets optimizer state (A.11), so its regrown weights carry
  stale momentum; RigL resets it, as here. Weights outside the mask are kept at 0 from the
  start, so weight decay and momentum never move them.
- A weight is not regrown in the update that dropped it, as the DSR code (A.2), unless the
  layer has no other room (then the budget wins).
- The initial mask is uniformly random with exactly the layer's count (a seeded generator that
  is method state, so a resumed run draws the same regrowth).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ticketkit import option
from ticketkit.errors import UsageError
from ticketkit.plugin import WeightMethod

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ticketkit.masks import Layer

PERIOD = re.compile(r"^(\d+)(ep|it)?$")


@dataclass(frozen=True)
class RewireOptions:
    """The options every rewiring method shares (`-o every=...`, `-o stop=...`)."""

    every: str = option("100", "update the masks every N steps (N or Nit), or Nep epochs")
    stop: int = option(0, "last epoch in which masks change (0: until the end of training)")


def erk_counts(shapes: list[tuple[int, ...]], k: float) -> list[int]:
    """Kept counts per layer under ERK at overall keep-fraction k, summing to the network's
    `N - floor((1-k) N)` exactly (RigL's `sparse_utils`, erk_power_scale 1)."""
    from ticketkit import kept_count

    sizes = [_numel(shape) for shape in shapes]
    budget = kept_count(sum(sizes), k)
    raw = [sum(shape) / n for shape, n in zip(shapes, sizes, strict=True)]
    dense: set[int] = set()
    while True:
        rest = [i for i in range(len(sizes)) if i not in dense]
        left = budget - sum(sizes[i] for i in dense)
        eps = left / sum(raw[i] * sizes[i] for i in rest) if rest else 0.0
        over = [i for i in rest if eps * raw[i] > 1]
        if not over:
            break
        dense.add(max(over, key=lambda i: raw[i]))
    wanted = [float(sizes[i]) if i in dense else eps * raw[i] * sizes[i] for i in range(len(sizes))]
    return _largest_remainder(wanted, sizes, budget)


def _largest_remainder(wanted: list[float], caps: list[int], total: int) -> list[int]:
    """Integers near `wanted`, each at most its cap, summing to `total` (ties by index)."""
    counts = [min(int(w), c) for w, c in zip(wanted, caps, strict=True)]
    order = sorted(range(len(wanted)), key=lambda i: (-(wanted[i] - int(wanted[i])), i))
    while sum(counts) < total:
        grew = False
        for i in order:
            if sum(counts) == total:
                break
            if counts[i] < caps[i]:
                counts[i] += 1
                grew = True
        if not grew:
            break
    return counts


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class RewireMethod(WeightMethod):
    """A sparse-training method: exact initial counts, then `update` every `every` steps
    until epoch `stop`. Every epoch's metrics record gets `density` (per layer) and `kept`.

    A public base (docs/plugins.md), so that plugins (RigL) share the budget conventions of
    this module's docstring instead of re-deriving them. Override `update(layers, optimizers)`
    (called under no_grad with `masked_layers(model)`), changing masks only through
    `set_mask_zeroing`; optionally `initial_counts` (gmp starts dense), `active` (when masks
    may change) and `default_scope = "global"` (one budget over the network). Options are
    read from `self.options.every` / `.stop`: subclass `RewireOptions` or declare both.
    `budgets`, `period` and `grow_random` (drawn on the method's seeded generator, restored
    on resume) are there to use.
    """

    default_init = "kaiming-normal"

    def prepare(self, model: nn.Module) -> None:
        import torch

        self._rng = torch.Generator().manual_seed(self.setup.seed + 104729)
        super().prepare(model)  # attaches the masks, then `choose_masks`

    def period(self) -> int:
        """`-o every` in optimizer steps."""
        text = str(getattr(self.options, "every", "100"))
        found = PERIOD.match(text.strip())
        if found is None or int(found.group(1)) < 1:
            raise UsageError(f"-o every must be N, Nit or Nep with N >= 1; got '{text}'")
        n = int(found.group(1))
        return n * self.ctx.steps_per_epoch if found.group(2) == "ep" else n

    def budgets(self, layers: list[Layer]) -> list[int]:
        """The kept count of every masked layer at the end of training (`--density`)."""
        from ticketkit import kept_count

        k = self.setup.k
        if self.setup.density == "erk":
            return erk_counts([layer.shape for layer in layers], k)
        if self.default_scope == "global":  # one budget for the network, N - floor((1-k) N)
            sizes = [layer.numel for layer in layers]
            return _largest_remainder([k * n for n in sizes], sizes, kept_count(sum(sizes), k))
        return [kept_count(layer.numel, k) for layer in layers]

    def initial_counts(self, layers: list[Layer]) -> list[int]:
        return self.budgets(layers)

    def choose_masks(self, model: nn.Module) -> None:
        import torch

        from ticketkit.masks import masked_layers

        stop = int(getattr(self.options, "stop", 0))
        if stop < 0:
            raise UsageError(f"-o stop must be an epoch >= 0 (0: never freeze); got {stop}")
        self.period()  # a bad `every` fails before any work
        layers = masked_layers(model)
        for layer, count in zip(layers, self.initial_counts(layers), strict=True):
            keep = torch.zeros(layer.numel, dtype=torch.bool)
            keep[torch.randperm(layer.numel, generator=self._rng)[:count]] = True
            set_mask_zeroing(layer, keep.view(layer.shape).to(layer.mask.device), [])

    def active(self) -> bool:
        """Whether masks may still change at this step: a multiple of the period, before the
        end of epoch `stop`, and not the very last step of training (it would train nothing)."""
        ctx = self.ctx
        stop = int(getattr(self.options, "stop", 0))
        if stop and ctx.epoch >= stop:
            return False
        return ctx.step % self.period() == 0 and ctx.step < ctx.total_steps

    def after_step(self, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        if self.active():
            import torch

            from ticketkit.masks import masked_layers

            with torch.no_grad():
                self.update(masked_layers(model), list(optimizers.values()))

    def update(self, layers: list[Layer], optimizers: list[torch.optim.Optimizer]) -> None:
        """Change the masks (drop, regrow, prune), keeping the method's budget."""

    def end_epoch(self, model: nn.Module, metrics: dict[str, Any]) -> str | None:
        from ticketkit.masks import masked_layers

        layers = masked_layers(model)
        counts = [int(layer.mask.sum()) for layer in layers]
        metrics["kept"] = sum(counts)
        metrics["density"] = {
            layer.path: round(n / layer.numel, 6) for layer, n in zip(layers, counts, strict=True)
        }
        return None

    # -- drop and grow, shared by the methods -------------------------------------------------
    def grow_random(self, layer: Layer, n: int, barred: torch.Tensor) -> torch.Tensor:
        """A boolean tensor of `n` positions chosen uniformly among the layer's pruned ones,
        outside `barred` (just dropped) while there is room; drawn on the method's generator."""
        import torch

        free = (layer.mask.flatten() == 0).cpu()
        candidates = (free & ~barred.flatten().cpu()).nonzero().flatten()
        if len(candidates) < n:  # no room outside the just-dropped: the budget wins
            candidates = free.nonzero().flatten()
        picked = candidates[torch.randperm(len(candidates), generator=self._rng)[:n]]
        grown = torch.zeros(layer.numel, dtype=torch.bool)
        grown[picked] = True
        return grown.view(layer.shape).to(layer.mask.device)


def smallest_kept(layer: Layer, n: int) -> torch.Tensor:
    """A boolean tensor of the `n` kept weights of smallest |W| (ties: lower index first)."""
    import torch

    mags = (
        layer.weight.detach().abs().flatten().masked_fill(layer.mask.flatten() == 0, float("inf"))
    )
    order = torch.argsort(mags, stable=True)[:n]
    drop = torch.zeros(layer.numel, dtype=torch.bool, device=mags.device)
    drop[order] = True
    return drop.view(layer.shape)


def set_mask_zeroing(
    layer: Layer, keep: torch.Tensor, optimizers: list[torch.optim.Optimizer]
) -> None:
    """Set the layer's mask to `keep`; weights outside it become 0, and every position whose
    state changed (dropped or grown) loses its optimizer state: dropped weights carry nothing
    into a later regrowth and grown ones start at 0 with no momentum."""
    import torch

    from ticketkit.masks import clear_optimizer_state

    keep = keep.to(torch.bool)
    changed = keep != (layer.mask != 0)
    layer.set_mask(keep)
    with torch.no_grad():
        layer.weight.masked_fill_(~keep, 0.0)
    clear_optimizer_state(optimizers, layer.weight, changed)
