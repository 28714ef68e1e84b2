"""The Bop optimizer plugin: the flip rule on hand-computed cases, the adaptivity-rate decay
by epoch, the split of parameters by role (masked weights to Bop, the rest to SGD), and a
ticket fine-tuned with Bop that keeps its mask and the magnitudes of its weights."""

from __future__ import annotations

import pytest
import torch

from ticketkit import jobs, testing
from ticketkit.artifacts.ticket import Ticket
from ticketkit.plugins.optimizers.bop_optim import Bop
from ticketkit.runs.config import FinetuneConfig, resolve
from ticketkit.training.loop import OptimizerFactory


def step(opt: Bop, p: torch.Tensor, grad: list[float]) -> None:
    p.grad = torch.tensor(grad)
    opt.step()


def test_flip_needs_the_threshold_and_the_sign_of_the_moving_average():
    # powers of two: every m below is exact in float32
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0, 2.0, -3.0, 0.5, 0.0]))
    opt = Bop([w], ar=0.5, tau=0.125)
    step(opt, w, [1.0, 1.0, -1.0, -0.125, 0.5, 1.0])
    assert opt.state[w]["m"].tolist() == [0.5, 0.5, -0.5, -0.0625, 0.25, 0.5]  # m = ar g
    # 0: |m| > tau, same sign -> flip; 1, 2: opposite signs; 3: under tau; 4: flip; 5: w = 0
    assert w.tolist() == [-1.0, -1.0, 2.0, -3.0, -0.5, 0.0]
    step(opt, w, [0.0, 0.0, 0.0, -0.1875, 0.0, 0.0])  # m_3 = 0.5 m_3 + 0.5 g = -tau: no flip
    assert opt.state[w]["m"][3].item() == -0.125
    assert w.tolist() == [-1.0, -1.0, 2.0, -3.0, -0.5, 0.0]  # magnitudes never change
    step(opt, w, [0.0, 0.0, 0.0, -1.0, 0.0, 0.0])  # m_3 = -0.5625: flips to +3
    assert w.tolist() == [-1.0, -1.0, 2.0, 3.0, -0.5, 0.0]


def test_ar_decays_every_n_epochs_of_the_group():
    w = torch.nn.Parameter(torch.ones(2))
    opt = Bop([w], ar=1e-3, tau=1e-6, ar_decay_ratio=0.15, ar_decay_every=45)
    group = opt.param_groups[0]
    rates = {}
    for epoch in (0, 44, 45, 89, 90, 135):
        group["epoch"] = epoch
        rates[epoch] = Bop.rate(group)
    assert rates[0] == rates[44] == 1e-3
    assert rates[45] == rates[89] == pytest.approx(1.5e-4)
    assert rates[90] == pytest.approx(2.25e-5) and rates[135] == pytest.approx(3.375e-6)
    opt2 = Bop([w], ar=0.5, tau=10.0, ar_decay_ratio=0.5, ar_decay_every=1)
    opt2.param_groups[0]["epoch"] = 1  # ar = 0.25 in the second epoch
    step(opt2, w, [1.0, -2.0])
    assert opt2.state[w]["m"].tolist() == [0.25, -0.5]


def test_masked_weights_go_to_bop_and_the_rest_steps_with_sgd(tmp_path):
    cfg = testing.prune_config(
        "snip",
        tmp_path,
        optimizer="bop",
        optimizer_options={"ar": 0.5, "tau": 0.1},
        lr=0.1,
        momentum=0.0,
        weight_decay=0.0,
    )
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    b = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    optimizers = OptimizerFactory(cfg).by_role({"weights": [w], "other": [b]})
    assert isinstance(optimizers["main"], Bop) and optimizers["main"].param_groups[0]["params"] == [
        w
    ]
    sgd = optimizers["sgd"]
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["params"][0] is b
    w.grad, b.grad = torch.tensor([1.0, 1.0]), torch.tensor([1.0, -2.0])
    for opt in optimizers.values():
        opt.step()
    assert w.tolist() == [-1.0, -2.0]  # Bop: the first flipped, magnitudes kept
    assert b.tolist() == pytest.approx([0.9, 1.2])  # SGD: b - lr * g


def test_finetune_with_bop_keeps_the_mask_and_the_magnitudes(tmp_path, monkeypatch):
    ticket = jobs.prune(testing.prune_config("random", tmp_path / "prune", epochs=1)).path
    rates = []
    original = Bop.rate

    def recording(group):
        rates.append((group.get("epoch"), original(group)))
        return original(group)

    monkeypatch.setattr(Bop, "rate", staticmethod(recording))
    cfg = resolve(
        FinetuneConfig,
        {
            "input": str(ticket),
            "dataset": "digits",
            "epochs": 2,
            "batch_size": 64,
            "optimizer": "bop",
            "optimizer_options": {
                "ar": 0.2,
                "tau": 1e-6,
                "ar_decay_ratio": 0.5,
                "ar_decay_every": 1,
            },
            "eval_every": 0,
            "out": str(tmp_path / "finetune"),
        },
    )
    tuned = jobs.finetune(cfg).path
    before, after = Ticket.read(ticket), Ticket.read(tuned)
    flips = 0
    for path, mask in before.masks().items():
        assert torch.equal(after.masks()[path], mask), path
        w0, w1 = before.weights()[path], after.weights()[path]
        assert torch.equal(w1.abs(), w0.abs()), path  # every kept weight is +-|w0|, pruned 0
        flips += int((torch.sign(w1) != torch.sign(w0)).sum())
    assert flips > 0  # Bop did flip signs
    state0 = {k: v for k, v in before.tensors.items() if k.startswith("state.")}
    assert any(not torch.equal(v, after.tensors[k]) for k, v in state0.items() if "bias" in k)
    assert {e for e, _ in rates} == {0, 1}
    assert {r for e, r in rates if e == 0} == {0.2} and {r for e, r in rates if e == 1} == {0.1}
