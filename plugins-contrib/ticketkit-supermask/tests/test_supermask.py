"""Tests of the supermask plugin, using only ticketkit's public API."""

import math

import torch
from ticketkit_supermask import Supermask, SupermaskOptions
from ticketkit_supermask.rule import sigmoid_grad

import ticketkit
from ticketkit.plugin import Setup
from ticketkit.training.data import InputSpec


def model_with_supermask(k=0.3):
    torch.manual_seed(0)
    model = ticketkit.build_model(
        "mlp", InputSpec(1, 8, 8, 10), bias=False, affine_bn=False, width=0.2
    )
    method = Supermask(SupermaskOptions(), Setup(k=k))
    method.prepare(model)
    return model, method


def test_registered_through_the_entry_point():
    from ticketkit.registry import registry

    (entry,) = [e for e in registry().entries("methods") if e.spec.name == "supermask"]
    assert entry.distribution == "ticketkit-supermask"


def test_training_masks_are_sampled_and_eval_masks_are_exact_top_k():
    model, method = model_with_supermask(0.3)
    x = torch.randn(4, 1, 8, 8)
    model.train()
    model(x)
    first = [layer.mask.clone() for layer in method.sparsifier.layers]
    model(x)
    assert any(not torch.equal(a, layer.mask) for a, layer in zip(first, method.sparsifier.layers))
    model.eval()
    model(x)
    for layer in method.sparsifier.layers:
        keep = layer.numel - math.floor((1 - 0.3) * layer.numel)
        assert int(layer.mask.sum()) == keep
        kept = layer.scores.detach()[layer.mask.bool()]
        dropped = layer.scores.detach()[~layer.mask.bool()]
        assert kept.min() >= dropped.max()  # ranked by s itself, not |s|


def test_gradient_is_straight_through_the_bernoulli_sample():
    model, method = model_with_supermask()
    layer = method.sparsifier.layers[1]
    weight = layer.module.weight
    weight.retain_grad()
    weight.square().sum().backward()
    s = layer.scores.detach()
    expected = weight.grad * layer.weight * torch.sigmoid(s) * (1 - torch.sigmoid(s))
    assert torch.allclose(layer.scores.grad, expected)
    assert torch.allclose(sigmoid_grad(torch.zeros(3)), torch.full((3,), 0.25))


def test_finish_freezes_the_deterministic_mask():
    model, method = model_with_supermask(0.5)
    model.train()
    method.finish(model)
    for layer in method.sparsifier.layers:
        assert int(layer.mask.sum()) == layer.numel - math.floor(0.5 * layer.numel)
