"""Masks on any model.

Every `nn.Conv*`/`nn.Linear` (subclasses too, so timm layers work) is prunable unless a policy
excludes it. A prunable layer gets a `MaskedWeight` parametrization (torch.nn.utils.parametrize):
the module keeps its class and its forward, and `module.weight` becomes the effective weight

    W_eff = W * m                 (plain)
    W_eff = alpha * sign(W) * m   (binary, biprop)

computed once per forward, for all score layers together in one autograd node (`_ScoreSTE`)
made by a pre-hook on the root model. Score-based layers carry a `scores` tensor of the
weight's shape; the mask is a function of the scores (a `MaskRule`), recomputed only when the
scores changed, and the gradient reaches the scores straight through the mask (METHODS,
"conventions"):

    dL/ds = dL/dW_eff * W * relax'(s)      relax(s) = |s| for top-k

Masks are recomputed in a forward pre-hook on the root model whenever a score tensor was
modified (its version counter moved) or any optimizer stepped since the last recompute. That
gives one selection per training step, for layer-wise and global scope alike, and none at eval.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from ticketkit.core.binarize import scale_of
from ticketkit.core.kernels import kernels, usable
from ticketkit.core.rules import Fixed, MaskRule, abs_grad
from ticketkit.errors import UsageError

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

# Any optimizer step anywhere marks masks stale: fused optimizers do not bump version counters.
_steps = 0


def _count_step(*_: object) -> None:
    global _steps
    _steps += 1


from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

register_optimizer_step_post_hook(_count_step)


_ZERO = torch.zeros(())


class _ScoreSTE(torch.autograd.Function):
    """Effective weights of several score layers in one autograd node.

    One Python call per forward and one per backward for the whole model, not one per layer:
    per-layer dispatch adds up on small models, where a training step is about a millisecond.
    Gradients: W gets g*m (plain masks; a binary W_eff does not depend on W's values), s gets
    g*W*relax'(s), BiP's implicit-gradient term adds -ig*m*g^2 to it, and a weight decay
    folded in by `Sparsifier.fold_weight_decay` adds decay*s.
    """

    @staticmethod
    def forward(ctx, params, on_ctx, *tensors):  # type: ignore[override]
        """`tensors` are every layer's weight, then every layer's scores, in `params` order.

        `on_ctx` keeps the tensors on ctx instead of saving them. A layer called on its own
        does that: under non-reentrant activation checkpointing, the recomputation must save
        exactly what the original forward saved, and in the original forward the layer took
        its W_eff from the model's node and saved nothing.
        """
        ctx.params = params
        held = (*tensors, *(p._buffers["mask"] for p in params))
        if on_ctx:
            ctx.held = held
        else:
            ctx.save_for_backward(*held)
        return tuple(effective_weights(params, tensors[: len(params)]))

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        params, need = ctx.params, ctx.needs_input_grad[2:]
        saved = ctx.held if hasattr(ctx, "held") else ctx.saved_tensors
        n = len(params)
        gws: list[torch.Tensor | None] = [None] * n
        gss: list[torch.Tensor | None] = [None] * n
        for i, p in enumerate(params):
            if need[i] and (not p.binary or p.straight_through):
                gws[i] = grads[i] * saved[2 * n + i]
            if p.keep_dense_grad:
                p.dense_grad = grads[i].detach()
        scored = [i for i in range(n) if need[n + i]]
        fused = kernels() if scored else None
        if fused is not None:  # g*W*sign(s) in one pass per layer, one call for all
            batch = [i for i in scored if params[i].kernel_grad(saved[i], saved[n + i])]
            if batch:
                gs = fused.score_grads(
                    [grads[i] for i in batch],
                    [saved[i] for i in batch],
                    [saved[n + i] for i in batch],
                    [params[i].decay for i in batch],
                )
                for i, g in zip(batch, gs, strict=True):
                    gss[i] = g
                scored = [i for i in scored if gss[i] is None]
        if scored:  # g*W*relax'(s) for all layers in three calls, not three per layer
            relax = params[scored[0]].relax_grad  # one rule per model: the same for every layer
            s = [saved[n + i] for i in scored]
            gs = torch._foreach_sign(s) if relax is abs_grad else [relax(x) for x in s]
            torch._foreach_mul_(gs, [saved[i] for i in scored])
            torch._foreach_mul_(gs, [grads[i] for i in scored])
            for i, g in zip(scored, gs, strict=True):
                if params[i].ig:
                    g.addcmul_(saved[2 * n + i], grads[i] * grads[i], value=-params[i].ig)
                if params[i].decay:
                    g.add_(saved[n + i], alpha=params[i].decay)
                gss[i] = g
        return (None, None, *gws, *gss)


class MaskedWeight(nn.Module):
    """The parametrization of one prunable weight: its mask, optional scores and binary scale.

    During a forward of the model it belongs to, the effective weight was already computed for
    all layers at once (`Sparsifier`) and the module's `weight` property hands it out without
    calling this; called on its own (a submodule run directly, activation checkpointing) it
    computes its own.
    """

    def __init__(
        self, weight: torch.Tensor, *, scores: bool, binary: bool = False, alpha: str = "layer"
    ) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight))
        self.scores = nn.Parameter(torch.zeros_like(weight)) if scores else None
        self.binary = binary
        self.alpha_mode = alpha
        if binary:
            shape = (weight.shape[0],) + (1,) * (weight.dim() - 1) if alpha == "channel" else ()
            self.register_buffer("alpha", torch.ones(shape, dtype=weight.dtype))
        self.relax_grad: Callable[[torch.Tensor], torch.Tensor] = abs_grad
        self.kept: int | None = None  # set by rules that know the kept count exactly
        self.ig = 0.0  # implicit-gradient coefficient (BiP); 0 for plain straight-through
        self.decay = 0.0  # L2 weight decay of the scores, in their gradient (fold_weight_decay)
        self.keep_dense_grad = False  # keep dL/dW_eff of each backward in `dense_grad` (RigL)
        self.dense_grad: torch.Tensor | None = None
        self.straight_through = False  # binary layers: W.grad = dL/dW_eff * m (Bop)
        self._cache: tuple[tuple[object, ...], torch.Tensor, torch.Tensor] | None = None
        # scratch space of the weight's shape for mask rules; follows .to(), not saved
        self.register_buffer("scratch", torch.empty_like(weight), persistent=False)

    def signs(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sign(W), |W|), cached while W is unchanged (random-weight methods never change it).

        The key holds W's storage address as well as its version: `.to()` swaps the storage
        under the same Parameter, and the new one starts its own version count.
        """
        key = (id(w), w.data_ptr(), w._version)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, torch.sign(w.detach()), w.detach().abs())
        return self._cache[1], self._cache[2]

    def kernel_grad(self, w: torch.Tensor, s: torch.Tensor) -> bool:
        """Whether the compiled kernel computes this layer's score gradient (if it is there):
        top-k's straight-through, no implicit-gradient term, tensors it can take."""
        return self.relax_grad is abs_grad and not self.ig and usable(w, s)

    def effective(self, w: torch.Tensor) -> torch.Tensor:
        """W_eff = W * m, or alpha * sign(W) * m for binary layers (no autograd of its own)."""
        return effective_weights((self,), (w,))[0]

    def eager_effective(self, w: torch.Tensor) -> torch.Tensor:
        """`effective` in PyTorch operations (what runs where the compiled kernels cannot)."""
        if not self.binary:
            return w * self.mask
        if self.alpha.dim() == 0 and self.alpha.is_cpu:  # one pass instead of two
            return torch.addcmul(_ZERO, self.signs(w)[0], self.mask, value=self.alpha.item())
        return torch.mul(self.signs(w)[0], self.mask).mul_(self.alpha)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.scores is not None and torch.is_grad_enabled():
            return _ScoreSTE.apply((self,), True, w, self.scores)[0]
        eff = self.effective(w)
        if self.binary and self.straight_through and w.requires_grad:
            through = w * self.mask  # gradient dL/dW_eff * m, value unchanged
            eff = eff.detach() + (through - through.detach())
        if self.keep_dense_grad and eff.requires_grad:
            eff.register_hook(self._keep_dense_grad)
        return eff

    def _keep_dense_grad(self, grad: torch.Tensor) -> None:
        self.dense_grad = grad.detach()


def effective_weights(
    params: Sequence[MaskedWeight], weights: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Every layer's W_eff; the binary ones with one alpha, on the CPU, in one compiled call.

    Runs every training step: buffers are read from `_buffers`, since nn.Module's attribute
    lookup of a buffer costs ~0.5 us, and one call for all layers saves the Python and ctypes
    work of one per layer (3-5 us each: on the mlp, more than the passes over its two small
    layers take).
    """
    fused = kernels()
    effs: list[torch.Tensor | None] = [None] * len(params)
    batch: list[int] = []
    masks: list[torch.Tensor] = []
    alphas: list[torch.Tensor] = []
    for i, (p, w) in enumerate(zip(params, weights, strict=True)):
        if fused is not None and p.binary:
            mask, alpha = p._buffers["mask"], p._buffers["alpha"]
            assert mask is not None and alpha is not None
            if alpha.dim() == 0 and usable(w, mask, alpha):
                batch.append(i)
                masks.append(mask)
                alphas.append(alpha)
                continue
        effs[i] = p.eager_effective(w)
    if fused is not None and batch:
        binary = fused.binary_weights([weights[i] for i in batch], masks, alphas)
        for i, eff in zip(batch, binary, strict=True):
            effs[i] = eff
    return effs  # type: ignore[return-value]


@dataclass
class Layer:
    """A prunable layer of a model: its module path, module, parametrization and tensors.

    Parameters are looked up once: `.to()` and state loading keep their identity. Buffers are
    not cached: `.to(device)` or a dtype change replaces them with new tensors.
    """

    path: str
    module: nn.Module
    param: MaskedWeight = field(init=False)
    weight: torch.Tensor = field(init=False)  # the stored (original) weight, before masking
    scores: torch.Tensor | None = field(init=False)
    numel: int = field(init=False)
    alpha_set: bool = False  # a rule set the binary scale on the way (see `refresh`)

    def __post_init__(self) -> None:
        self.param = self.module.parametrizations.weight[0]  # type: ignore[index,assignment]
        self.weight = self.module.parametrizations.weight.original  # type: ignore[assignment]
        self.scores = self.param.scores
        self.numel = self.weight.numel()

    @property
    def mask(self) -> torch.Tensor:
        """The layer's mask (1 kept, 0 pruned), the weight's shape; read it, never write it
        in place: `set_mask` tells the sparsifier."""
        return self.param.mask

    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask (anything of the weight's shape; non-zero = kept). Masks that a
        rule derives from scores are recomputed over it at the next forward."""
        if tuple(mask.shape) != self.shape:
            raise ValueError(f"{self.path}: mask of shape {tuple(mask.shape)}, not {self.shape}")
        with torch.no_grad():
            self.param.mask.copy_(mask != 0)
        self.param.kept = None
        owner = sparsifier_of_layer(self)
        if owner is not None:
            owner.invalidate()

    @property
    def dense_grad(self) -> torch.Tensor | None:
        """dL/dW_eff of the last backward, pruned positions included (needs `dense_grad`)."""
        return self.param.dense_grad

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    @property
    def fan_in(self) -> int:
        return self.weight[0].numel()


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


def sparsifier_of_layer(layer: Layer) -> Sparsifier | None:
    """The sparsifier that owns `layer`, if it is still attached."""
    owner = layer.param.__dict__.get("_owner")
    return owner() if owner is not None else None


def sparsifier_of(model: nn.Module) -> Sparsifier | None:
    """The sparsifier attached to `model`, if any."""
    return getattr(model, "_ticketkit_sparsifier", None)
