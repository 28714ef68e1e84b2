"""Iterative magnitude pruning with rewinding: lottery tickets (Frankle & Carbin, ICLR 2019,
"The Lottery Ticket Hypothesis"; late rewinding from Frankle et al., ICML 2020, "Linear Mode
Connectivity and the Lottery Ticket Hypothesis").

Level 0 trains the dense network. Every later level removes `rate` of the prunable weights that
remain, by |W| at the end of the previous level, over the whole network (`--scope global`, the
default, as open_lth's `sparse_global`) or in each layer (`--scope layer`); the survivors go back
to their values at the rewind point and the level retrains them. Level i keeps
r_i = max(r_{i-1} - floor(rate * r_{i-1}), K) weights, r_0 = all, K = N - floor((1-k) N) (per
layer at layer scope), and the levels end once r_i = K or after `--levels`. Each level is a
`Stage` of the run, so it has its own optimizers, schedule, checkpoints and ticket, and a
resumed run starts at the first unfinished level.

Where this differs from open_lth (the reference design), deliberately:
- The count pruned is floor(rate * r), with one exact threshold (ties broken by index), so the
  counts follow the formula to the weight; open_lth prunes ceil(rate * r) with a strict `>`
  threshold, about one weight more (more with ties).
- A level that would prune nothing (floor(rate * r) = 0 on a tiny layer) prunes one weight,
  so the levels always end; the formula alone would loop there.
- A late-rewound level (`Nep`, `Nit`) retrains for the full `--epochs` with a fresh optimizer
  and a fresh schedule, as the issue asks; open_lth continues the schedule from step N.
- The whole network state is rewound (weights, biases, BatchNorm affines and running
  statistics), as open_lth loads the level-0 state dict; only the masks are new.
- `--reinit random` draws every level's weights afresh from the run's `--init` (seeded by the
  run's seed and the level); open_lth's `randomly_reinitialize` branch leaves its seed free.
- `--early-bird` (You et al. 2020, `early_bird.py`; open_lth has none) ends level 0 once the
  mask of the first pruning (unstructured, by |W|, at `--rate`) has stopped changing; level 1
  prunes the network as it is then. A `--rewind Nep`/`Nit` point not reached by then becomes
  the declaration point.
- `--controls` (`imp_controls.py`) trains the paper's two controls after every pruned level,
  each as a stage of its own.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.errors import UsageError
from ticketkit.plugin import Stage, WeightMethod
from ticketkit.plugins.methods import early_bird
from ticketkit.plugins.methods.imp_controls import control_stages, random_masks, split_stage

if TYPE_CHECKING:
    import torch
    from torch import nn

REWIND = re.compile(r"^(\d+)(ep|it)?$")
RATE = 0.2  # the LTH papers' per-level rate; --rounds derives its own


@dataclass(frozen=True)
class ImpOptions:
    rate: float = option(RATE, "fraction of the remaining prunable weights pruned per level")
    levels: int = option(0, "pruning levels after the dense level 0 (0: until --k is reached)")
    rounds: int = option(0, "reach --k in exactly this many levels (1: one-shot); not with --rate")
    rewind: str = option("0", "where survivors restart: 0 (the init), Nep or Nit of level 0")
    reinit: str = option(
        "none", "none: rewind the survivors; random: fresh random weights", ("none", "random")
    )
    early_bird: bool = option(False, "end level 0 once the first pruning's mask stops changing")
    eb_window: int = option(5, "Early-Bird: masks compared (the newest and the older ones)")
    eb_eps: float = option(0.1, "Early-Bird: normalised Hamming distance that counts as equal")
    controls: bool = option(False, "train a random-mask and a random-reinit control per level")


def parse_rewind(text: str) -> tuple[int, str]:
    """`0`, `Nep` or `Nit` as (N, "ep" | "it"); 0 in any unit is the initialisation."""
    found = REWIND.match(text.strip())
    if found is None or (found.group(2) is None and int(found.group(1)) != 0):
        raise UsageError(
            f"--rewind must be 0 (the init), Nep (after N epochs of level 0) or Nit (after N "
            f"iterations), e.g. 2ep or 500it; got '{text}'"
        )
    return int(found.group(1)), found.group(2) or "it"


def kept_schedule(
    sizes: list[int], rate: float, k: float, scope: str, levels: int, rounds: int = 0
) -> list[list[int]]:
    """Kept counts per level: one total per level at global scope, one count per layer at layer
    scope. k = 0 sets no target (then `levels` ends the run); levels = 0 sets no limit;
    rounds > 0 reaches k in exactly that many levels (module docstring)."""
    from ticketkit import kept_count

    groups = [sum(sizes)] if scope == "global" else list(sizes)
    targets = [kept_count(n, k) if k else 0 for n in groups]
    schedule = [groups]
    if rounds:
        for i in range(1, rounds + 1):
            fraction = k ** (i / rounds)
            schedule.append(
                [
                    t if i == rounds else max(min(kept_count(n, fraction), r - 1), t)
                    for n, r, t in zip(groups, schedule[-1], targets, strict=True)
                ]
            )
        return schedule
    while schedule[-1] != targets and (not levels or len(schedule) <= levels):
        schedule.append(
            [
                max(r - max(math.floor(rate * r), 1), t)
                for r, t in zip(schedule[-1], targets, strict=True)
            ]
        )
    return schedule


class Imp(WeightMethod):
    """IMP: train, prune by magnitude, rewind, retrain; one stage per level (module docstring)."""

    default_scope = "global"
    default_init = "kaiming-normal"
    _not_state = (*WeightMethod._not_state, "rewind_at")  # parsed options, not state

    def __init__(self, options: ImpOptions, setup: Any) -> None:
        super().__init__(options, setup)
        self.rewind_at = parse_rewind(options.rewind)
        if not 0 < options.rate < 1:
            raise UsageError(f"--rate must be in (0, 1), the fraction pruned; got {options.rate}")
        if options.levels < 0:
            raise UsageError(f"--levels must be >= 0; got {options.levels}")
        if options.rounds < 0:
            raise UsageError(f"--rounds must be >= 1 (1: one-shot); got {options.rounds}")
        if options.rounds and (options.levels or options.rate != RATE):
            given = "--levels" if options.levels else "--rate"
            raise UsageError(
                f"--rounds sets the levels and their rate from --k: drop {given} (or --rounds)"
            )
        if options.rounds and not setup.k:
            raise UsageError("--rounds reaches --k in that many levels: pass --k too")
        if not setup.k and not options.levels:
            raise UsageError("imp needs a target: pass --k (kept fraction) or --levels N")
        count, unit = self.rewind_at
        if unit == "ep" and count > setup.epochs:
            raise UsageError(
                f"--rewind {options.rewind}: level 0 trains only {setup.epochs} epochs"
            )
        if options.reinit == "random" and count:
            raise UsageError("--reinit random draws new weights: it takes no --rewind point")
        if setup.granularity != "unstructured":
            raise UsageError("imp prunes single weights (unstructured granularity) only")
        if options.early_bird:
            early_bird.check(options.eb_window, options.eb_eps)

    # -- levels ----------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> None:
        from ticketkit.masks import masked_layers

        super().prepare(model)  # every prunable weight kept, everything trainable
        o, s = self.options, self.setup
        sizes = [layer.numel for layer in masked_layers(model)]
        self.schedule = kept_schedule(sizes, o.rate, s.k, s.scope, o.levels, o.rounds)
        if self.schedule[-1] == self.schedule[0]:
            raise UsageError(f"--k {s.k:g} keeps every prunable weight: there is nothing to prune")
        levels = zip(self.schedule, self.schedule[1:], strict=False)
        if any(a == b for a, b in levels):  # a level that prunes nothing: only with --rounds
            raise UsageError(
                f"--rounds {o.rounds}: more levels than weights to prune down to --k {s.k:g}"
            )
        count, unit = self.rewind_at
        if unit == "it" and count > self.ctx.steps_per_epoch * s.epochs:
            steps = self.ctx.steps_per_epoch * s.epochs
            raise UsageError(f"--rewind {o.rewind}: level 0 trains only {steps} iterations")
        # the rewind point: the model's whole state but its masks, captured now (rewind 0) or
        # while level 0 trains; kept as method state, so a resumed run still has it
        self.rewind_keys = [name for name in model.state_dict() if not _is_mask(name)]
        self.rewind_state: list[torch.Tensor] = []
        if count == 0 and o.reinit == "none":
            self._capture(model)
        self.eb_history: list[torch.Tensor] = []  # Early-Bird's window of level-1 masks
        # with --controls: the last trained level's state (as rewind_keys) and masks, for its
        # controls and for the next level, which prunes the ticket and not a control
        self.level_state: list[torch.Tensor] = []
        self.level_masks: list[torch.Tensor] = []

    def stages(self) -> list[Stage]:
        names = []
        for level in range(len(self.schedule)):
            names.append(str(level))
            if self.options.controls and level:
                names.extend(control_stages(level))
        return [Stage(name, self.setup.epochs) for name in names]

    def after_step(self, model: nn.Module, optimizers: dict[str, Any]) -> None:
        count, unit = self.rewind_at
        if unit == "it" and count and self.ctx.stage == "0" and self.ctx.step == count:
            self._capture(model)

    def end_epoch(self, model: nn.Module, metrics: dict[str, Any]) -> str | None:
        count, unit = self.rewind_at
        if unit == "ep" and count and self.ctx.stage == "0" and self.ctx.epoch + 1 == count:
            self._capture(model)
        metrics["kept"] = sum(self.schedule[split_stage(self.ctx.stage)[0]])
        if self.options.early_bird and self.ctx.stage == "0":
            return self._early_bird(model, metrics)
        return None

    def _early_bird(self, model: nn.Module, metrics: dict[str, Any]) -> str | None:
        """Level 0's Early-Bird check: the mask level 1 would start from, against the last
        ones. A ticket declared before the rewind point was reached rewinds to the declaration
        (dense training ends there, so no later point exists)."""
        import torch

        from ticketkit.masks import masked_layers

        o = self.options
        with torch.no_grad():
            masks = _magnitude_masks(masked_layers(model), self.schedule[1], self.setup.scope)
        mask = torch.cat([m.flatten() for m in masks])
        if not early_bird.observe(self.eb_history, mask, o.eb_window, o.eb_eps, metrics):
            return None
        if o.reinit == "none" and not self.rewind_state:
            self._capture(model)
        return (
            f"Early-Bird ticket: the mask moved at most {metrics['eb_distance']:.4f} "
            f"(<= {o.eb_eps:g}) over the last {o.eb_window} epochs"
        )

    def begin_stage(self, stage: Stage, model: nn.Module) -> None:
        """Prune the model trained by the previous level, then rewind (or redraw) the weights.
        Also runs when a level resumes: the previous level's end state is loaded first, so the
        masks come out the same, and the level's checkpoint is loaded after."""
        import torch

        from ticketkit.masks import masked_layers

        level, control = split_stage(stage.name)
        if level == 0:
            return
        layers = masked_layers(model)
        if self.level_state and (control or level > 1):  # a control trained last: back to
            self._restore(model)  # the level's ticket, which the next level prunes
        with torch.no_grad():
            if control is None:
                masks = _magnitude_masks(layers, self.schedule[level], self.setup.scope)
            elif control == "random-mask":
                gen = torch.Generator().manual_seed(_seed(self.setup.seed, level, "mask"))
                masks = random_masks(self.level_masks, gen)
            else:  # random-reinit: the ticket's mask
                masks = [mask.clone() for mask in self.level_masks]
            if control == "random-reinit":
                scheme = self.setup.init or self.default_init
                _redraw(model, scheme, _seed(self.setup.seed, level, "control reinit"))
            elif self.options.reinit == "random":
                _redraw(model, self.setup.init or self.default_init, _seed(self.setup.seed, level))
            else:
                _load(model, self.rewind_keys, self.rewind_state)
        for layer, mask in zip(layers, masks, strict=True):
            layer.set_mask(mask)

    def end_stage(self, stage: Stage, model: nn.Module) -> None:
        """With --controls, keep a pruned level's trained state for its controls and the next
        level (method state: saved with the stage's end checkpoint)."""
        from ticketkit.masks import masked_layers

        level, control = split_stage(stage.name)
        if self.options.controls and level and control is None:
            state = model.state_dict()
            self.level_state = [state[name].detach().clone() for name in self.rewind_keys]
            self.level_masks = [layer.mask.detach().clone() for layer in masked_layers(model)]

    def finish(self, model: nn.Module) -> None:
        """The run's ticket is the last level's, not its last control's."""
        if self.level_state:
            self._restore(model)

    def _restore(self, model: nn.Module) -> None:
        from ticketkit.masks import masked_layers

        _load(model, self.rewind_keys, self.level_state)
        for layer, mask in zip(masked_layers(model), self.level_masks, strict=True):
            layer.set_mask(mask)

    def _capture(self, model: nn.Module) -> None:
        state = model.state_dict()
        self.rewind_state = [state[name].detach().clone() for name in self.rewind_keys]


def _load(model: nn.Module, keys: list[str], values: list[torch.Tensor]) -> None:
    """Copy `values` into the model's state entries `keys` (everything but the masks)."""
    import torch

    state = model.state_dict()
    with torch.no_grad():
        for name, value in zip(keys, values, strict=True):
            state[name].copy_(value)


def _is_mask(name: str) -> bool:
    return ".parametrizations." in name and name.endswith(".mask")


def _magnitude_masks(layers: list, counts: list[int], scope: str) -> list[torch.Tensor]:
    """Keep the `counts` largest |W| among the weights each layer keeps now (one count over the
    network at global scope): nested by construction, exact counts, ties broken by index."""
    import torch

    def top(scores: torch.Tensor, keep: int) -> torch.Tensor:
        order = torch.argsort(scores, descending=True, stable=True)[:keep]
        return torch.zeros_like(scores).index_fill_(0, order, 1.0)

    # pruned weights score -1: below every kept |W|, so they are never chosen again
    scores = [
        torch.where(layer.mask.bool(), layer.weight.detach().abs(), -1.0).flatten().float()
        for layer in layers
    ]
    if scope == "global":
        kept = top(torch.cat(scores), counts[0]).split([s.numel() for s in scores])
    else:
        kept = [top(s, n) for s, n in zip(scores, counts, strict=True)]
    return [
        k.view(layer.shape).to(layer.mask.device) for k, layer in zip(kept, layers, strict=True)
    ]


def _seed(seed: int, level: int, purpose: str = "reinit") -> int:
    """A seed of its own for each (run seed, level, purpose): never the init's, never another
    level's, never another draw's (the controls draw with their own purposes)."""
    digest = hashlib.sha256(f"imp {purpose} {seed} {level}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _redraw(model: nn.Module, scheme: str, seed: int) -> None:
    """Fresh weights from `scheme` for every Conv/Linear (the stored weight of masked ones),
    zero biases, and normalisation layers reset: the LTH paper's random re-initialisation."""
    import torch
    from torch.nn.utils import parametrize

    from ticketkit.masks.sparsifier import prunable_layers
    from ticketkit.plugin import norm_parameters
    from ticketkit.registry import get_initializer

    init = get_initializer(scheme).load()
    gen = torch.Generator().manual_seed(seed)
    for _, module in prunable_layers(model):
        stored = (
            module.parametrizations.weight.original
            if parametrize.is_parametrized(module, "weight")
            else module.weight
        )
        value = torch.empty(stored.shape, dtype=stored.dtype)
        init(value, fan=float(stored[0].numel()), gain=math.sqrt(2.0), generator=gen)
        stored.copy_(value)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
    norms = {id(p) for p in norm_parameters(model)}
    for module in model.modules():
        if any(id(p) in norms for p in module.parameters(recurse=False)) or hasattr(
            module, "reset_running_stats"
        ):
            module.reset_parameters()  # type: ignore[operator]


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="imp",
            summary="lottery tickets: iterative magnitude pruning with rewinding (find-ticket)",
            factory=Imp,
            options=ImpOptions,
            phase="find-ticket",
        )
    )
