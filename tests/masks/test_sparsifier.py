import pytest
import torch
from torch import nn

from ticketkit.masks.rules import Fixed, TopK, init_scores
from ticketkit.masks.select import kept_count
from ticketkit.masks.sparsifier import Sparsifier, prunable_layers


class MyConv(nn.Conv2d):
    """A Conv2d subclass, as timm defines them: must be found and masked too."""


def small_net(affine: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        MyConv(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8, affine=affine),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def attach(model, k=0.3, scope="layer", granularity="unstructured", **kw):
    sp = Sparsifier.attach(model, TopK(k, scope, granularity), **kw)
    init_scores(sp.layers, "kaiming-uniform", torch.Generator().manual_seed(1))
    sp.refresh(force=True)
    return sp


def test_every_conv_and_linear_is_prunable_including_subclasses():
    paths = [p for p, _ in prunable_layers(small_net())]
    assert paths == ["0", "3", "7"]
    assert [p for p, _ in prunable_layers(small_net(), dense_first=True, dense_last=True)] == ["3"]


@pytest.mark.parametrize("k", [0.05, 0.3, 0.5, 1.0])
def test_layerwise_kept_counts_are_exact(k):
    sp = attach(small_net(), k)
    for layer in sp.layers:
        assert int(layer.mask.sum()) == kept_count(layer.numel, k)


def test_global_kept_count_is_exact_and_layers_are_free():
    model = small_net()
    sp = attach(model, 0.2, "global")
    total = sum(layer.numel for layer in sp.layers)
    assert sum(sp.kept().values()) == kept_count(total, 0.2)
    # one threshold: every kept |score| is >= every pruned |score|
    kept = torch.cat([l.scores.abs()[l.mask.bool()] for l in sp.layers])
    pruned = torch.cat([l.scores.abs()[~l.mask.bool()] for l in sp.layers])
    assert kept.min() >= pruned.max()


def test_filter_and_channel_masks_zero_whole_slices():
    sp = attach(small_net(), 0.5, granularity="filter")
    conv = sp.layers[1]
    per_filter = conv.mask.flatten(1).sum(1)
    assert set(per_filter.tolist()) <= {0.0, float(conv.mask[0].numel())}
    assert int((per_filter > 0).sum()) == kept_count(16, 0.5)
    sp2 = attach(small_net(), 0.25, granularity="channel")
    conv = sp2.layers[1]
    per_channel = conv.mask.transpose(0, 1).flatten(1).sum(1)
    assert int((per_channel > 0).sum()) == kept_count(8, 0.25)
    assert set(per_channel.tolist()) <= {0.0, float(16 * 9)}


def test_straight_through_gradient_matches_the_formula():
    sp = attach(small_net(), 0.4)
    layer = sp.layers[1]
    layer.weight.requires_grad_(True)
    weight = layer.module.weight  # the effective weight W * m, built with autograd
    weight.retain_grad()
    out = torch.nn.functional.conv2d(torch.randn(2, 8, 5, 5), weight, padding=1)
    out.square().sum().backward()
    g = weight.grad  # dL/dW_eff
    assert torch.allclose(
        layer.scores.grad, g * layer.weight.detach() * torch.sign(layer.scores.detach())
    )
    assert torch.allclose(layer.weight.grad, g * layer.mask)


def test_binary_weights_are_alpha_sign_on_kept_weights():
    model = small_net()
    sp = attach(model, 0.5, binary=True)
    for layer in sp.layers:
        eff = layer.module.weight.detach()
        kept = layer.mask.bool()
        alpha = layer.weight.abs()[kept].mean()
        assert torch.allclose(eff[kept].abs(), alpha.expand(int(kept.sum())))
        assert torch.equal(torch.sign(eff[kept]), torch.sign(layer.weight[kept]))
        assert torch.all(eff[~kept] == 0)


def test_channel_alpha_is_per_output_channel():
    sp = attach(small_net(), 0.5, binary=True, alpha="channel")
    layer = sp.layers[1]
    eff, kept = layer.module.weight.detach(), layer.mask.bool()
    for c in range(eff.shape[0]):
        vals = eff[c][kept[c]].abs()
        if vals.numel():
            assert torch.allclose(vals, layer.weight[c].abs()[kept[c]].mean().expand_as(vals))


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=1.0),
        lambda p: torch.optim.Adam(p, lr=1.0, fused=True),  # fused steps do not bump versions
    ],
)
def test_masks_follow_the_scores_after_every_optimizer_step(make_opt):
    model = small_net()
    sp = attach(model, 0.3)
    opt = make_opt(sp.scores())
    x = torch.randn(4, 3, 6, 6)
    before = [l.mask.clone() for l in sp.layers]
    for _ in range(3):
        model(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
    model(x)  # the forward pre-hook refreshes
    for layer, old in zip(sp.layers, before):
        a = layer.scores.detach().abs().flatten()
        expected = torch.zeros_like(a)
        expected[a.topk(kept_count(layer.numel, 0.3)).indices] = 1
        assert torch.equal(layer.mask.flatten(), expected)
    assert any(not torch.equal(l.mask, o) for l, o in zip(sp.layers, before))


def test_freeze_fixes_masks_and_remove_bakes_weights():
    model = small_net()
    sp = attach(model, 0.3)
    sp.freeze()
    assert isinstance(sp.rule, Fixed)
    frozen = [l.mask.clone() for l in sp.layers]
    with torch.no_grad():
        for s in sp.scores():
            s.mul_(-3).add_(1)
    model(torch.randn(2, 3, 6, 6))
    assert all(torch.equal(l.mask, m) for l, m in zip(sp.layers, frozen))
    effective = [l.module.weight.detach().clone() for l in sp.layers]
    sp.remove()
    for layer, eff in zip(sp.layers, effective):
        assert isinstance(layer.module.weight, nn.Parameter)
        assert torch.equal(layer.module.weight.detach(), eff)
        assert "_ticketkit_weight" not in layer.module.__dict__  # no stash left behind


def test_hydra_score_init_gives_the_magnitude_mask():
    model = small_net()
    sp = Sparsifier.attach(model, TopK(0.3))
    init_scores(sp.layers, "hydra", None)
    sp.refresh(force=True)
    for layer in sp.layers:
        bound = (6 / layer.fan_in) ** 0.5
        assert float(layer.scores.detach().abs().max()) == pytest.approx(bound)
        a = layer.weight.abs().flatten()
        expected = torch.zeros_like(a)
        expected[a.topk(kept_count(layer.numel, 0.3)).indices] = 1
        assert torch.equal(layer.mask.flatten(), expected)


@pytest.mark.parametrize("binary", [False, True])
def test_whole_model_forward_gives_every_layer_the_straight_through_gradient(binary):
    """The root forward computes all W_eff in one autograd node; gradients must be per-layer
    exact: dW = g * m (plain), ds = g * W * sign(s) - ig * m * g^2."""
    model = small_net()
    sp = attach(model, 0.4, binary=binary)
    for layer in sp.layers:
        layer.weight.requires_grad_(True)
        layer.param.ig = 0.5
    grads: dict[str, torch.Tensor] = {}

    def capture(path):  # dL/dW_eff as the layer sees it
        def hook(module, args):
            module.weight.register_hook(lambda g: grads.__setitem__(path, g))

        return hook

    for layer in sp.layers:
        layer.module.register_forward_pre_hook(capture(layer.path))
    model(torch.randn(3, 3, 6, 6)).square().sum().backward()
    for layer in sp.layers:
        g, s, w, m = grads[layer.path], layer.scores.detach(), layer.weight.detach(), layer.mask
        expected = g * w * torch.sign(s) - 0.5 * m * g * g
        assert torch.allclose(layer.scores.grad, expected, atol=1e-6)
        if binary:
            assert layer.weight.grad is None  # a binary W_eff does not depend on W's values
        else:
            assert torch.allclose(layer.weight.grad, g * m)
        assert layer.module.__dict__["_ticketkit_weight"] is None  # during the forward only


def test_a_layer_called_on_its_own_still_trains_its_scores():
    model = small_net()
    sp = attach(model, 0.5)
    conv = model[3]
    conv(torch.randn(2, 8, 5, 5)).sum().backward()
    assert sp.layers[1].scores.grad is not None and sp.layers[1].scores.grad.abs().sum() > 0
    assert sp.layers[0].scores.grad is None


def test_a_failed_forward_leaves_no_stale_effective_weights():
    model = small_net()
    sp = attach(model, 0.5)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 5, 6, 6))  # wrong channel count
    assert all(layer.module.__dict__["_ticketkit_weight"] is None for layer in sp.layers)


@pytest.mark.parametrize("binary", [False, True])
def test_masks_stay_live_after_the_model_moves(binary):
    """`.to(device)` replaces buffers (mask, alpha) with new tensors; a dtype move does the
    same on CPU, so this guards the CUDA path: masks must keep following the scores."""
    model = small_net()
    sp = attach(model, 0.3, binary=binary)
    model.to(torch.float64)
    opt = torch.optim.SGD(sp.scores(), lr=10.0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    model(x).square().sum().backward()
    opt.step()
    model(x)
    for layer in sp.layers:
        buffer = layer.module.parametrizations.weight[0].mask
        assert layer.mask is buffer and buffer.dtype == torch.float64
        a = layer.scores.detach().abs().flatten()
        expected = torch.zeros_like(a)
        expected[a.topk(kept_count(layer.numel, 0.3)).indices] = 1
        assert torch.equal(buffer.flatten(), expected)
        eff = layer.module.weight.detach()
        assert eff.dtype == torch.float64 and torch.all(eff[buffer == 0] == 0)


class _Checkpointed(nn.Module):
    def __init__(self, reentrant: bool | None) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.a = nn.Linear(8, 16, bias=False)
        self.b = nn.Sequential(nn.Linear(16, 16, bias=False), nn.ReLU())
        self.c = nn.Linear(16, 4, bias=False)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.reentrant is not None:
            h = torch.utils.checkpoint.checkpoint(self.b, h, use_reentrant=self.reentrant)
        else:
            h = self.b(h)
        return self.c(h)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("binary", [False, True])
def test_activation_checkpointing_gives_the_same_score_gradients(reentrant, binary):
    grads = []
    for mode in (None, reentrant):
        torch.manual_seed(0)
        model = _Checkpointed(mode)
        sp = Sparsifier.attach(model, TopK(0.5), binary=binary)
        init_scores(sp.layers, "kaiming-uniform", torch.Generator().manual_seed(1))
        model(torch.ones(5, 8).cumsum(1)).square().sum().backward()
        grads.append([layer.scores.grad for layer in sp.layers])
    for plain, checkpointed in zip(*grads, strict=True):
        assert checkpointed is not None and torch.allclose(plain, checkpointed)


def _mlp_train_steps(steps: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
    """A few biprop steps on a small mlp; masks, score gradients and alphas of the last one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200, bias=False), nn.ReLU(), nn.Linear(200, 10))
    sp = attach(model, k=0.4, binary=True)
    opt = torch.optim.SGD(sp.scores(), lr=0.1, momentum=0.9)
    x, y = torch.randn(32, 300), torch.randint(0, 10, (32,))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    masks = [layer.mask.clone() for layer in sp.layers]
    grads = [layer.scores.grad.clone() for layer in sp.layers]
    return masks, grads, [float(layer.param.alpha) for layer in sp.layers]


def test_fused_kernels_train_like_eager_pytorch(monkeypatch):
    """The compiled mask pass and score gradient are drop-in: same masks, same gradients."""
    import ticketkit.masks.layers as layers_module
    import ticketkit.masks.select as select_module
    import ticketkit.masks.sparsifier as sparsity_module
    from ticketkit.masks.kernels import kernels

    if kernels() is None:
        pytest.skip("no C compiler")
    fused = _mlp_train_steps(5)
    monkeypatch.setattr(select_module, "kernels", lambda: None)
    monkeypatch.setattr(sparsity_module, "kernels", lambda: None)
    monkeypatch.setattr(layers_module, "kernels", lambda: None)
    eager = _mlp_train_steps(5)
    for a, b in zip(fused[0], eager[0], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(fused[1], eager[1], strict=True):  # alpha's sum is added in another order
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert fused[2] == pytest.approx(eager[2], rel=1e-6)


def _decayed_steps(
    fold: bool, opt_cls=torch.optim.SGD, steps: int = 5, decay: float = 0.01, **opt_kw
):
    """Steps of a small biprop mlp whose optimizer has weight decay, folded in or not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200, bias=False), nn.ReLU(), nn.Linear(200, 10))
    sp = attach(model, k=0.4, binary=True)
    opt = opt_cls(sp.scores(), lr=0.05, weight_decay=decay, **opt_kw)
    if fold:
        sp.fold_weight_decay([opt])
    x, y = torch.randn(32, 300), torch.randint(0, 10, (32,))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return sp, opt, [s.detach().clone() for s in sp.scores()]


@pytest.mark.parametrize(
    "opt_cls, kw", [(torch.optim.SGD, {"momentum": 0.9}), (torch.optim.Adam, {})]
)
def test_weight_decay_folded_into_the_score_gradient_trains_the_same(opt_cls, kw):
    from ticketkit.masks.kernels import kernels

    if kernels() is None:
        pytest.skip("no C compiler: nothing is folded")
    sp, opt, folded = _decayed_steps(True, opt_cls, **kw)
    assert opt.param_groups[0]["weight_decay"] == 0.0  # the optimizer no longer adds it
    assert [layer.param.decay for layer in sp.layers] == [0.01, 0.01]
    _, plain_opt, plain = _decayed_steps(False, opt_cls, **kw)
    assert plain_opt.param_groups[0]["weight_decay"] == 0.01
    undecayed = _decayed_steps(False, opt_cls, decay=0.0, **kw)[2]
    for a, b, c in zip(folded, plain, undecayed, strict=True):
        # g + wd*s rounds once or twice (an FMA or not): the same up to rounding, which
        # Adam's per-element normalisation magnifies where g and wd*s nearly cancel
        assert (a - b).abs().gt(1e-6).float().mean() < 1e-3
        assert (a - c).abs().gt(1e-6).float().mean() > 0.1  # while the decay itself shows


def test_weight_decay_is_folded_only_where_it_is_the_same_arithmetic(monkeypatch):
    import ticketkit.masks.layers as layers_module
    import ticketkit.masks.sparsifier as sparsity_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20, bias=False), nn.BatchNorm1d(20), nn.Linear(20, 5))
    sp = attach(model)
    scores, bn = sp.scores(), list(model[1].parameters())
    decoupled = torch.optim.AdamW(scores, weight_decay=0.01)
    mixed = torch.optim.SGD(scores + bn, lr=0.1, weight_decay=0.01)  # BN decays in the optimizer
    sp.fold_weight_decay([decoupled, mixed])
    assert decoupled.param_groups[0]["weight_decay"] == 0.01
    assert mixed.param_groups[0]["weight_decay"] == 0.01
    assert all(layer.param.decay == 0.0 for layer in sp.layers)
    monkeypatch.setattr(sparsity_module, "kernels", lambda: None)
    monkeypatch.setattr(layers_module, "kernels", lambda: None)  # the eager path: no gain
    sgd = torch.optim.SGD(scores, lr=0.1, weight_decay=0.01)
    sp.fold_weight_decay([sgd])
    assert sgd.param_groups[0]["weight_decay"] == 0.01


def test_a_folded_decay_survives_a_checkpoint_and_is_given_back_where_it_cannot_fold(
    monkeypatch,
):
    import ticketkit.masks.layers as layers_module
    import ticketkit.masks.sparsifier as sparsity_module
    from ticketkit.masks.kernels import kernels

    if kernels() is None:
        pytest.skip("no C compiler: nothing is folded")
    sp, opt, _ = _decayed_steps(True, steps=1, momentum=0.9)
    saved = opt.state_dict()
    resumed = torch.optim.SGD(sp.scores(), lr=0.05, momentum=0.9, weight_decay=0.01)
    sp.fold_weight_decay([resumed])  # as the training loop: fold, load, fold again
    resumed.load_state_dict(saved)
    sp.fold_weight_decay([resumed])
    assert resumed.param_groups[0]["weight_decay"] == 0.0  # not decayed twice
    assert [layer.param.decay for layer in sp.layers] == [0.01, 0.01]
    old = torch.optim.SGD(sp.scores(), lr=0.05, momentum=0.9, weight_decay=0.01)
    unfolded = old.state_dict()  # a checkpoint from before folding existed
    old.load_state_dict(unfolded)
    sp.fold_weight_decay([old])
    assert old.param_groups[0]["weight_decay"] == 0.0
    assert [layer.param.decay for layer in sp.layers] == [0.01, 0.01]
    monkeypatch.setattr(sparsity_module, "kernels", lambda: None)
    monkeypatch.setattr(layers_module, "kernels", lambda: None)  # resumed without a compiler
    elsewhere = torch.optim.SGD(sp.scores(), lr=0.05, momentum=0.9)
    elsewhere.load_state_dict(saved)
    sp.fold_weight_decay([elsewhere])
    assert elsewhere.param_groups[0]["weight_decay"] == 0.01  # the optimizer decays again
    assert all(layer.param.decay == 0.0 for layer in sp.layers)
