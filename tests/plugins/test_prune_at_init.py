"""Pruning at initialisation (snip, grasp, synflow, random): the scores are the papers'
definitions, SynFlow conserves synaptic saliency and avoids layer collapse, and every method
finds a ticket through `ticketkit prune` with exact kept counts and bit-identical resumes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketkit import InputSpec, build_model, kept_count
from ticketkit.masks import attach_masks, masked_layers
from ticketkit.plugin import Context, Setup
from ticketkit.plugins.methods.at_init import float64_state
from ticketkit.plugins.methods.synflow import synaptic_saliency
from ticketkit.registry import get_method
from ticketkit.testing import check_method

TINY = InputSpec(1, 3, 3, 4)


def bias_free_relu_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(9, 12, bias=False),
        nn.ReLU(),
        nn.Linear(12, 7, bias=False),
        nn.ReLU(),
        nn.Linear(7, 4, bias=False),
    )


def method(name: str, k: float, spec: InputSpec, batches=None, **options):
    """The registered method `name`, bound to a context (batches given by the test)."""
    registered = get_method(name)
    m = registered.load()(registered.make_options(options), Setup(k=k, scope="global"))
    draw = (lambda n, seed: batches[:n]) if batches is not None else None
    m.ctx = Context(input=spec, device="cpu", steps_per_epoch=1, epochs=1, draw=draw)
    return m


def test_synflow_conserves_saliency_in_every_layer():
    """Bias-free ReLU network, no BN: each layer's summed |W * dR/dW| equals R (synaptic
    saliency is conserved), also after pruning. Without the |.| linearisation the per-layer
    sums of absolute saliencies differ."""
    model = bias_free_relu_mlp()
    attach_masks(model)
    layers = masked_layers(model)
    model.eval()
    for _ in range(2):
        state = float64_state(model, torch.device("cpu"), absolute=True)
        scores = synaptic_saliency(model, layers, state, TINY)
        sums = [float(s.sum()) for s in scores]
        ones = torch.ones(1, 1, 3, 3, dtype=torch.float64)
        r = float(torch.func.functional_call(model, state, (ones,)).sum().detach())
        for total in sums:
            assert total == pytest.approx(r, rel=1e-6), sums
        for layer, s in zip(layers, scores, strict=True):  # prune a third of each, go again
            keep = s.flatten() > s.flatten().quantile(0.33)
            layer.set_mask(keep.view(layer.shape))
    signed = float64_state(model, torch.device("cpu"), absolute=False)
    raw = synaptic_saliency(model, layers, signed, TINY)
    sums = [float(s.sum()) for s in raw]
    assert max(sums) / min(sums) > 1 + 1e-3  # the linearisation is what conserves the abs sums


def test_synflow_leaves_the_model_unchanged_and_prunes_iteratively():
    model = bias_free_relu_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    m = method("synflow", 0.2, TINY, iterations=10)
    m.prepare(model)
    layers = masked_layers(model)
    after = [layer.weight.detach() for layer in layers]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # signs kept
    n = sum(layer.numel for layer in layers)
    assert sum(int(layer.mask.sum()) for layer in layers) == kept_count(n, 0.2)
    assert model.training


def test_iterative_synflow_avoids_the_layer_collapse_of_global_magnitude():
    """conv4 at k = 1e-3 (the SynFlow paper's result): one-shot global magnitude of the random
    init empties a layer; 100 iterations of SynFlow keep at least one weight in every layer."""
    from ticketkit.models import init_weights

    spec = InputSpec(1, 8, 8, 10)
    k = 1e-3
    torch.manual_seed(0)
    model = build_model("conv4", spec)
    init_weights(model, "kaiming-normal", seed=0)  # what `prune` draws for these methods
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    flat = torch.cat([w.abs().flatten() for w in weights])
    top = torch.zeros_like(flat, dtype=torch.bool)
    top[flat.topk(kept_count(flat.numel(), k)).indices] = True
    magnitude_kept = [int(part.sum()) for part in top.split([w.numel() for w in weights])]
    assert 0 in magnitude_kept, magnitude_kept
    at_init = method("magnitude-init", k, spec)  # the method keeps exactly those weights
    at_init.prepare(model)
    assert [int(layer.mask.sum()) for layer in masked_layers(model)] == magnitude_kept
    model = build_model("conv4", spec)
    init_weights(model, "kaiming-normal", seed=0)

    m = method("synflow", k, spec)
    m.prepare(model)
    synflow_kept = [int(layer.mask.sum()) for layer in masked_layers(model)]
    assert min(synflow_kept) >= 1, synflow_kept
    assert sum(synflow_kept) == kept_count(flat.numel(), k)


def tiny_data():
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(5, 1, 3, 3, generator=g), torch.randint(0, 4, (5,), generator=g))
        for _ in range(2)
    ]


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(9, 5), nn.ReLU(), nn.Linear(5, 4))


def independent_loss(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, shapes, temperature=1.0):
    """The tiny net's loss as a function of one flat float64 vector of its weights (biases
    fixed), written out by hand: nothing of ticketkit is involved."""
    net = tiny_net().double()
    w1, w2 = flat.split([math.prod(s) for s in shapes])
    h = F.relu(F.linear(x.double().flatten(1), w1.view(shapes[0]), net[1].bias))
    logits = F.linear(h, w2.view(shapes[1]), net[3].bias)
    return F.cross_entropy(logits / temperature, y)


def scores_of(name: str, batches, **options) -> list[torch.Tensor]:
    model = tiny_net()
    m = method(name, 0.5, TINY, batches, **options)
    attach_masks(model)
    layers = masked_layers(model)
    model.eval()
    return m.score(model, layers, float64_state(model, torch.device("cpu")))


def test_snip_scores_are_the_summed_connection_sensitivities():
    batches = tiny_data()
    shapes = [(5, 9), (4, 5)]
    flat = torch.cat([m.weight.detach().double().flatten() for m in tiny_net()[1::2]])
    expected = torch.zeros_like(flat)
    for x, y in batches:
        g = torch.autograd.functional.jacobian(
            lambda v, x=x, y=y: independent_loss(v, x, y, shapes), flat
        )
        expected += (g * flat).abs()
    got = torch.cat([s.flatten() for s in scores_of("snip", batches, prune_batches=2)])
    assert torch.allclose(got, expected, rtol=1e-9, atol=1e-15)


def test_grasp_scores_are_w_times_hessian_gradient_at_temperature_200():
    batches = tiny_data()
    shapes = [(5, 9), (4, 5)]
    flat = torch.cat([m.weight.detach().double().flatten() for m in tiny_net()[1::2]])

    def total_loss(v):
        return sum(independent_loss(v, x, y, shapes, temperature=200.0) for x, y in batches)

    g = torch.autograd.functional.jacobian(total_loss, flat)
    hessian = torch.autograd.functional.hessian(total_loss, flat)
    expected = flat * (hessian @ g)
    got = torch.cat([s.flatten() for s in scores_of("grasp", batches, prune_batches=2)])
    assert expected.abs().max() > 0
    assert torch.allclose(got, expected, rtol=1e-7, atol=1e-18)
    # GraSP keeps the largest W * Hg (the paper removes the largest -W * Hg)
    model = tiny_net()
    m = method("grasp", 0.5, TINY, batches, prune_batches=2)
    m.prepare(model)
    kept = torch.cat([layer.mask.flatten() for layer in masked_layers(model)]).bool()
    assert expected[kept].min() >= expected[~kept].max()


@pytest.mark.parametrize("name", ["snip", "grasp", "synflow", "random", "magnitude-init"])
def test_method_finds_a_ticket_and_resumes_exactly(name, tmp_path):
    check_method(name, tmp_path)


def test_a_resumed_run_takes_its_masks_from_the_checkpoint_without_scoring(tmp_path, monkeypatch):
    from ticketkit import jobs
    from ticketkit.artifacts.ticket import Ticket
    from ticketkit.plugins.methods.synflow import SynFlow
    from ticketkit.testing import interrupted_after_first_checkpoint, prune_config

    calls = []
    score = SynFlow.score
    monkeypatch.setattr(SynFlow, "score", lambda *a: calls.append(1) or score(*a))
    full = jobs.prune(prune_config("synflow", tmp_path / "full", None))
    iterations = len(calls)
    assert iterations > 1
    with pytest.raises(KeyboardInterrupt), interrupted_after_first_checkpoint():
        jobs.prune(prune_config("synflow", tmp_path / "cut", None))
    assert len(calls) == 2 * iterations
    resumed = jobs.prune(prune_config("synflow", tmp_path / "cut", None))
    assert len(calls) == 2 * iterations  # no third scoring
    a, b = Ticket.read(full.path), Ticket.read(resumed.path)
    assert a.meta["payload_sha256"] == b.meta["payload_sha256"]


def test_structured_granularity_is_a_usage_error(cli, tmp_path):
    r = cli(
        "prune",
        "--method",
        "snip",
        "--arch",
        "mlp",
        "--dataset",
        "digits",
        "--k",
        "0.5",
        "--granularity",
        "filter",
        "--out",
        tmp_path,
    )
    assert r.code == 2 and r.err.startswith("Error: pruning at initialisation scores single"), r.err
