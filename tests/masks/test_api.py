"""The public mask API (ticketkit.masks) and the Python API around it, as the README shows it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ticketkit
from ticketkit.masks import attach_masks, clear_optimizer_state, masked_layers


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return ticketkit.build_model("mlp", ticketkit.InputSpec(1, 8, 8, 10))


def test_pruned_weights_get_no_gradient_and_dense_grad_keeps_the_whole_one():
    model = tiny()
    attach_masks(model, dense_grad=True)
    layers = masked_layers(model)
    for layer in layers:
        layer.set_mask(torch.rand(layer.shape) < 0.3)
    x = torch.randn(4, 1, 8, 8)
    model(x).square().sum().backward()
    reference = tiny()  # the same weights, W_eff computed by hand
    effs = [
        lin.weight.detach() * layer.mask
        for lin, layer in zip([m for m in reference.modules() if isinstance(m, nn.Linear)], layers)
    ]
    for lin, eff in zip([m for m in reference.modules() if isinstance(m, nn.Linear)], effs):
        lin.weight = nn.Parameter(eff.clone())
    reference(x).square().sum().backward()
    refs = [m.weight.grad for m in reference.modules() if isinstance(m, nn.Linear)]
    for layer, ref in zip(layers, refs):
        assert torch.allclose(layer.dense_grad, ref, atol=1e-5)  # pruned positions included
        assert torch.allclose(layer.weight.grad, ref * layer.mask, atol=1e-5)
        assert bool((layer.weight.grad[layer.mask == 0] == 0).all())


def test_binary_layers_pass_the_gradient_straight_through_only_when_asked():
    for through in (False, True):
        model = tiny()
        attach_masks(model, binary=True, straight_through=through)
        model(torch.randn(4, 1, 8, 8)).square().sum().backward()
        grads = [layer.weight.grad for layer in masked_layers(model)]
        assert all((g is not None) == through for g in grads)
        if through:
            layer = masked_layers(model)[0]
            assert float(layer.weight.grad.abs().sum()) > 0


def test_set_mask_changes_the_forward_and_checks_the_shape():
    model = tiny()
    attach_masks(model)
    layer = masked_layers(model)[0]
    x = torch.randn(2, 1, 8, 8)
    before = model(x)
    layer.set_mask(torch.zeros(layer.shape))
    assert not torch.equal(model(x), before)
    assert float(layer.module.weight.detach().abs().sum()) == 0
    with pytest.raises(ValueError, match="mask of shape"):
        layer.set_mask(torch.ones(3))


def test_clear_optimizer_state_zeroes_the_dropped_positions_only():
    model = tiny()
    attach_masks(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 1, 8, 8)).square().sum().backward()
    opt.step()
    layer = masked_layers(model)[0]
    where = torch.rand(layer.shape) < 0.5
    momentum = opt.state[layer.weight]["momentum_buffer"]
    kept = momentum[~where].clone()
    clear_optimizer_state([opt], layer.weight, where)
    assert bool((momentum[where] == 0).all()) and torch.equal(momentum[~where], kept)


def test_save_ticket_on_a_model_masked_with_the_public_api(tmp_path):
    model = tiny()
    with pytest.raises(ValueError, match="attach_masks"):
        ticketkit.save_ticket(model, tmp_path / "none.safetensors")
    attach_masks(model)
    for layer in masked_layers(model):
        layer.set_mask(layer.weight.abs() > layer.weight.abs().median())
    path = ticketkit.save_ticket(model, tmp_path / "t.safetensors", dataset="digits")
    x = torch.randn(3, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(ticketkit.load_ticket(path)(x), model(x))
    ticket = ticketkit.Ticket.read(path)
    assert ticket.meta["arch"] == "mlp" and 0.45 < float(ticket.meta["k"]) < 0.55


def test_the_public_names_are_listed():
    listed = dir(ticketkit)
    for name in ("InputSpec", "save_ticket", "WeightMethod", "attach_masks", "Stage", "Context"):
        assert name in listed and getattr(ticketkit, name) is not None
