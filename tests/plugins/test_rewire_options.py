"""The options every rewire method shares (ticketkit/plugins/methods/rewire.py): the growing
update period (`-o period-schedule`, DSR's 100 -> 200 -> 400 -> 800 by default), the value of
regrown weights (`-o regrow=zero|init`) and the dense 1x1 shortcut policy (`--dense-shortcuts`).
"""

from __future__ import annotations

import math

import pytest
import torch

from ticketkit import Context, InputSpec, Setup, build_model, jobs, testing
from ticketkit.masks import masked_layers
from ticketkit.plugins.methods.rewire import RewireMethod, is_shortcut
from ticketkit.registry import get_method

DIGITS = InputSpec(1, 8, 8, 10)


def method(name: str, epochs: int = 8, steps_per_epoch: int = 10, **options):
    """A rewire method with a context (no data), its options parsed as the CLI parses them."""
    spec = get_method(name)
    m = spec.load()(spec.make_options(options), Setup(k=0.3, seed=0, init="kaiming-normal"))
    m.ctx = Context(input=DIGITS, device="cpu", steps_per_epoch=steps_per_epoch, epochs=epochs)
    return m


def test_dsr_doubles_its_period_at_quarters_of_training_by_default():
    dsr = method("dsr", epochs=100)
    assert [dsr.period(e) for e in (0, 24, 25, 49, 50, 74, 75, 99)] == [
        100, 100, 200, 200, 400, 400, 800, 800
    ]  # fmt: skip
    assert [method("set", epochs=100).period(e) for e in (0, 50, 99)] == [100, 100, 100]
    assert method("dsr", epochs=100, period_schedule="constant").period(99) == 100


def test_an_explicit_schedule_is_the_last_entry_at_or_before_the_epoch():
    # WRN-28-2's YAML in the DSR code; `-o every` before the first entry; Nep in epochs
    wrn = method("set", epochs=200, every="50", period_schedule="10:100,25:200,80:2ep")
    assert [wrn.period(e) for e in (0, 9, 10, 24, 25, 79, 80, 199)] == [
        50, 50, 100, 100, 200, 200, 20, 20
    ]  # fmt: skip


def test_updates_fall_on_the_steps_of_the_growing_period(monkeypatch, tmp_path):
    """SET on digits (23 steps an epoch, 4 epochs) with every=5 doubling each epoch: updates at
    multiples of 5, 10, 20 and 40 within epochs 0, 1, 2 and 3."""
    updates: list[int] = []
    original = RewireMethod.after_step

    def recorded(self, model, optimizers):
        if self.active():
            updates.append(self.ctx.step)
        original(self, model, optimizers)

    monkeypatch.setattr(RewireMethod, "after_step", recorded)
    options = {"every": "5", "period-schedule": "doubling"}
    cfg = testing.rewire_config("set", tmp_path, epochs=4, eval_every=0, options=options)
    jobs.rewire(cfg)
    spe = math.ceil(1437 / 64)
    expected = [
        t
        for t in range(1, 4 * spe)  # not the very last step
        if t % (5 * 2 ** ((t - 1) // spe)) == 0  # epoch of step t: (t - 1) // spe
    ]
    assert updates == expected == [5, 10, 15, 20, 30, 40, 60, 80]


def one_update(name: str, **options) -> tuple[list, list[torch.Tensor], torch.optim.Optimizer]:
    """`name` on the digits MLP after one SGD step and one mask update: the layers, their masks
    before the update and the optimizer."""
    from ticketkit.training.data import load_dataset
    from ticketkit.training.loop import bind

    spec = get_method(name)
    m = spec.load()(spec.make_options(options), Setup(k=0.3, seed=0, init="kaiming-normal"))
    bind(m, load_dataset("digits"), testing.rewire_config(name, "unused"))
    torch.manual_seed(0)
    model = build_model("mlp", DIGITS)
    m.prepare(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = m.ctx.batches(1, seed=0)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    layers = masked_layers(model)
    before = [layer.mask.clone() for layer in layers]
    m.ctx.step = 1
    m.after_step(model, {"main": opt})
    return layers, before, opt


REGROWING = [
    ("set", {"every": "1", "zeta": "0.5"}),
    ("dsr", {"every": "1", "threshold": "0.05"}),  # a threshold that prunes many
    ("deepr", {"every": "1", "temperature": "1.0", "l1": "0"}),  # noise that flips many signs
]


@pytest.mark.parametrize("name, options", REGROWING, ids=[n for n, _ in REGROWING])
@pytest.mark.parametrize("regrow", ["zero", "init"])
def test_regrown_weights_start_at_zero_or_at_a_fresh_draw_of_the_init(name, options, regrow):
    layers, before, opt = one_update(name, regrow=regrow, **options)
    checked = 0
    for layer, old in zip(layers, before, strict=True):
        grown = (old == 0) & (layer.mask != 0)
        assert not opt.state[layer.weight]["momentum_buffer"][grown].any()
        values = layer.weight.detach()[grown]
        if regrow == "zero":
            assert not values.any()
        else:
            assert values.ne(0).all()
            if values.numel() >= 500:  # kaiming-normal at the fan-in: sigma = sqrt(2 / fan_in)
                sigma = math.sqrt(2 / layer.shape[1])
                assert abs(values.std().item() / sigma - 1) < 0.15
                assert abs(values.mean().item()) < 0.15 * sigma
                checked += 1
    assert checked or regrow == "zero"  # at least one layer grew enough to measure the scale


def wrn():
    return build_model("wide-resnet", DIGITS, depth=10, widen=1)


def test_shortcuts_are_the_1x1_convs_named_shortcut_or_downsample():
    found = {p for p, m in wrn().named_modules() if is_shortcut(p, m)}
    assert found == {"block2.0.shortcut", "block3.0.shortcut"}
    resnet50 = build_model("resnet50", DIGITS, width=0.0625)
    found = {p for p, m in resnet50.named_modules() if is_shortcut(p, m)}
    assert found == {f"layer{i}.0.downsample.0" for i in (1, 2, 3, 4)}
    bottleneck_1x1 = dict(resnet50.named_modules())["layer1.0.conv1"]
    assert bottleneck_1x1.kernel_size == (1, 1)  # same shape, not a shortcut: not matched


@pytest.mark.parametrize("dense", [False, True])
def test_dense_shortcuts_leaves_them_unmasked_and_the_budget_on_the_rest(dense):
    spec = get_method("static")
    m = spec.load()(spec.make_options({}), Setup(k=0.3, seed=0, dense_shortcuts=dense))
    m.ctx = Context(input=DIGITS, device="cpu", steps_per_epoch=10, epochs=1)
    model = wrn()
    m.prepare(model)
    masked = {layer.path for layer in masked_layers(model)}
    assert ("block2.0.shortcut" in masked) is not dense
    assert ("block3.0.shortcut" in masked) is not dense
    assert {"conv1", "block2.0.conv1", "fc"} <= masked
    if dense:
        assert dict(model.named_modules())["block2.0.shortcut"].weight.ne(0).all()
