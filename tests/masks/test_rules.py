"""TopK at global scope with filter/channel granularity: filters ranked over the whole network."""

import math

import pytest
import torch
from torch import nn

from ticketkit.masks.rules import TopK
from ticketkit.masks.select import kept_count
from ticketkit.masks.sparsifier import Sparsifier


def convs() -> nn.Module:
    """Three conv layers whose filters (and input channels) differ in size."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),  # filters of 27 weights
        nn.Conv2d(8, 16, 3, bias=False),  # 72
        nn.Conv2d(16, 12, 1, bias=False),  # 16
    )


def attach(model: nn.Module, k: float, scope: str, granularity: str, scales=(1.0, 1.0, 1.0)):
    sp = Sparsifier.attach(model, TopK(k, scope, granularity))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer, scale in zip(sp.layers, scales, strict=True):
            layer.scores.copy_(scale * torch.randn(layer.scores.shape, generator=gen))
    sp.refresh(force=True)
    return sp


def groups_of(mask: torch.Tensor, granularity: str) -> torch.Tensor:
    """The mask as (groups, elements per group): filters are dim 0, input channels dim 1."""
    dim = 0 if granularity == "filter" else 1
    return mask.transpose(0, dim).flatten(1)


def reference_masks(sp: Sparsifier, k: float, granularity: str) -> list[torch.Tensor]:
    """Per layer, which groups an independent global ranking keeps: RMS of |scores| per group
    (in float64), one list over all layers, the top N - floor((1-k) N), ties by position."""
    rms = [
        groups_of(l.scores.detach().double(), granularity).square().mean(1).sqrt()
        for l in sp.layers
    ]
    allrms = torch.cat(rms)
    order = torch.sort(-allrms, stable=True).indices
    keep = torch.zeros(allrms.numel(), dtype=torch.bool)
    keep[order[: kept_count(allrms.numel(), k)]] = True
    return list(keep.split([r.numel() for r in rms]))


@pytest.mark.parametrize("granularity", ["filter", "channel"])
@pytest.mark.parametrize("k", [0.1, 0.3, 0.5])
def test_global_structured_ranks_groups_over_all_layers_by_their_rms(granularity, k):
    sp = attach(convs(), k, "global", granularity, scales=(1.0, 0.6, 2.5))
    expected = reference_masks(sp, k, granularity)
    total = sum(e.numel() for e in expected)
    kept_groups = 0
    for layer, want in zip(sp.layers, expected, strict=True):
        per_group = groups_of(layer.mask, granularity).sum(1)
        size = layer.numel // per_group.numel()
        assert set(per_group.tolist()) <= {0.0, float(size)}, layer.path  # whole groups only
        assert torch.equal(per_group > 0, want), layer.path
        kept_groups += int((per_group > 0).sum())
    assert kept_groups == kept_count(total, k)


def test_global_scope_is_not_layer_scope_for_filters():
    # Layer 0's scores are 10x everyone else's: over the whole network all of its 8 filters are
    # the strongest; kept_count(36, 0.5) = 18 leaves 10 for the other two layers together.
    layer_sp = attach(convs(), 0.5, "layer", "filter", scales=(10.0, 1.0, 1.0))
    global_sp = attach(convs(), 0.5, "global", "filter", scales=(10.0, 1.0, 1.0))

    def kept_filters(sp):
        return [int((groups_of(l.mask, "filter").sum(1) > 0).sum()) for l in sp.layers]

    assert kept_filters(layer_sp) == [4, 8, 6]
    kept = kept_filters(global_sp)
    assert kept[0] == 8 and sum(kept) == 18


def test_rms_not_the_plain_norm_decides_between_layers():
    # Every score is 1: the RMS of every filter is 1, but a 72-weight filter's L2 norm is
    # larger than a 27-weight one's. With the RMS all filters tie and the first ones in layer
    # order are kept (ties by index); ranked by the plain norm, layer 1 would go first.
    sp = Sparsifier.attach(convs(), TopK(0.25, "global", "filter"))
    with torch.no_grad():
        for layer in sp.layers:
            layer.scores.fill_(1.0)
    sp.refresh(force=True)
    per_layer = [int((groups_of(l.mask, "filter").sum(1) > 0).sum()) for l in sp.layers]
    assert per_layer == [8, 1, 0]  # kept_count(36, 0.25) = 9 filters, in layer order


def test_magnitude_global_filter_ticket_records_the_right_kept_counts():
    from ticketkit.artifacts.ticket import Ticket
    from ticketkit.plugin import Setup
    from ticketkit.plugins.methods.magnitude import Magnitude

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, bias=False),
        nn.ReLU(),
        nn.Conv2d(6, 10, 3, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(10, 4),
    )
    with torch.no_grad():
        model[2].weight.mul_(3.0)  # a layer of larger weights: global keeps more of it
    dense = {path: m.weight.detach().clone() for path, m in (("0", model[0]), ("2", model[2]))}
    method = Magnitude(None, Setup(k=0.4, scope="global", granularity="filter"))
    method.prepare(model)
    method.finish(model)
    ticket = Ticket.from_model(model, scope="global", granularity="filter", k=0.4)
    layers = ticket.meta["layers"]
    assert set(layers) == {"0", "2"}  # the linear classifier stays dense
    rms = {p: w.abs().flatten(1).square().mean(1).sqrt() for p, w in dense.items()}
    allrms = torch.cat([rms["0"], rms["2"]])
    threshold = torch.sort(allrms, descending=True).values[kept_count(16, 0.4) - 1]
    for path, w in dense.items():
        filters = int((rms[path] >= threshold).sum())
        assert layers[path]["kept"] == filters * w[0].numel(), path
        per_filter = ticket.masks()[path].flatten(1).sum(1)
        assert set(per_filter.tolist()) <= {0, w[0].numel()}
    kept_filters = sum(layers[p]["kept"] // math.prod(layers[p]["shape"][1:]) for p in layers)
    assert kept_filters == kept_count(16, 0.4)
    # layer scope would keep kept_count(10, 0.4) = 4 of layer 2's filters; globally its larger
    # weights win more of the network's 6
    assert layers["2"]["kept"] // 54 > kept_count(10, 0.4)
