"""The channel an empty filter writes is part of the filter (filter-granularity tickets).

A conv filter whose weights are all pruned does not make its output channel zero: its bias and
the BatchNorm right after it turn the 0 into the constant `beta + gamma * (bias - mean) / std`,
which the next layer reads. Such a channel cannot be removed from the network without changing
its logits, so a "filter ticket" would be smaller on paper only. torch-pruning and every other
structured-pruning library remove the BatchNorm channel (and the bias) together with the conv
filter; ticketkit follows that convention, in the masked model itself, so the ticket's own
accuracy and its structured export (`ticketkit export --format structured`) are one network:

- while training, a forward hook zeroes the channel's output (`EmptyChannels`): exactly 0 in
  the forward, identity in the backward, as the masks' straight-through rule. Where the
  channel joins a residual sum its gradient is what it was without the hook; where a ReLU
  follows, the ReLU passes nothing back to its 0 (nor did it, in train mode, to a non-affine
  BatchNorm's 0 before), so a score method's empty filter comes back only when other filters'
  scores fall below its own. The parameters are not touched while the masks can move: a
  filter that comes back finds its BatchNorm channel as it was;
- before the ticket is written, `zero_empty_channels` writes the zeros into the parameters:
  the conv's bias, the BatchNorm's scale and shift, and its running mean. With the affine
  parameters at 0 the channel is 0 in train and eval mode; a non-affine BatchNorm of a 0 input
  gives `(0 - running_mean) / std`, which is 0 exactly when the running mean is 0 (and stays 0:
  every later batch mean of that channel is 0).

Network slimming zeroes the BatchNorm channels of the filters it prunes with the same
function, after every step of its fine-tuning (its masks are fixed there).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ticketkit.masks.sparsifier import sparsifier_of

Pairs = list[tuple[str | None, str]]
"""(path of the BatchNorm that normalises the layer's output, or None; masked layer's path)."""

_PASSES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Identity, nn.Dropout, nn.Dropout2d)
_NORMS = nn.modules.batchnorm._BatchNorm


def empty_filters(mask: torch.Tensor) -> torch.Tensor:
    """True for each output channel (row) whose mask keeps no weight."""
    return ~(mask.reshape(mask.shape[0], -1) != 0).any(dim=1)


def filter_outputs(model: nn.Module, example: torch.Tensor) -> Pairs:
    """Each masked layer with the BatchNorm fed by its output (through max-pool, identity or
    dropout, which keep a zero channel zero), found by running `example` once in eval mode:
    the same answer for plain stacks, residual blocks and timm models, with no graph tracing."""
    sparsifier = sparsifier_of(model)
    if sparsifier is None:
        return []
    names = {id(m): n for n, m in model.named_modules()}
    layers = {id(layer.module): layer.path for layer in sparsifier.layers}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # output id -> (layer, the tensor)
    found: dict[str, str | None] = {layer.path: None for layer in sparsifier.layers}

    def source(t: Any) -> str | None:
        hit = produced.get(id(t))
        return hit[0] if hit is not None and hit[1] is t else None  # the tensor, not a reused id

    def wrote(module: nn.Module, _args: Any, out: Any) -> None:
        produced[id(out)] = (layers[id(module)], out)

    def passed(_module: nn.Module, args: Any, out: Any) -> None:
        path = source(args[0]) if args else None
        if path is not None:
            produced[id(out)] = (path, out)

    def normed(module: nn.Module, args: Any) -> None:
        path = source(args[0]) if args else None
        if path is not None and found[path] is None:
            width = model.get_submodule(path).weight.shape[0]
            if module.num_features == width:  # type: ignore[attr-defined]
                found[path] = names[id(module)]

    handles = []
    for module in model.modules():
        if id(module) in layers:
            handles.append(module.register_forward_hook(wrote))
        elif isinstance(module, _PASSES):
            handles.append(module.register_forward_hook(passed))
        elif isinstance(module, _NORMS):
            handles.append(module.register_forward_pre_hook(normed))
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return [(norm, path) for path, norm in found.items()]


@torch.no_grad()
def zero_empty_channels(model: nn.Module, pairs: Pairs) -> int:
    """Write the convention into the parameters: for every filter whose mask keeps nothing,
    the layer's bias, its BatchNorm's scale, shift and running mean are set to 0. Returns
    how many channels are empty."""
    sparsifier = sparsifier_of(model)
    masks = {layer.path: layer.mask for layer in sparsifier.layers} if sparsifier else {}
    count = 0
    for norm_path, path in pairs:
        if path not in masks:
            continue
        dead = empty_filters(masks[path])
        if not bool(dead.any()):
            continue
        count += int(dead.sum())
        bias = getattr(model.get_submodule(path), "bias", None)
        if isinstance(bias, torch.Tensor):
            bias[dead.to(bias.device)] = 0.0
        if norm_path is None:
            continue
        norm = model.get_submodule(norm_path)
        for name in ("weight", "bias", "running_mean"):
            tensor = getattr(norm, name, None)
            if isinstance(tensor, torch.Tensor):
                tensor[dead.to(tensor.device)] = 0.0
    return count


class _ZeroST(torch.autograd.Function):
    """`out` with some channels exactly 0 in the forward; the gradient passes unchanged, as
    the masks' straight-through rule (an empty filter keeps its score gradient)."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return out.masked_fill(dead, 0.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


class EmptyChannels:
    """Forward hooks that keep empty filters' channels exactly 0 while a model trains (the
    masks may change every step, so the emptiness is re-read whenever a mask was written:
    fixed masks, as in finetune, are reduced once, not at every forward)."""

    def __init__(self, model: nn.Module, pairs: Pairs) -> None:
        sparsifier = sparsifier_of(model)
        layers = {layer.path: layer for layer in sparsifier.layers} if sparsifier else {}
        self.handles = []
        for norm_path, path in pairs:
            if path not in layers:
                continue
            target = model.get_submodule(norm_path if norm_path is not None else path)
            last = isinstance(target, nn.Linear)  # (..., C); conv maps and norms: (N, C, ...)
            self.handles.append(target.register_forward_hook(self._hook(layers[path], last)))

    @staticmethod
    def _hook(layer: Any, last: bool) -> Any:
        seen: dict[str, Any] = {"key": None, "dead": None}  # the empty filters of one mask state

        def zero(_module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor | None:
            mask = layer.mask
            key = (id(mask), mask._version)  # every mask write bumps it: recompute only then
            if seen["key"] != key:
                dead = empty_filters(mask)
                seen["key"], seen["dead"] = key, dead if bool(dead.any()) else None
            dead = seen["dead"]
            if dead is None:
                return None
            channel_dim = out.dim() - 1 if last else 1
            shape = [1] * out.dim()
            shape[channel_dim] = dead.numel()
            return _ZeroST.apply(out, dead.to(out.device).view(shape))

        return zero

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def hold_empty_channels(model: nn.Module, example: torch.Tensor) -> Pairs:
    """Apply the convention to a masked model from now on: empty filters' channels are 0 in
    every forward (hooks). The parameters are left as they are until `zero_empty_channels`
    (before the ticket is written, with the final masks): a score method's filter that is
    empty now may come back, and its BatchNorm channel must still be there when it does.
    Returns the pairs for that call."""
    pairs = filter_outputs(model, example)
    EmptyChannels(model, pairs)
    return pairs
