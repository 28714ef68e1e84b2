"""Tests of the RigL plugin: the budget after every optimizer step of a real run, what a mask
update drops, grows and resets, the cosine drop fraction, and ticketkit's contract checks."""

import math

import pytest
import torch
from ticketkit_rigl import Rigl, RiglOptions

import ticketkit
from ticketkit import Context, InputSpec, Setup, kept_count, masked_layers
from ticketkit.errors import UsageError
from ticketkit.plugins.methods.rewire import erk_counts
from ticketkit.testing import check_method, rewire_config

DIGITS = InputSpec(1, 8, 8, 10)


def method_on_mlp(k=0.3, steps_per_epoch=10, epochs=4, **options):
    """RigL prepared on the digits-shaped MLP, with a context but no data: one batch of
    random images drives the backward passes."""
    method = Rigl(RiglOptions(**{"every": "1", **options}), Setup(k=k, seed=0))
    method.ctx = Context(input=DIGITS, device="cpu", steps_per_epoch=steps_per_epoch, epochs=epochs)
    torch.manual_seed(0)
    model = ticketkit.build_model("mlp", DIGITS)
    method.prepare(model)
    return method, model


def train_steps(model, opt, n):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 1, 8, 8, generator=generator)
    y = torch.randint(10, (32,), generator=generator)
    model.train()
    for _ in range(n):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_registered_through_the_entry_point():
    from ticketkit.registry import registry

    (entry,) = [e for e in registry().entries("methods") if e.spec.name == "rigl"]
    assert entry.distribution == "ticketkit-rigl" and entry.spec.phase == "rewire"


@pytest.mark.parametrize("density", ["uniform", "erk"])
def test_budget_is_exact_after_every_step(monkeypatch, tmp_path, density):
    """Every layer keeps its count (uniform or ERK) after every optimizer step, no pruned
    weight reaches the forward pass, and masks change only at update steps up to T."""
    from ticketkit import jobs

    seen = []
    original = Rigl.after_step

    def checked(self, model, optimizers):
        layers = masked_layers(model)
        before = [layer.mask.clone() for layer in layers]
        original(self, model, optimizers)
        for layer in layers:
            assert not layer.module.weight[layer.mask == 0].any(), "a pruned weight is used"
        changed = sum(int((b != layer.mask).sum()) for b, layer in zip(before, layers))
        seen.append((self.ctx.step, [int(layer.mask.sum()) for layer in layers], changed))

    monkeypatch.setattr(Rigl, "after_step", checked)
    cfg = rewire_config("rigl", tmp_path, eval_every=0, density=density)
    jobs.rewire(cfg)
    shapes = [(300, 64), (100, 300), (10, 100)]
    if density == "erk":
        budget = erk_counts(shapes, 0.3)
    else:
        budget = [kept_count(a * b, 0.3) for a, b in shapes]
    assert seen and all(counts == budget for _, counts, _ in seen)
    updates = [(step, changed) for step, _, changed in seen if changed]
    end = math.ceil(0.75 * 2) * len(seen) // 2  # stop 0: T at the end of epoch ceil(3/4 * 2)
    assert updates and all(step % 5 == 0 and step <= end for step, _ in updates)
    assert updates[0][1] > updates[-1][1]  # the drop fraction decays


def test_dropped_weights_lose_their_momentum_and_grown_ones_start_at_zero():
    method, model = method_on_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, opt, 2)
    layers = masked_layers(model)
    before = [layer.mask.clone() for layer in layers]
    method.ctx.step = 1
    method.after_step(model, {"main": opt})
    for layer, old in zip(layers, before):
        momentum = opt.state[layer.weight]["momentum_buffer"]
        dropped, grown = (old != 0) & (layer.mask == 0), (old == 0) & (layer.mask != 0)
        n = int(method.drop_fraction(1) * int(old.sum()))
        assert n > 0 and int(dropped.sum()) == int(grown.sum()) <= n
        assert not momentum[dropped | grown].any() and not layer.weight[dropped | grown].any()
        stayed = (old != 0) & (layer.mask != 0)
        assert momentum[stayed].any()  # only the changed positions were reset


def test_regrow_init_starts_grown_weights_at_a_draw_of_the_init():
    method, model = method_on_mlp(regrow="init", alpha=0.6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, opt, 2)
    layers = masked_layers(model)
    before = [(layer.mask.clone(), layer.weight.detach().clone()) for layer in layers]
    method.ctx.step = 1
    method.after_step(model, {"main": opt})
    first = layers[0]  # 300x64: enough grown weights to measure their scale
    for layer, (old, weight) in zip(layers, before):
        grown = (old == 0) & (layer.mask != 0)
        stayed = (old != 0) & (layer.mask != 0)
        assert grown.any() and layer.weight[grown].ne(0).all()
        assert not opt.state[layer.weight]["momentum_buffer"][grown].any()
        assert torch.equal(layer.weight[stayed], weight[stayed])  # kept (or dropped and back)
        if layer is first:
            std = layer.weight[grown].std().item()  # kaiming-normal at fan-in 64
            assert abs(std / math.sqrt(2 / 64) - 1) < 0.15


def test_drops_the_smallest_weights_and_grows_the_largest_dense_gradients():
    method, model = method_on_mlp(alpha=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_steps(model, opt, 1)
    layers = masked_layers(model)
    olds = [(layer.mask.clone() != 0, layer.weight.detach().clone()) for layer in layers]
    grads = [layer.dense_grad.clone() for layer in layers]
    method.ctx.step = 1
    method.after_step(model, {"main": opt})
    for layer, (old, w), g in zip(layers, olds, grads):
        n = int(method.drop_fraction(1) * int(old.sum()))
        # independently: the n kept weights of smallest |W|, then the n largest |g| outside
        # the survivors (a just-dropped weight may come back, as in RigL)
        kept_idx = old.flatten().nonzero().flatten()
        order = w.abs().flatten()[kept_idx].argsort(stable=True)
        survivors = old.flatten().clone()
        survivors[kept_idx[order[:n]]] = False
        outside = (~survivors).nonzero().flatten()
        top = outside[g.abs().flatten()[outside].topk(n).indices]
        expected = survivors.clone()
        expected[top] = True
        assert torch.equal(layer.mask.flatten() != 0, expected)
        assert (g.abs().flatten()[outside]).max() > 0  # pruned positions carry a gradient


def test_drop_fraction_decays_by_a_cosine_to_zero_at_the_stop_epoch():
    method, _ = method_on_mlp(steps_per_epoch=10, epochs=4)  # stop 0: T = 3 epochs = 30
    assert method.end_step() == 30
    for step, expected in [(0, 0.3), (15, 0.15), (30, 0.0), (35, 0.0)]:
        assert method.drop_fraction(step) == pytest.approx(expected, abs=1e-12)
    method.ctx.step = 31
    assert not method.active()
    stopped, _ = method_on_mlp(steps_per_epoch=10, epochs=4, stop=1, alpha=0.2)
    assert stopped.end_step() == 10 and stopped.drop_fraction(5) == pytest.approx(0.1)


def test_alpha_outside_0_1_is_a_usage_error():
    with pytest.raises(UsageError, match="alpha"):
        Rigl(RiglOptions(alpha=1.5), Setup(k=0.3))


def test_keeps_the_contract(tmp_path):
    check_method("rigl", tmp_path)  # exact kept counts, evaluation, resume bit for bit
