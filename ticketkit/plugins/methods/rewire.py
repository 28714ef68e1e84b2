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
- `-o regrow=init` gives a regrown weight a fresh draw of `--init` at the layer's fan-in instead
  of 0 (the DSR code's `--big-new-weights`, original SET; RigL's `grow_init`): still with no
  optimizer state. The draw is from the run's own initializer, not the DSR code's fixed He-normal.
- The update period may grow over training (`-o period-schedule`): `doubling` doubles `-o every`
  at 1/4, 1/2 and 3/4 of the epochs, the DSR code's 100 -> 200 -> 400 -> 800 at epochs
  0/25/50/75 of 100 (A.4), and `E:N,E:N,...` is the code's piecewise-constant YAML schedule
  (the period of the last entry whose epoch is <= the current one; `-o every` before the
  first). As in the code, an update falls on a step t with t mod period(epoch) = 0.
- `--dense-shortcuts` (`Setup.dense_shortcuts`) leaves 1x1 shortcut convs dense: a Conv with a
  1x1 kernel inside a module named `shortcut` or `downsample` (ticketkit's WRNs and ResNets,
  torchvision's and timm's ResNets), as the DSR paper keeps them (A.2).
"""

from __future__ import annotations

import math
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
SHORTCUT_NAMES = ("shortcut", "downsample")
REGROW = ("zero", "init")


@dataclass(frozen=True)
class RewireOptions:
    """The options every rewiring method shares (`-o every=...`, `-o stop=...`,
    `-o period-schedule=...`, `-o regrow=...`)."""

    every: str = option("100", "update the masks every N steps (N or Nit), or Nep epochs")
    stop: int = option(0, "last epoch in which masks change (0: until the end of training)")
    period_schedule: str = option(
        "constant",
        "how the period grows: constant, doubling (x2 at 1/4, 1/2, 3/4 of the epochs), "
        "or EPOCH:N,... (the period from each epoch on)",
    )
    regrow: str = option(
        "zero", "value of a regrown weight: zero, or init (a draw of --init)", REGROW
    )


def is_shortcut(path: str, module: Any) -> bool:
    """Whether a prunable layer is a 1x1 shortcut (projection) conv of a residual block: a
    Conv with an all-ones kernel inside a module named `shortcut` or `downsample`. By name,
    because a bottleneck's own 1x1 convs have the same shape."""
    from torch import nn

    if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return False
    parts = path.split(".")
    return all(k == 1 for k in module.kernel_size) and any(p in SHORTCUT_NAMES for p in parts)


def parse_period(text: str, steps_per_epoch: int, what: str) -> int:
    """`N`, `Nit` (steps) or `Nep` (epochs) as a number of optimizer steps, N >= 1."""
    found = PERIOD.match(str(text).strip())
    if found is None or int(found.group(1)) < 1:
        raise UsageError(f"{what} must be N, Nit or Nep with N >= 1; got '{text}'")
    n = int(found.group(1))
    return n * steps_per_epoch if found.group(2) == "ep" else n


def period_schedule(text: str, epochs: int) -> list[tuple[int, int, str | None]]:
    """`-o period-schedule` as (first epoch, multiple of `-o every`, or 0 and the period's own
    text) in epoch order. `constant`: `every` throughout; `doubling`: `every` doubled at 1/4,
    1/2 and 3/4 of `epochs` (the DSR code's 0/25/50/75 of 100); `E:N,...`: N from epoch E."""
    text = str(text).strip()
    if text == "constant":
        return [(0, 1, None)]
    if text == "doubling":
        return [(0, 1, None)] + [(math.ceil(j * epochs / 4), 2**j, None) for j in (1, 2, 3)]
    entries: list[tuple[int, int, str | None]] = []
    for item in text.split(","):
        epoch, sep, period = item.partition(":")
        if not sep or not epoch.strip().isdigit():
            raise UsageError(
                "-o period-schedule must be constant, doubling, or EPOCH:N,... "
                f"(e.g. 0:100,25:200,50:400); got '{text}'"
            )
        entries.append((int(epoch), 0, period.strip()))
    if [e for e, _, _ in entries] != sorted({e for e, _, _ in entries}):
        raise UsageError(f"-o period-schedule: epochs must increase; got '{text}'")
    return entries


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
    until epoch `stop`. (Every epoch's metrics record gets `density` per layer, `kept` and
    `mask_changed` from the training loop.)

    A public base (docs/plugins.md), so that plugins (RigL) share the budget conventions of
    this module's docstring instead of re-deriving them. Override `update(layers, optimizers)`
    (called under no_grad with `masked_layers(model)`), changing masks only through
    `set_mask_zeroing`; optionally `initial_counts` (gmp starts dense), `active` (when masks
    may change) and `default_scope = "global"` (one budget over the network). Options are
    read from `self.options.every` / `.stop` (and `.period_schedule`, `.regrow` where
    declared): subclass `RewireOptions` or declare them. `budgets`, `period`, `grow_random`
    (drawn on the method's seeded generator, restored on resume) and `fill_grown` (the
    `-o regrow` value of new weights) are there to use.
    """

    default_init = "kaiming-normal"

    def prepare(self, model: nn.Module) -> None:
        import torch

        self._rng = torch.Generator().manual_seed(self.setup.seed + 104729)
        super().prepare(model)  # attaches the masks, then `choose_masks`

    def exclude(self, path: str, module: nn.Module) -> bool:
        """The base policy, plus 1x1 shortcut convs with `--dense-shortcuts`."""
        if getattr(self.setup, "dense_shortcuts", False) and is_shortcut(path, module):
            return True
        return super().exclude(path, module)

    def period(self, epoch: int | None = None) -> int:
        """The update period in optimizer steps at `epoch` (default: the current one):
        `-o every`, as `-o period-schedule` grows it."""
        steps, what = self.ctx.steps_per_epoch, "-o period-schedule"
        every = parse_period(getattr(self.options, "every", "100"), steps, "-o every")
        epoch = self.ctx.epoch if epoch is None else epoch
        schedule = getattr(self.options, "period_schedule", "constant")
        period = every
        for start, times, text in period_schedule(schedule, self.ctx.epochs):
            if start > epoch:
                break
            period = every * times if text is None else parse_period(text, steps, what)
        return period

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
        self.period(0)  # a bad `every` or schedule fails before any work, whatever its epoch
        schedule = getattr(self.options, "period_schedule", "constant")
        for _, _, text in period_schedule(schedule, self.ctx.epochs):
            if text is not None:
                parse_period(text, self.ctx.steps_per_epoch, "-o period-schedule")
        if getattr(self.options, "regrow", "zero") not in REGROW:
            raise UsageError(f"-o regrow must be one of {', '.join(REGROW)}")
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

    def fill_grown(self, layer: Layer, grown: torch.Tensor) -> None:
        """Give the newly grown positions `grown` (already kept, optimizer state cleared) their
        starting value: 0 as they are (`-o regrow=zero`), or with `-o regrow=init` a fresh
        draw of the run's `--init` at the layer's fan-in (unscaled, as the random network's),
        on the method's generator so a resumed run draws the same."""
        import torch

        from ticketkit.registry import get_initializer

        n = int(grown.sum())
        if getattr(self.options, "regrow", "zero") != "init" or n == 0:
            return
        init = get_initializer(self.setup.init or self.default_init).load()
        values = torch.empty(n, dtype=layer.weight.dtype)
        fan = float(layer.numel // layer.shape[0])
        init(values, fan=fan, gain=math.sqrt(2.0), generator=self._rng)
        layer.weight[grown.to(layer.weight.device)] = values.to(layer.weight.device)


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
