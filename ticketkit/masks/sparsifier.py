"""Masks on any model: the `Sparsifier` that owns a model's masked layers.

Every `nn.Conv*`/`nn.Linear` (subclasses too, so timm layers work) is prunable unless a policy
excludes it. Score layers' effective weights are computed once per forward, for all of them
together (`layers._ScoreSTE`), in a pre-hook on the root model. The mask is a function of the
scores (a `MaskRule`), recomputed only when the scores changed: in that pre-hook, whenever a
score tensor was modified (its version counter moved) or any optimizer stepped since the last
recompute. That gives one selection per training step, for layer-wise and global scope alike,
and none at eval.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ticketkit.errors import UsageError
from ticketkit.masks.binarize import scale_of
from ticketkit.masks.kernels import kernels
from ticketkit.masks.layers import Layer, MaskedWeight, _ScoreSTE
from ticketkit.masks.rules import Fixed, MaskRule

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

# Any optimizer step anywhere marks masks stale: fused optimizers do not bump version counters.
_steps = 0


def _count_step(*_: object) -> None:
    global _steps
    _steps += 1


from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

register_optimizer_step_post_hook(_count_step)


# ---- the sparsifier ----------------------------------------------------------------------------


def prunable_layers(
    model: nn.Module,
    *,
    dense_first: bool = False,
    dense_last: bool = False,
    exclude: Callable[[str, nn.Module], bool] | None = None,
) -> list[tuple[str, nn.Module]]:
    """(path, module) of every Conv/Linear the policy leaves prunable, in module order."""
    found = [
        (path, m)
        for path, m in model.named_modules()
        if isinstance(m, PRUNABLE) and isinstance(getattr(m, "weight", None), torch.Tensor)
    ]
    if dense_first and found:
        found = found[1:]
    if dense_last and found:
        found = found[:-1]
    if exclude is not None:
        found = [(p, m) for p, m in found if not exclude(p, m)]
    return found


class Sparsifier:
    """Owns the masked layers of one model and keeps their masks current."""

    def __init__(self, model: nn.Module, layers: list[Layer], rule: MaskRule) -> None:
        self.layers = layers
        self.rule = rule
        self._seen: tuple[int, ...] | None = None
        self._steps = -1
        self._mode: bool | None = None
        self._model = weakref.ref(model)
        for layer in layers:
            layer.param.__dict__["_owner"] = weakref.ref(self)
        scored = [layer for layer in layers if layer.scores is not None]
        # the score node's inputs: Parameters keep their identity, so these are built once
        self._scored = tuple(layer.param for layer in scored)
        self._scored_modules = tuple(layer.module for layer in scored)
        self._scored_inputs = (
            *(layer.weight for layer in scored),
            *(layer.scores for layer in scored),
        )
        self._hooks = (
            model.register_forward_pre_hook(self._before_forward),
            model.register_forward_hook(self._after_forward, always_call=True),
        )
        model._ticketkit_sparsifier = self  # type: ignore[assignment]

    @classmethod
    def attach(
        cls,
        model: nn.Module,
        rule: MaskRule | None = None,
        *,
        scores: bool = True,
        binary: bool = False,
        alpha: str = "layer",
        dense_first: bool = False,
        dense_last: bool = False,
        exclude: Callable[[str, nn.Module], bool] | None = None,
        dense_grad: bool = False,
        straight_through: bool = False,
    ) -> Sparsifier:
        """Parametrize every prunable layer of `model` and return the sparsifier.

        `rule` turns scores into masks (default `Fixed`: masks change only when set).
        `dense_grad` keeps each layer's dense dL/dW_eff in `layer.dense_grad`;
        `straight_through` gives binary layers' weights the gradient dL/dW_eff * m.
        """
        if getattr(model, "_ticketkit_sparsifier", None) is not None:
            raise ValueError("model already has masks attached")
        rule = rule if rule is not None else Fixed()
        layers = []
        for path, module in prunable_layers(
            model, dense_first=dense_first, dense_last=dense_last, exclude=exclude
        ):
            p = MaskedWeight(module.weight.detach(), scores=scores, binary=binary, alpha=alpha)
            p.relax_grad = rule.relax_grad
            p.keep_dense_grad, p.straight_through = dense_grad, straight_through
            parametrize.register_parametrization(module, "weight", p, unsafe=True)
            _hand_out_stash(module)
            layers.append(Layer(path, module))
        if not layers:
            raise UsageError(
                "the model has no prunable layer left by the policy (structured "
                "granularities prune conv layers only; --dense-first/--dense-last)"
            )
        return cls(model, layers, rule)

    def set_rule(self, rule: MaskRule) -> None:
        self.rule = rule
        for layer in self.layers:
            layer.param.relax_grad = rule.relax_grad
        self.invalidate()

    def invalidate(self) -> None:
        """Force a mask recompute at the next forward (e.g. after changing k)."""
        self._seen = None

    def _versions(self) -> tuple[int, ...]:
        return tuple(
            layer.scores._version if layer.scores is not None else 0 for layer in self.layers
        )

    def _before_forward(self, module: nn.Module, args: object) -> None:
        """Refresh the masks, then compute every score layer's W_eff in one autograd node."""
        self.refresh(training=module.training)
        if self._scored and torch.is_grad_enabled():
            w_effs = _ScoreSTE.apply(self._scored, False, *self._scored_inputs)
            for layer_module, w_eff in zip(self._scored_modules, w_effs, strict=True):
                layer_module.__dict__[_STASH] = w_eff

    def _after_forward(self, module: nn.Module, args: object, output: object) -> None:
        for layer_module in self._scored_modules:
            layer_module.__dict__[_STASH] = None

    def refresh(self, training: bool = False, force: bool = False) -> None:
        """Recompute masks (and binary scales) if anything they depend on changed."""
        versions = self._versions()
        stale = (
            force
            or versions != self._seen
            or _steps != self._steps
            or training != self._mode
            or (self.rule.stochastic and training)
        )
        if not stale:
            return
        with torch.no_grad():  # rules run under it (one context a step, not one per call)
            self.rule.update(self.layers, training)
            for layer in self.layers:
                param = layer.param
                if param.binary and not layer.alpha_set:
                    scale_of(param.signs(layer.weight)[1], layer.mask, param.alpha, param.kept)
                layer.alpha_set = False  # used once: a later rule may not set it
        self._seen, self._steps, self._mode = versions, _steps, training  # rules never touch scores

    def freeze(self) -> None:
        """Fix the masks the rule gives in eval mode (deterministic); scores stop mattering."""
        self.refresh(training=False, force=True)
        self.set_rule(Fixed())

    def fold_weight_decay(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Move the L2 weight decay of score-only parameter groups into the score gradient.

        torch's SGD and Adam add wd * s to the gradient in a pass of their own over s and the
        gradient, into a new tensor; the compiled score-gradient kernel reads s anyway and adds
        the same term for nothing (the mlp's biprop step took 0.953-0.982x as long, measured:
        benchmarks/RESULTS.md). Folded only where it is the same arithmetic: SGD and Adam (not
        AdamW, not `maximize`), groups holding nothing but this model's scores, whose gradient
        the kernel computes (CPU, top-k's straight-through, no implicit-gradient term). Pass
        every optimizer that trains the model (a layer not folded here gets no decay of its
        own), and only where one backward runs per optimizer step (a second would add the
        decay twice).

        A folded group keeps weight_decay 0 and remembers the decay under `_FOLDED`, which its
        checkpoints carry: call this after loading one (it reads either form, and gives a group
        its decay back where it can no longer fold, e.g. resumed without a C compiler).
        """
        fold = kernels() is not None
        layers = {id(layer.scores): layer for layer in self.layers if layer.scores is not None}
        for layer in self.layers:
            layer.param.decay = 0.0
        for opt in optimizers:
            same_arithmetic = type(opt) in (torch.optim.SGD, torch.optim.Adam)
            for group in opt.param_groups:
                folded = group.pop(_FOLDED, None)
                if folded is not None:
                    group["weight_decay"] = folded  # as configured, then folded again below
                decay = group.get("weight_decay", 0.0)
                owners = [layers.get(id(p)) for p in group["params"]]
                if (
                    not (fold and same_arithmetic and decay and owners)
                    or group.get("maximize")
                    or group.get("decoupled_weight_decay")
                    or not all(o and o.param.kernel_grad(o.weight, o.scores) for o in owners)
                ):
                    continue
                for owner in owners:
                    owner.param.decay = float(decay)
                group["weight_decay"], group[_FOLDED] = 0.0, decay

    def kept(self) -> dict[str, int]:
        return {layer.path: int(layer.mask.count_nonzero()) for layer in self.layers}

    def scores(self) -> list[nn.Parameter]:
        return [layer.scores for layer in self.layers if layer.scores is not None]

    def remove(self) -> None:
        """Bake the effective weights into plain weights and drop masks, scores and hooks."""
        model = self._model()
        self.refresh(training=False, force=False)
        with torch.no_grad():
            for layer in self.layers:
                parametrize.remove_parametrizations(layer.module, "weight", leave_parametrized=True)
                layer.module.__dict__.pop(_STASH, None)
        for hook in self._hooks:
            hook.remove()
        if model is not None:
            model._ticketkit_sparsifier = None  # type: ignore[assignment]


_STASH = "_ticketkit_weight"  # a layer's W_eff during a forward of its model, else None
_FOLDED = "ticketkit_folded_weight_decay"  # a param group's decay, moved into the gradient


def _hand_out_stash(module: nn.Module) -> None:
    """Make `module.weight` return the stashed W_eff when there is one.

    parametrize gives each parametrized module its own class with a `weight` property that runs
    the parametrization through two module calls (~10 us). During a forward the Sparsifier has
    already computed W_eff, so the property is wrapped to return it directly; outside a forward
    the stash is None and parametrize's own getter runs. The class is private to this module
    instance and goes away with `remove_parametrizations`.
    """
    cls = type(module)
    prop = cls.__dict__["weight"]
    fget = prop.fget

    def weight(self: nn.Module) -> torch.Tensor:
        w = self.__dict__.get(_STASH)
        return w if w is not None else fget(self)

    cls.weight = property(weight, prop.fset)  # type: ignore[attr-defined]
    module.__dict__[_STASH] = None


def sparsifier_of(model: nn.Module) -> Sparsifier | None:
    """The sparsifier attached to `model`, if any."""
    return getattr(model, "_ticketkit_sparsifier", None)
