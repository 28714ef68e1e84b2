"""The sparse-training methods of `ticketkit rewire`, checked after every optimizer step of a
short run on the digits MLP: the kept count is the budget (per layer for static and SET, over
the network for DSR, the schedule's for gmp), no pruned weight reaches the forward pass, and a
dropped or regrown weight has no momentum left. Resuming bit for bit is checked for every
registered method by tests/plugins/test_method_contract.py."""

from __future__ import annotations

import math

import pytest
import torch

from ticketkit import jobs, kept_count, testing
from ticketkit.artifacts.ticket import Ticket
from ticketkit.masks import masked_layers
from ticketkit.plugins.methods.rewire import RewireMethod, erk_counts

SIZES = {"1": 64 * 300, "3": 300 * 100, "5": 100 * 10}  # the digits MLP's masked layers
K = 0.3


def watch(monkeypatch) -> list[dict]:
    """Record, after every `after_step`, each layer's mask and what the invariants need;
    assert on the spot that pruned weights are zero in the forward pass and in storage and
    that every position whose mask changed has no optimizer state left."""
    seen: list[dict] = []
    original = RewireMethod.after_step

    def checked(self, model, optimizers):
        layers = masked_layers(model)
        before = [layer.mask.clone() for layer in layers]
        original(self, model, optimizers)
        for layer, old in zip(layers, before):
            pruned = layer.mask == 0
            assert not layer.module.weight[pruned].any(), "a pruned weight is in the forward pass"
            assert not layer.weight[pruned].any(), "a pruned weight holds a value"
            changed = old != layer.mask
            for opt in optimizers.values():
                momentum = opt.state.get(layer.weight, {}).get("momentum_buffer")
                if momentum is not None and changed.any():
                    assert not momentum[changed].any(), "momentum left at a dropped/grown weight"
        seen.append(
            {
                "step": self.ctx.step,
                "counts": {layer.path: int(layer.mask.sum()) for layer in layers},
                "changed": sum(int((o != layer.mask).sum()) for o, layer in zip(before, layers)),
            }
        )

    monkeypatch.setattr(RewireMethod, "after_step", checked)
    return seen


def run(method: str, tmp_path, **extra):
    return jobs.rewire(testing.rewire_config(method, tmp_path, eval_every=0, **extra))


@pytest.mark.parametrize("method", ["static", "set"])
def test_static_and_set_hold_every_layer_at_its_budget(monkeypatch, tmp_path, method):
    budget = {path: kept_count(n, K) for path, n in SIZES.items()}
    seen = watch(monkeypatch)
    result = run(method, tmp_path)
    assert seen and all(entry["counts"] == budget for entry in seen)
    changes = sum(entry["changed"] for entry in seen)
    if method == "static":
        assert changes == 0
    else:  # zeta 0.3 of each layer's kept weights dropped and regrown every 5 steps, only
        updates = [e for e in seen if e["step"] % 5 == 0]
        assert changes == sum(e["changed"] for e in updates) > 0
    ticket = Ticket.read(result.path)
    assert ticket.meta["scope"] == "layer" and ticket.meta["command"] == "rewire"
    assert {p: info["kept"] for p, info in ticket.meta["layers"].items()} == budget


def test_masks_freeze_after_the_stop_epoch(monkeypatch, tmp_path):
    seen = watch(monkeypatch)
    run("set", tmp_path, options={"every": "5", "stop": "1"})
    per_epoch = len(seen) // 2
    changed = [entry["step"] for entry in seen if entry["changed"]]
    assert changed and max(changed) <= per_epoch  # epoch 1 only


def test_dsr_moves_weights_between_layers_and_holds_the_total(monkeypatch, tmp_path):
    seen = watch(monkeypatch)
    result = run("dsr", tmp_path, options={"every": "5", "n-prune": "200"})
    total = kept_count(sum(SIZES.values()), K)
    assert all(sum(entry["counts"].values()) == total for entry in seen)
    assert len({tuple(entry["counts"].values()) for entry in seen}) > 1  # densities moved
    assert Ticket.read(result.path).meta["scope"] == "global"
    history = [line for line in (result.path.parent / "metrics.jsonl").read_text().splitlines()]
    assert all('"density"' in line for line in history[:-1])  # every epoch; not the final line


@pytest.mark.parametrize("schedule", ["cubic", "exponential"])
def test_gmp_prunes_on_its_schedule_and_reaches_k_exactly_at_its_last_step(
    monkeypatch, tmp_path, schedule
):
    seen = watch(monkeypatch)
    run("gmp", tmp_path, options={"every": "10", "stop": "2", "schedule": schedule})
    steps = len(seen)  # 2 epochs of ceil(1437 / 64) steps
    n = steps // 10  # pruning steps 10, 20, ..., 10 n: the last within epoch 2
    final = {path: kept_count(size, K) for path, size in SIZES.items()}
    for entry in seen:
        j = min(entry["step"] // 10, n)
        for path, size in SIZES.items():
            if j == 0:
                expected = size
            elif j == n:
                expected = final[path]
            elif schedule == "cubic":
                expected = final[path] + math.floor((size - final[path]) * (1 - j / n) ** 3)
            else:
                expected = max(final[path], round(size * (final[path] / size) ** (j / n)))
            assert entry["counts"][path] == expected, (entry["step"], path)
    last = max(e["step"] for e in seen if e["changed"])
    assert last == 10 * n and seen[last - 1]["counts"] == final
    assert seen[last - 2]["counts"] != final  # not before its last pruning step


def test_erk_densities_sum_to_the_budget_and_favour_small_layers(tmp_path):
    shapes = [(300, 64), (100, 300), (10, 100)]
    counts = erk_counts(shapes, 0.1)
    assert sum(counts) == kept_count(sum(a * b for a, b in shapes), 0.1)
    densities = [c / (a * b) for c, (a, b) in zip(counts, shapes)]
    # ERK: density proportional to (n_in + n_out) / (n_in n_out), the last layer the densest
    assert densities[2] > densities[0] > densities[1]
    eps = counts[1] / (100 + 300)
    assert abs(counts[0] - eps * (300 + 64)) <= 2
    result = run("static", tmp_path, density="erk", k=0.1)
    ticket = Ticket.read(result.path)
    assert [info["kept"] for info in ticket.meta["layers"].values()] == counts
    assert ticket.meta["scope"] == "global" and ticket.meta["density"] == "erk"


def test_dropped_weights_lose_their_momentum_and_regrow_at_zero():
    from ticketkit import InputSpec, Setup, build_model
    from ticketkit.plugins.methods.sparse_set import Set, SetOptions
    from ticketkit.training.data import load_dataset
    from ticketkit.training.loop import bind

    method = Set(SetOptions(every="1", zeta=0.5), Setup(k=0.3, seed=0))
    bind(method, load_dataset("digits"), testing.rewire_config("set", "unused"))
    torch.manual_seed(0)
    model = build_model("mlp", InputSpec(1, 8, 8, 10))
    method.prepare(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = method.ctx.batches(1, seed=0)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    layers = masked_layers(model)
    before = [layer.mask.clone() for layer in layers]
    assert all(
        opt.state[layer.weight]["momentum_buffer"][m != 0].any() for layer, m in zip(layers, before)
    )
    method.ctx.step = 1
    method.after_step(model, {"main": opt})
    for layer, old in zip(layers, before):
        dropped, grown = (old != 0) & (layer.mask == 0), (old == 0) & (layer.mask != 0)
        assert dropped.sum() == grown.sum() == int(0.5 * old.sum())
        assert not opt.state[layer.weight]["momentum_buffer"][dropped | grown].any()
        assert not layer.weight[grown].any()
