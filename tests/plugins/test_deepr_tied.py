"""`deepr` and `tied`, the DSR paper's other baselines, by their defining properties: in DeepR a
kept weight whose sign flips dies and its layer is refilled at random (every layer at its
budget after every step, noise only on kept weights); tied layers train exactly K = N -
floor((1-k) N) values each, every copy of a bank entry equal after any optimizer step.
Resuming bit for bit: tests/plugins/test_method_contract.py (every registered method)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.plugins.test_rewire_methods import SIZES, K, run, watch
from ticketkit import Context, InputSpec, Setup, build_model, kept_count
from ticketkit.artifacts.ticket import Ticket
from ticketkit.masks import masked_layers
from ticketkit.plugins.methods.deepr import Deepr, DeeprOptions
from ticketkit.plugins.methods.tied import Tied, TiedOptions

DIGITS = InputSpec(1, 8, 8, 10)


def prepared(method):
    """`method` prepared on the digits MLP with a data-free context (4 epochs of 10 steps)."""
    method.ctx = Context(input=DIGITS, device="cpu", steps_per_epoch=10, epochs=4)
    torch.manual_seed(0)
    model = build_model("mlp", DIGITS)
    method.prepare(model)
    return model


def steps(model, opt, n):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 1, 8, 8, generator=generator)
    y = torch.randint(10, (32,), generator=generator)
    model.train()
    for _ in range(n):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_deepr_holds_every_layer_at_its_budget_after_every_step(monkeypatch, tmp_path):
    seen = watch(monkeypatch)  # also: pruned weights zero, no momentum at changed positions
    run("deepr", tmp_path, options={"every": "1", "temperature": "1e-3"})
    budget = {path: kept_count(n, K) for path, n in SIZES.items()}
    assert seen and all(entry["counts"] == budget for entry in seen)
    assert sum(entry["changed"] for entry in seen) > 0  # weights died and were regrown


def flip_and_rewire(seed: int):
    """One DeepR check after 20 kept weights of the first layer had their sign flipped (no
    noise, no L1, so nothing else flips); the regrowth drawn on a generator seeded `seed`."""
    method = Deepr(DeeprOptions(temperature=0.0, l1=0.0), Setup(k=0.3, seed=0))
    model = prepared(method)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    steps(model, opt, 2)
    layers = masked_layers(model)
    method.signs = [torch.sign(layer.weight.detach()) for layer in layers]
    first = layers[0]
    flipped = first.mask.flatten().nonzero().flatten()[::97][:20]
    with torch.no_grad():
        first.weight.view(-1)[flipped] *= -1
    before = [layer.mask.clone() for layer in layers]
    method._rng.manual_seed(seed)
    method.ctx.step = 1
    method.after_step(model, {"main": opt})
    return layers, before, flipped, opt


def test_deepr_kills_a_weight_whose_sign_flips_and_refills_the_layer_at_random():
    layers, before, flipped, opt = flip_and_rewire(1)
    for i, (layer, old) in enumerate(zip(layers, before)):
        assert int(layer.mask.sum()) == int(old.sum())
        dropped, grown = (old != 0) & (layer.mask == 0), (old == 0) & (layer.mask != 0)
        expected = 20 if i == 0 else 0
        assert int(dropped.sum()) == int(grown.sum()) == expected
        momentum = opt.state[layer.weight]["momentum_buffer"]
        assert not layer.weight[dropped | grown].any() and not momentum[dropped | grown].any()
    assert set(layers[0].mask.flatten().eq(0).nonzero().flatten().tolist()) >= set(flipped.tolist())
    grown_a = ((before[0] == 0) & (layers[0].mask != 0)).flatten().nonzero().flatten()
    layers_b, before_b, _, _ = flip_and_rewire(2)
    grown_b = ((before_b[0] == 0) & (layers_b[0].mask != 0)).flatten().nonzero().flatten()
    assert not torch.equal(grown_a, grown_b)  # drawn at random, not by a fixed rule


def test_deepr_noise_reaches_only_kept_weights_with_std_sqrt_2_lr_t():
    method = Deepr(DeeprOptions(every="1000", temperature=0.5, l1=0.0), Setup(k=0.3, seed=0))
    model = prepared(method)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    layer = masked_layers(model)[0]
    w = layer.weight.detach().clone()
    method.ctx.step = 1
    method.after_step(model, {"main": opt})
    change = layer.weight.detach() - w
    kept = layer.mask != 0
    assert not change[~kept].any()
    assert change[kept].std().item() == pytest.approx(math.sqrt(2 * 0.1 * 0.5), rel=0.05)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_tied_layers_train_exactly_k_n_values(optimizer):
    method = Tied(None, Setup(k=0.3, seed=0))
    model = prepared(method)
    layers = masked_layers(model)
    initial = [layer.weight.detach().clone() for layer in layers]
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps(model, opt, 5)
    for layer, index, w0 in zip(layers, method.index, initial):
        size = kept_count(layer.numel, 0.3)
        uses = torch.bincount(index, minlength=size)
        assert len(uses) == size and {layer.numel // size, -(-layer.numel // size)} >= set(
            uses.tolist()
        )
        flat = layer.weight.detach().flatten()
        bank = torch.zeros(size).index_copy_(0, index, flat)  # one copy of each entry
        assert torch.equal(flat, bank[index])  # every copy of an entry holds the same value
        assert not torch.equal(flat, w0.flatten()) and bool(layer.mask.all())


@pytest.mark.parametrize("gradient", ["sum", "mean"])
def test_tied_gradient_is_the_bank_gradient(gradient):
    """Every copy's gradient is dL/dbank[index[i]]: the dense gradient of an untied network
    with the same weights, summed over the copies of each entry (`-o gradient=mean`: divided
    by their number)."""
    method = Tied(TiedOptions(gradient=gradient), Setup(k=0.3, seed=0))
    model = prepared(method)
    torch.manual_seed(0)
    plain = build_model("mlp", DIGITS)
    layers = masked_layers(model)
    with torch.no_grad():
        for layer in layers:
            plain.get_submodule(layer.path).weight.copy_(layer.weight)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(16) % 10
    for net in (model, plain):
        net.train()
        torch.nn.functional.cross_entropy(net(x), y).backward()
    for layer, index in zip(layers, method.index):
        dense = plain.get_submodule(layer.path).weight.grad.flatten()
        bank = torch.zeros(int(index.max()) + 1).index_add_(0, index, dense)
        if gradient == "mean":
            bank /= torch.bincount(index)
        assert torch.allclose(layer.weight.grad.flatten(), bank[index], atol=1e-6)
        assert not torch.allclose(dense, bank[index])  # the tying did change the gradient


def test_tied_rewires_through_the_job_and_records_its_values(tmp_path):
    result = run("tied", tmp_path)
    ticket = Ticket.read(result.path)
    for path, weight in ticket.weights().items():
        size = kept_count(SIZES[path], K)
        assert weight.flatten().unique().numel() <= size  # at most K values (floats may tie)
    lines = (result.path.parent / "metrics.jsonl").read_text().splitlines()
    assert f'"values": {{"1": {kept_count(SIZES["1"], K)}' in lines[0]
