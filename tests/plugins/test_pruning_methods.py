"""magnitude, HYDRA and BiP on a pretrained network: exact kept counts and structured masks."""

import math

import pytest
import torch

from ticketkit import jobs
from ticketkit.artifacts.ticket import Ticket
from ticketkit.masks.select import kept_count
from ticketkit.runs.config import PruneConfig, resolve


def prune(source, tmp_path, **kw):
    base = {"epochs": 1, "subset": 500, "eval_every": 0, "out": str(tmp_path), "input": str(source)}
    return Ticket.read(jobs.prune(resolve(PruneConfig, {**base, **kw})).path)


@pytest.mark.slow
def test_hydra_keeps_k_in_every_layer(pretrained_resnet20, tmp_path):
    t = prune(pretrained_resnet20, tmp_path, method="hydra", k=0.1)
    assert t.meta["scope"] == "layer"
    for info in t.meta["layers"].values():
        assert info["kept"] == kept_count(math.prod(info["shape"]), 0.1)


@pytest.mark.slow
def test_bip_keeps_k_globally_with_free_layer_ratios(pretrained_resnet20, tmp_path):
    t = prune(pretrained_resnet20, tmp_path, method="bip", k=0.1)
    assert t.meta["scope"] == "global"
    layers = t.meta["layers"].values()
    total = sum(math.prod(i["shape"]) for i in layers)
    assert sum(i["kept"] for i in layers) == kept_count(total, 0.1)
    ratios = {round(i["kept"] / math.prod(i["shape"]), 3) for i in layers}
    assert len(ratios) > 3  # the algorithm chose per-layer ratios


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bip", "magnitude"])
def test_filter_granularity_zeroes_whole_filters_only(pretrained_resnet20, tmp_path, method):
    t = prune(pretrained_resnet20, tmp_path, method=method, k=0.25, granularity="filter")
    masks = t.masks()
    assert "fc" not in masks  # linear layers stay dense under structured granularities
    kept = []
    for path, mask in masks.items():
        per_filter = mask.flatten(1).sum(1)
        full = mask[0].numel()
        assert set(per_filter.tolist()) <= {0, full}, path
        kept.append((int((per_filter == full).sum()), mask.shape[0]))
    if t.meta["scope"] == "global":  # bip: filters ranked over the whole network
        assert sum(k for k, _ in kept) == kept_count(sum(n for _, n in kept), 0.25)
    else:
        assert all(k == kept_count(n, 0.25) for k, n in kept)
    model = t.build()
    conv = model.layer1[0].conv1
    zero = conv.weight.flatten(1).abs().sum(1) == 0
    assert int(zero.sum()) == conv.weight.shape[0] - kept[1][0]


def test_channel_granularity_zeroes_input_channels(pretrained_resnet20, tmp_path):
    t = prune(pretrained_resnet20, tmp_path, method="magnitude", k=0.5, granularity="channel")
    for path, mask in t.masks().items():
        per_channel = mask.transpose(0, 1).flatten(1).sum(1)
        assert set(per_channel.tolist()) <= {0, mask.shape[0] * mask[0, 0].numel()}


def test_magnitude_is_one_shot_and_keeps_the_largest_weights(pretrained_digits_mlp, tmp_path):
    from ticketkit.artifacts.bundle import Checkpoint

    t = prune(pretrained_digits_mlp, tmp_path, method="magnitude", k=0.3, scope="global", epochs=5)
    assert t.meta["config"]["epochs"] == 0
    dense = Checkpoint.read(pretrained_digits_mlp).tensors
    kept, dropped = [], []
    for path, mask in t.masks().items():
        w = dense[f"{path}.weight"].abs()
        kept.append(w[mask])
        dropped.append(w[~mask])
    assert torch.cat(kept).min() >= torch.cat(dropped).max()


def test_magnitude_notes_ignored_epochs_only_when_given(cli, pretrained_digits_mlp, tmp_path):
    args = (
        "prune",
        pretrained_digits_mlp,
        "--method",
        "magnitude",
        "--k",
        "0.5",
        "--out",
        tmp_path,
    )
    quiet = cli(*args)
    assert quiet.code == 0 and "ignored" not in quiet.err, quiet.err
    noted = cli(*args, "--epochs", "3")
    assert "magnitude is one-shot: --epochs is ignored" in noted.err
    assert noted.out == quiet.out  # the same run: epochs does not reach the config


def test_bip_implicit_gradient_term_is_applied(pretrained_digits_mlp):
    """With ig = c, the score gradient is g*W*sign(s) - c*m*g^2 (the paper's bi-linear IG)."""
    from ticketkit.artifacts.bundle import Checkpoint
    from ticketkit.plugin import Setup
    from ticketkit.plugins.methods.bip import BiP, BiPOptions

    model = Checkpoint.read(pretrained_digits_mlp).build().train()
    method = BiP(BiPOptions(ig=0.5), Setup(k=0.3, scope="global"))
    method.prepare(model)
    layer = method.sparsifier.layers[0]
    weight = layer.module.weight
    weight.retain_grad()
    weight.square().sum().backward()
    g, s = weight.grad, layer.scores.detach()
    expected = g * layer.weight.detach() * torch.sign(s) - 0.5 * layer.mask * g * g
    assert torch.allclose(layer.scores.grad, expected)


def test_bip_alternates_weight_and_score_steps(pretrained_digits_mlp):
    from ticketkit.artifacts.bundle import Checkpoint
    from ticketkit.plugin import Setup
    from ticketkit.plugins.methods.bip import BiP, BiPOptions
    from ticketkit.training.loop import OptimizerFactory

    model = Checkpoint.read(pretrained_digits_mlp).build().train()
    method = BiP(BiPOptions(), Setup(k=0.3, scope="global"))
    method.prepare(model)
    opts = method.optimizers(model, OptimizerFactory(PruneConfig(lr=0.1)))
    assert (
        opts["weights"].param_groups[0]["lr"] == 0.01
        and opts["scores"].param_groups[0]["lr"] == 0.1
    )
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    layer = method.sparsifier.layers[0]
    w0, s0 = layer.weight.detach().clone(), layer.scores.detach().clone()
    method.train_step(model, (x, y), opts)  # lower level: weights move, scores do not
    assert not torch.equal(layer.weight, w0) and torch.equal(layer.scores.detach(), s0)
    w1 = layer.weight.detach().clone()
    method.train_step(model, (x, y), opts)  # upper level: scores move, weights do not
    assert torch.equal(layer.weight.detach(), w1) and not torch.equal(layer.scores.detach(), s0)
