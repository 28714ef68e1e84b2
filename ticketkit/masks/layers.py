"""A masked layer's weight: the `MaskedWeight` parametrization, the score node and `Layer`.

A prunable layer gets a `MaskedWeight` parametrization (torch.nn.utils.parametrize): the module
keeps its class and its forward, and `module.weight` becomes the effective weight

    W_eff = W * m                 (plain)
    W_eff = alpha * sign(W) * m   (binary, biprop)

Score layers' W_eff are computed for all of them together in one autograd node (`_ScoreSTE`),
and the gradient reaches the scores straight through the mask (METHODS, "conventions"):

    dL/ds = dL/dW_eff * W * relax'(s)      relax(s) = |s| for top-k
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ticketkit.masks.kernels import kernels, usable


def abs_grad(s: torch.Tensor) -> torch.Tensor:
    """d|s|/ds: the straight-through path of a top-k mask on |s|."""
    return torch.sign(s)


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
        owner = self.param.__dict__.get("_owner")  # a weak reference to the Sparsifier
        if owner is not None and owner() is not None:
            owner().invalidate()

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
