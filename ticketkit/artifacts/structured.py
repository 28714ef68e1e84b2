"""`ticketkit export --format structured`: the ticket with its dead channels physically removed.

A channel (a conv filter's output, a linear layer's neuron) is removed only where removing it
cannot change a logit, so the small network computes exactly what the ticket computes:

- every layer that reads the channel has zero weights for it (a channel ticket), or
- every layer that writes the channel has a zero filter for it (a filter ticket) *and* every
  layer that reads it sees exactly zero there. A zero filter alone is not enough: its bias and
  the BatchNorm after it make the constant `beta + gamma * (bias - mean) / std`, which the next
  conv still reads (unless a ReLU clips it to 0). With zero filters the channel's value is that
  data-independent constant, so zero on one input is zero on every input.

Which layers write and read a channel, through BatchNorm, residual additions, concatenations
and flattening, is torch-pruning's DependencyGraph's job (a maintained library: writing one
again here would be the bug farm). It also does the surgery. A group the graph cannot map
safely (one that touches the logits layer or an operation it does not index, such as the zero
padding of a resnet's option-A shortcut) is left alone; the written file's logits are checked
against the ticket's either way.

A filter whose channel is exactly zero on every input (a zero filter with no bias, or with its
BatchNorm channel zeroed too: the convention of filter tickets, masks/channels.py) but that
cannot be removed with its readers, because the channel is summed with others that are not zero
(a residual block's last conv, the stem), is still removed from its layer: the layer computes
only its live channels and `Widen` puts them back in place in a map of the old width, zeros
elsewhere. Its readers keep their width; the layer's own arithmetic shrinks. Exact, since the
removed channels were zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

HINT = "pip install 'ticketkit[structured]'"
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Removal:
    """What `structured` removed: parameter counts before/after and channels per layer."""

    params_before: int
    params_after: int
    channels: dict[str, int]  # layer path -> output channels removed
    zero_kept: int  # zero filters left in: their channel still carries a constant that is read
    widened: tuple[str, ...] = ()  # layers whose removed filters' places are filled with zeros

    @property
    def note(self) -> str | None:
        """Said when something the user may expect gone is still there, and why."""
        notes = []
        if not self.channels:
            notes.append(
                "no channel of this ticket is empty (none can be removed without changing its "
                "logits): the structured export has the dense network's parameters"
            )
        if self.widened:
            notes.append(
                f"{len(self.widened)} layers write into a residual sum: their empty filters are "
                "removed and zeros put back in their places (the sum keeps its width)"
            )
        if self.zero_kept:
            notes.append(
                f"{self.zero_kept} zero filters kept: BatchNorm (or a bias) turns their 0 into "
                "a constant that the next layer reads (`prune --granularity filter` zeroes "
                "that channel with its filter: masks/channels.py)"
            )
        return "; ".join(notes) or None


def shrink(model: nn.Module, x: torch.Tensor) -> Removal:
    """Remove every removable channel of `model` (in place, eval mode) and say what went."""
    import torch_pruning as tp

    model.eval()
    before = sum(p.numel() for p in model.parameters())
    logits_layer = _output_layer(model, x)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:2])
    removed: dict[str, int] = {}
    names = {m: n for n, m in model.named_modules()}
    cache: dict[int, torch.Tensor] = {}

    def seen() -> dict[int, torch.Tensor]:
        """Measured when first needed, and again after each removal (its indices move). Two
        inputs are enough: the channels it is asked about carry data-independent constants."""
        if not cache:
            cache.update(_inputs_seen(model, x[:2]))
        return cache

    for module in [m for m in model.modules() if isinstance(m, _LAYERS)]:
        if module is logits_layer:
            continue
        handler = graph.get_pruner_of_module(module).prune_out_channels
        candidates = list(range(_out_channels(module)))
        if len(candidates) < 2:
            continue
        group = graph.get_pruning_group(module, handler, idxs=candidates)
        dead = _removable(graph, group, logits_layer, seen)
        if dead and len(dead) < len(candidates):  # never a layer with no channel left
            graph.get_pruning_group(module, handler, idxs=dead).prune(record_history=False)
            removed[names[module]] = len(dead)
            cache.clear()
    widened = _widen(model, graph, logits_layer, names, removed)
    after = sum(p.numel() for p in model.parameters())
    zero_kept = sum(
        int((m.weight.flatten(1).abs().amax(dim=1) == 0).sum())
        for m in model.modules()
        if isinstance(m, _LAYERS) and m is not logits_layer
    )
    return Removal(before, after, removed, zero_kept, widened)


class Widen(nn.Module):
    """`inner`'s output channels put back at `index` in a map of `width` channels, the others
    exactly 0: a layer that lost filters whose channels a residual sum still has."""

    def __init__(self, inner: nn.Module, index: torch.Tensor, width: int) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("index", index)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        shape = list(y.shape)
        shape[1] = self.width
        return y.new_zeros(shape).index_copy_(1, self.index, y)  # in place: no second copy


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def _widen(
    model: nn.Module, graph: Any, logits_layer: Any, names: dict, removed: dict[str, int]
) -> tuple[str, ...]:
    """Remove the zero filters left whose channel is exactly 0 on every input (module
    docstring): shrink the conv (and the BatchNorm that alone reads it), wrap the last of the
    two in `Widen`. Their readers are not touched."""
    import torch_pruning as tp

    widened = []
    for module in [m for m in model.modules() if isinstance(m, _CONVS)]:
        if module is logits_layer or module.groups != 1:
            continue
        dead = ~module.weight.flatten(1).any(dim=1)
        if not bool(dead.any()) or bool(dead.all()):
            continue
        node = graph.module2node.get(module)
        outs = list(node.outputs) if node is not None else []
        norm = outs[0].module if len(outs) == 1 and isinstance(outs[0].module, _NORMS) else None
        width = module.out_channels
        constant = module.bias if module.bias is not None else module.weight.new_zeros(width)
        if norm is not None:  # the channel's value in eval mode for a zero filter
            spatial = [1] * (module.weight.dim() - 2)
            constant = norm.eval()(constant.view(1, width, *spatial)).flatten()
        gone = (dead & (constant == 0)).nonzero().flatten().tolist()
        if not gone:
            continue
        keep = torch.tensor(sorted(set(range(width)) - set(gone)), dtype=torch.long)
        tp.prune_conv_out_channels(module, gone)
        if norm is not None:
            tp.prune_batchnorm_out_channels(norm, gone)
        target = norm if norm is not None else module
        path = names[target]
        parent, _, child = path.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, Widen(target, keep, width))
        removed[names[module]] = removed.get(names[module], 0) + len(gone)
        widened.append(names[module])
    return tuple(widened)


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels  # type: ignore[return-value]


def _output_layer(model: nn.Module, x: torch.Tensor) -> nn.Module | None:
    """The layer whose output is the logits: its classes are the network's interface."""
    seen: dict[int, nn.Module] = {}
    handles = [
        m.register_forward_hook(lambda mod, _a, out: seen.__setitem__(id(out), mod))
        for m in model.modules()
        if isinstance(m, _LAYERS)
    ]
    try:
        with torch.no_grad():
            out = model(x[:2])
    finally:
        for h in handles:
            h.remove()
    return seen.get(id(out))


@torch.no_grad()
def _inputs_seen(model: nn.Module, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per conv/linear layer (by id), the max |input| of each input channel on the batch."""
    found: dict[int, torch.Tensor] = {}

    def hook(module: nn.Module, args: Any, _out: Any) -> None:
        a = args[0]
        if isinstance(module, nn.Linear):
            a = a.reshape(-1, a.shape[-1])
        else:
            a = a.transpose(0, 1).flatten(1).T
        found[id(module)] = a.abs().amax(dim=0)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _LAYERS)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return found


def _removable(
    graph: Any, group: Any, logits_layer: Any, seen: Callable[[], dict[int, torch.Tensor]]
) -> list:
    """The group's root indices whose removal leaves every logit as it was (module docstring)."""
    readers: list[tuple[nn.Module, list]] = []
    writers_zero: set[int] | None = None
    for item in group.items:
        dep, idxs = item.dep, list(zip(item.idxs, item.root_idxs, strict=True))
        module = dep.target.module
        if "Pad" in type(getattr(dep.target, "grad_fn", None)).__name__:
            return []  # channel padding: the graph maps its indices as if it were elementwise
        out = graph.is_out_channel_pruning_fn(dep.handler)
        if not isinstance(module, nn.Module):
            return []  # a bare nn.Parameter, or an operation the graph cannot index
        if module is logits_layer and out:
            return []
        if getattr(module, "groups", 1) != 1:
            return []  # grouped/depthwise convs tie channels in and out: left as they are
        if isinstance(module, _LAYERS) and out:
            # a zero filter writes its bias, a constant: its readers are checked for 0 below
            zero = {root for i, root in idxs if not torch.any(module.weight[i])}
            writers_zero = zero if writers_zero is None else writers_zero & zero
        elif isinstance(module, _LAYERS):
            readers.append((module, idxs))
        elif type(module).__name__ not in _SAFE and list(module.parameters(recurse=False)):
            return []  # a parametrised layer torch-pruning indexes, but we do not reason about
    if not readers:
        return []
    zero_writers = writers_zero or set()
    ok: dict[int, bool] = {}
    for module, idxs in readers:
        for i, root in idxs:
            if not ok.get(root, True):
                continue
            unread = not torch.any(module.weight[:, i])
            ok[root] = unread or (root in zero_writers and bool(seen()[id(module)][i] == 0))
    return sorted(r for r, good in ok.items() if good and r is not None)


_SAFE = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d"}
