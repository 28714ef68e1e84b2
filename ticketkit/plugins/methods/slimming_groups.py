"""Which BatchNorm channels network slimming can prune, and which must be pruned together.

Read off the traced forward (torch.fx), so no arch has to declare anything:

- a *group* is an affine BatchNorm and the Conv/Linear that feeds it (through channel-keeping
  modules: max-pool, identity, dropout); zeroing the BatchNorm's scale and shift and masking the
  layer's filter makes that channel 0;
- a *unit* is one pruning decision: the channels of the groups that a residual addition joins.
  Channel i of `a + b` is zero only when channel i of both is, so the channels an addition
  joins (directly, or through ReLUs, pooling, option-A shortcuts that subsample and zero-pad
  channels, or further additions) form one unit, found with a union-find over the flat channel
  index. In a plain stack every channel is a unit of its own; in resnet20 the residual stream's
  channel c is one unit with every BatchNorm that writes it, across the stages (the option-A
  padding moves it to c + 8, then c + 24).

What cannot be followed is refused with one line rather than pruned inconsistently: an addition
of a channel that no BatchNorm scale controls (an unnormalised conv output, an unknown op), and
concatenation.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

from ticketkit.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

PLAIN_ARCHS = "vgg11-bn, vgg16-bn, vgg-small, resnet20-56, or conv2-8 / mlp with -A binary_act=true"

Channels = list[frozenset[int] | None]  # per channel: the flat BN channels it carries; None: other


def channel_units(model: nn.Module) -> tuple[list[tuple[str, str]], list[list[int]]]:
    """(groups, units): every (BatchNorm path, feeding layer path) in forward order, and the
    pruning units as lists of flat channel indices (the groups' channels concatenated in that
    order), ordered by their first channel."""
    import torch
    import torch.nn.functional as F
    from torch import fx, nn
    from torch.nn.utils import parametrize

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            # torch's own modules are leaves, an arch's are traced into (ShortcutA's padding)
            own = type(m).__module__.startswith("torch.")
            return parametrize.is_parametrized(m) or (own and not list(m.children()))

    try:
        graph = Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "cannot read the graph"
        raise UsageError(
            f"slimming cannot trace this network's forward ({type(exc).__name__}); it slims "
            f"{PLAIN_ARCHS}"
        ) from None
    modules = dict(model.named_modules())
    passes = (nn.MaxPool1d, nn.MaxPool2d, nn.Identity, nn.Dropout, nn.Dropout2d)
    # ops that map a zero channel to a zero channel, channel by channel
    keeps_zero_modules = (
        *passes,
        nn.ReLU,
        nn.ReLU6,
        nn.AvgPool1d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool1d,
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveMaxPool2d,
    )
    keeps_zero_functions = {torch.relu, F.relu, F.max_pool2d, F.avg_pool2d, F.dropout}
    keeps_zero_methods = {"relu", "relu_", "contiguous", "clone"}
    adds = {operator.add, operator.iadd, torch.add}
    joins = {torch.cat, torch.stack, torch.concat}

    groups: list[tuple[str, str]] = []
    offset = 0
    found: dict[Any, tuple[Channels, int]] = {}  # node -> (its channels, its ndim)
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for node in graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        first = node.args[0] if node.args else None
        tracked = found.get(first)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            feeder = _feeder(first, modules, passes)
            width = getattr(feeder[1], "out_channels", getattr(feeder[1], "out_features", None))
            if isinstance(feeder[1], nn.Conv2d | nn.Linear) and width == module.num_features:
                if module.weight is None:
                    raise UsageError(
                        "slimming ranks channels by BatchNorm scales: drop affine_bn=false"
                    )
                groups.append((node.target, feeder[0]))
                ids = range(offset, offset + module.num_features)
                parent.update({i: i for i in ids})
                found[node] = ([frozenset([i]) for i in ids], _NDIM[type(module).__name__])
                offset += module.num_features
        elif node.op == "call_function" and node.target in joins:
            if any(arg in found for arg in _flat(node.args)):
                raise UsageError(
                    "slimming does not prune networks that concatenate feature maps; it slims "
                    f"{PLAIN_ARCHS}"
                )
        elif _is_add(node, adds):
            operands = [arg for arg in node.args[:2]]
            if any(arg in found for arg in operands):
                if not all(arg in found for arg in operands):
                    raise UsageError(
                        "slimming: a residual addition joins channels to a tensor no BatchNorm "
                        f"scale controls (after `{_name(operands)}`), so pruning them would not "
                        f"zero the sum; it slims {PLAIN_ARCHS}"
                    )
                (a, ndim), (b, _) = found[operands[0]], found[operands[1]]
                if len(a) != len(b) or None in a or None in b:
                    raise UsageError(
                        f"slimming cannot follow the channels joined at `{node.name}`; it slims "
                        f"{PLAIN_ARCHS}"
                    )
                joined = [x | y for x, y in zip(a, b, strict=True)]
                for members in joined:
                    ids = sorted(members)
                    for i in ids[1:]:
                        parent[root(i)] = root(ids[0])
                found[node] = (joined, ndim)
        elif tracked is not None:
            if (
                isinstance(module, keeps_zero_modules)
                or (node.op == "call_function" and node.target in keeps_zero_functions)
                or (node.op == "call_method" and node.target in keeps_zero_methods)
                or (node.op == "call_function" and _keeps_channels(node))
            ):
                found[node] = tracked
            elif node.op == "call_function" and node.target is F.pad:
                padded = _pad_channels(node, tracked)
                if padded is not None:
                    found[node] = padded
    units: dict[int, list[int]] = {}
    for i in sorted(parent):
        units.setdefault(root(i), []).append(i)
    return groups, sorted(units.values(), key=lambda unit: unit[0])


_NDIM = {"BatchNorm1d": 2, "BatchNorm2d": 4, "BatchNorm3d": 5}


def _feeder(source: Any, modules: dict, passes: tuple) -> tuple[str | None, Any]:
    """The module a BatchNorm's input comes from, through channel-keeping modules."""
    while source is not None and source.op == "call_module":
        if not isinstance(modules[source.target], passes):
            return source.target, modules[source.target]
        source = source.args[0]
    return None, None


def _is_add(node: Any, adds: set) -> bool:
    return (node.op == "call_function" and node.target in adds) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )


def _flat(args: Any) -> list[Any]:
    out = []
    for arg in args:
        out.extend(_flat(arg) if isinstance(arg, list | tuple) else [arg])
    return out


def _name(nodes: list[Any]) -> str:
    return ", ".join(getattr(node, "name", repr(node)) for node in nodes)


def _keeps_channels(node: Any) -> bool:
    """x[:, :, ...]: indexing that keeps the batch and every channel (option A's subsampling)."""
    if node.target is not operator.getitem or not isinstance(node.args[1], tuple):
        return False
    index = node.args[1]
    whole = slice(None, None, None)
    return len(index) >= 2 and all(isinstance(i, slice) for i in index) and index[1] == whole


def _pad_channels(node: Any, tracked: tuple[Channels, int]) -> tuple[Channels, int] | None:
    """F.pad with zeros: new channels are zero (carry nothing), old ones keep their members."""
    channels, ndim = tracked
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    if mode != "constant" or value not in (None, 0, 0.0) or not isinstance(pad, tuple | list):
        return None
    at = 2 * (ndim - 2)  # pairs run from the last dim backwards; the channel dim is 1
    if len(pad) <= at:
        return tracked
    before, after = pad[at], pad[at + 1]
    if not (isinstance(before, int) and isinstance(after, int)) or before < 0 or after < 0:
        return None
    empty: Channels = [frozenset()] * before
    return [*empty, *channels, *[frozenset()] * after], ndim
