"""An empty filter's channel is part of the filter (masks/channels.py): its BatchNorm channel is
found, held at exactly 0 in every forward while training, and zeroed in the parameters."""

from __future__ import annotations

import pytest
import torch

from ticketkit import build_model
from ticketkit.inputs import InputSpec
from ticketkit.masks import attach_masks, masked_layers
from ticketkit.masks.channels import (
    EmptyChannels,
    empty_filters,
    filter_outputs,
    zero_empty_channels,
)
from ticketkit.plugin import structured_exclusions

SPEC = InputSpec(1, 28, 28, 10)
X = torch.zeros(2, 1, 28, 28)


def half_empty(arch: str, **options) -> torch.nn.Module:
    """`arch` with BN statistics off their defaults (a train-mode pass) and half of every conv's
    filters masked, as a filter ticket at k = 0.5."""
    torch.manual_seed(0)
    model = build_model(arch, SPEC, **options)
    with torch.no_grad():
        model.train()(torch.randn(16, 1, 28, 28))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.affine:
                m.bias.uniform_(0.5, 1.0)  # positive shifts: a ReLU would pass the constant
    attach_masks(model, exclude=structured_exclusions("filter"))
    for layer in masked_layers(model):
        mask = torch.ones(layer.shape)
        mask[::2] = 0
        layer.set_mask(mask)
    return model


def test_each_conv_is_paired_with_the_batchnorm_it_feeds():
    resnet = dict(filter_outputs(half_empty("resnet20", width=0.25), X)[i][::-1] for i in range(3))
    assert resnet == {
        "conv1": "bn1",
        "layer1.0.conv1": "layer1.0.bn1",
        "layer1.0.conv2": "layer1.0.bn2",
    }
    vgg = filter_outputs(half_empty("vgg11-bn", width=0.125), X)
    assert vgg[:2] == [("0.1", "0.0"), ("0.5", "0.4")]  # features.conv -> its BatchNorm
    assert len(vgg) == 8 and all(norm is not None for norm, _ in vgg)


def _channel_outputs(model: torch.nn.Module, pairs) -> dict[str, torch.Tensor]:
    """Each BatchNorm's output on a random batch, in the model's current mode."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(norm).register_forward_hook(
            lambda _m, _a, out, norm=norm: seen.__setitem__(norm, out.detach())
        )
        for norm, _ in pairs
    ]
    with torch.no_grad():
        model(torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("affine", [True, False])
def test_zeroed_parameters_make_the_channels_exactly_zero_in_train_and_eval(affine):
    model = half_empty("resnet20", width=0.25, affine_bn=affine)
    pairs = filter_outputs(model, X)
    before = _channel_outputs(model.eval(), pairs)
    assert any(bool(out[:, ::2].abs().amax() > 0) for out in before.values())  # the gap
    assert zero_empty_channels(model, pairs) == sum(
        layer.shape[0] // 2 for layer in masked_layers(model)
    )
    for mode in (False, True):
        outs = _channel_outputs(model.train(mode), pairs)
        for norm, out in outs.items():
            assert bool((out[:, ::2] == 0).all()), (norm, mode)
            assert bool((out[:, 1::2] != 0).any())  # kept channels untouched
    bn = model.get_submodule("layer1.0.bn1")
    if affine:
        assert bool((bn.weight[::2] == 0).all() and (bn.bias[::2] == 0).all())
    assert bool((bn.running_mean[::2] == 0).all())  # non-affine: what makes eval's output 0


def test_hooks_zero_the_forward_and_pass_the_gradient_straight_through():
    model = half_empty("resnet20", width=0.25)
    pairs = filter_outputs(model, X)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    masked_layers(model)[0].set_mask(torch.ones(masked_layers(model)[0].shape))  # the stem
    layer = masked_layers(model)[2]  # layer1.0.conv2, a score-free plain mask

    def grads() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model.train()(x).square().sum().backward()
        bn = model.get_submodule("layer1.0.bn2")  # feeds the residual sum: no ReLU before it
        return layer.weight.grad.clone(), bn.bias.grad.clone()

    weight_before, bias_before = grads()
    hooks = EmptyChannels(model, pairs)
    outs = _channel_outputs(model.eval(), pairs)
    assert all(bool((out[:, ::2] == 0).all()) for norm, out in outs.items() if norm != "bn1")
    weight_after, bias_after = grads()
    # kept filters' gradients change (downstream values changed); empty ones get the mask's 0
    assert bool((weight_after[::2] == 0).all() and (weight_before[::2] == 0).all())
    assert bool((bias_after[::2] != 0).any())  # straight through: the BN channel still learns
    assert not torch.equal(bias_before, bias_after)
    hooks.remove()
    assert any(
        bool(out[:, ::2].abs().amax() > 0) for out in _channel_outputs(model, pairs).values()
    )


def test_empty_filters_reads_whole_rows():
    mask = torch.ones(3, 2, 3, 3)
    mask[1] = 0
    mask[2, 0] = 0
    assert empty_filters(mask).tolist() == [False, True, False]
