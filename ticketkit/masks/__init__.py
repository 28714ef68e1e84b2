"""The public mask API: masks on any model, for methods and for users of the Python API.

    from ticketkit.masks import attach_masks, masked_layers

    attach_masks(model)                       # every Conv/Linear gets a mask, all kept
    for layer in masked_layers(model):
        layer.set_mask(layer.weight.abs() > 0.01)
    ticketkit.save_ticket(model, "t.safetensors")

A masked layer's `weight` is the effective weight W_eff = W * m (alpha * sign(W) * m for
binary layers); the stored weight is `layer.weight`. The straight-through rules, as the
engine applies them in every backward:

- weights: W.grad = dL/dW_eff * m (pruned weights get no gradient); binary layers' weights
  get that too only with `straight_through=True` (Bop flips signs by it);
- scores (`scores=True`, the mask is a function of the scores through a `MaskRule`):
  scores.grad = dL/dW_eff * W * relax'(s), relax(s) = |s| for top-k;
- `dense_grad=True`: `layer.dense_grad` keeps the dense dL/dW_eff of the last backward,
  pruned positions included (RigL grows where it is largest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ticketkit.masks.layers import Layer
from ticketkit.masks.rules import MaskRule
from ticketkit.masks.sparsifier import Sparsifier, sparsifier_of


def attach_masks(
    model: nn.Module,
    *,
    scores: bool = False,
    rule: MaskRule | None = None,
    binary: bool = False,
    dense_first: bool = False,
    dense_last: bool = False,
    exclude: Callable[[str, nn.Module], bool] | None = None,
    dense_grad: bool = False,
    straight_through: bool = False,
) -> Sparsifier:
    """Mask every prunable layer (`nn.Conv*`, `nn.Linear` and subclasses) that the policy
    leaves; all weights start kept. With `scores`, each layer also gets a trainable score
    tensor and `rule` (default: masks change only when set) turns scores into masks."""
    return Sparsifier.attach(
        model,
        rule,
        scores=scores,
        binary=binary,
        dense_first=dense_first,
        dense_last=dense_last,
        exclude=exclude,
        dense_grad=dense_grad,
        straight_through=straight_through,
    )


def masked_layers(model: nn.Module) -> list[Layer]:
    """The model's masked layers in module order (empty if it has no masks)."""
    sparsifier = sparsifier_of(model)
    return list(sparsifier.layers) if sparsifier is not None else []


def clear_optimizer_state(
    optimizers: Iterable[torch.optim.Optimizer], param: torch.Tensor, where: torch.Tensor
) -> None:
    """Zero every per-element state of `param` (momentum, Adam's moments) at `where`, in
    every optimizer that holds it: a dropped weight must not carry its old momentum into a
    later regrowth (SET, RigL, DSR)."""
    where = where.to(torch.bool)
    with torch.no_grad():
        for opt in optimizers:
            for value in opt.state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value.masked_fill_(where, 0)


__all__ = [
    "Layer",
    "MaskRule",
    "Sparsifier",
    "attach_masks",
    "clear_optimizer_state",
    "masked_layers",
]
