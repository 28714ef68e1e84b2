"""The ResNet archs: resnet20..56 and resnet18/34/50 (CIFAR), the -imagenet ResNets, and WRN.

Specs come from each module's registration hook, and are built the way
`ticketkit.models.build_model` builds them (typed options, then the factory), so these
tests do not depend on the entry points being installed. Parameter counts and structure are
checked on the meta device (no memory, no init); forwards use tiny batches in eval mode.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ticketkit.errors import UsageError
from ticketkit.models import build_model
from ticketkit.plugins.archs import resnet, resnet_cifar, wide_resnet
from ticketkit.training.data import InputSpec


def _specs(*modules):
    found = []
    for module in modules:
        module.ticketkit_register_archs(register=found.append)
    return {spec.name: spec for spec in found}


SPECS = _specs(resnet_cifar, resnet, wide_resnet)
CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet18", "resnet34", "resnet50"]
IMAGENET = ["resnet18-imagenet", "resnet34-imagenet", "resnet50-imagenet"]
WRN = ["wide-resnet", "wrn-28-2", "wrn-28-4", "wrn-28-10", "wrn-16-8"]
NAMES = CIFAR + IMAGENET + WRN

FMNIST = InputSpec(1, 28, 28, 10)
CIFAR100 = InputSpec(3, 32, 32, 100)
DIGITS = InputSpec(1, 8, 8, 10)
CIFAR10 = InputSpec(3, 32, 32, 10)


build = build_model  # through the registry, as the CLI builds them


def meta(name, input=CIFAR10, **options):
    with torch.device("meta"):
        return build(name, input, **options)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registers_every_name_with_flavor_options():
    assert sorted(SPECS) == sorted(NAMES)
    for spec in SPECS.values():
        declared = {f.name for f in dataclasses.fields(spec.options)}
        assert {"bias", "affine_bn"} <= declared, spec.name
        assert spec.make_options({}).bias and spec.make_options({}).affine_bn


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("input", [FMNIST, CIFAR100, DIGITS], ids=["1x28x28", "3x32x32", "1x8x8"])
def test_forward_shape(name, input):
    torch.manual_seed(0)
    model = build(name, input).eval()
    with torch.no_grad():
        out = model(torch.randn(1, input.channels, input.height, input.width))
    assert out.shape == (1, input.classes)
    assert torch.isfinite(out).all()


def test_trains_one_step_in_train_mode():
    model = build("resnet20", FMNIST).train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert model.conv1.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_bias_false_and_affine_bn_false(name):
    plain = meta(name)
    assert isinstance(plain.fc, nn.Linear) and plain.fc.bias is not None
    assert all(m.affine for m in plain.modules() if isinstance(m, nn.BatchNorm2d))

    model = meta(name, bias=False, affine_bn=False)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert layers and norms
    assert all(m.bias is None for m in layers)
    assert all(not m.affine and m.weight is None and m.bias is None for m in norms)


# ---- parameter counts, derived ------------------------------------------------------------------


def conv_bn(c_in: int, c_out: int, k: int) -> int:
    """A bias-free k x k conv and its affine BN."""
    return c_in * c_out * k * k + 2 * c_out


def basic_stage(c_in: int, c: int, n: int, projection: bool) -> int:
    first = conv_bn(c_in, c, 3) + conv_bn(c, c, 3)
    if projection and c_in != c:
        first += conv_bn(c_in, c, 1)
    return first + (n - 1) * 2 * conv_bn(c, c, 3)


def bottleneck_stage(c_in: int, p: int, n: int) -> int:
    block = conv_bn(p, p, 3) + conv_bn(p, 4 * p, 1)
    first = conv_bn(c_in, p, 1) + block + (conv_bn(c_in, 4 * p, 1) if c_in != 4 * p else 0)
    return first + (n - 1) * (conv_bn(4 * p, p, 1) + block)


def option_a_resnet(n: int, classes: int) -> int:
    """resnet(6n+2): stem 3->16, stages 16/32/64 with option-A (free) shortcuts, fc 64->classes."""
    return (
        conv_bn(3, 16, 3)
        + basic_stage(16, 16, n, False)
        + basic_stage(16, 32, n, False)
        + basic_stage(32, 64, n, False)
        + 64 * classes
        + classes
    )


def big_resnet(layers, bottleneck: bool, stem_k: int, classes: int) -> int:
    total, c_in = conv_bn(3, 64, stem_k), 64
    for p, n in zip((64, 128, 256, 512), layers, strict=True):
        total += bottleneck_stage(c_in, p, n) if bottleneck else basic_stage(c_in, p, n, True)
        c_in = 4 * p if bottleneck else p
    return total + c_in * classes + classes


def wrn(depth: int, k: int, classes: int) -> int:
    """Pre-activation WRN: BN(2c_in) + conv + BN(2c) + conv per block, 1x1 shortcut on change."""
    n, total, c_in = (depth - 4) // 6, 3 * 16 * 9, 16
    for c in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += 2 * c_in + 9 * c_in * c + 2 * c + 9 * c * c + (c_in * c if c_in != c else 0)
            c_in = c
    return total + 2 * c_in + c_in * classes + classes


@pytest.mark.parametrize(
    ("name", "input", "expected"),
    [
        # He et al. / akamaster: 0.27M, 0.46M, 0.66M, 0.85M for CIFAR-10
        ("resnet20", CIFAR10, 269_722),
        ("resnet32", CIFAR10, 464_154),
        ("resnet44", CIFAR10, 658_586),
        ("resnet56", CIFAR10, 853_018),
        # kuangliu/pytorch-cifar: 11.17M, 21.28M, 23.52M for CIFAR-10
        ("resnet18", CIFAR10, 11_173_962),
        ("resnet34", CIFAR10, 21_282_122),
        ("resnet50", CIFAR10, 23_520_842),
        # torchvision for ImageNet: 11.69M, 21.80M, 25.56M
        ("resnet18-imagenet", InputSpec(3, 224, 224, 1000), 11_689_512),
        ("resnet34-imagenet", InputSpec(3, 224, 224, 1000), 21_797_672),
        ("resnet50-imagenet", InputSpec(3, 224, 224, 1000), 25_557_032),
        # Zagoruyko & Komodakis: WRN-28-10 36.5M, WRN-16-8 11.0M on CIFAR-10
        ("wrn-28-2", CIFAR10, 1_467_610),
        ("wide-resnet", CIFAR10, 1_467_610),
        ("wrn-28-4", CIFAR10, 5_849_050),
        ("wrn-28-10", CIFAR10, 36_479_194),
        ("wrn-16-8", CIFAR10, 10_961_370),
    ],
)
def test_parameter_counts(name, input, expected):
    if name in CIFAR[:4]:
        derived = option_a_resnet((int(name[6:]) - 2) // 6, input.classes)
    elif name.startswith(("wrn", "wide")):
        opts = SPECS[name].make_options({})
        derived = wrn(opts.depth, opts.widen, input.classes)
    else:
        layers, bottleneck = {
            "18": ((2, 2, 2, 2), False),
            "34": ((3, 4, 6, 3), False),
            "50": ((3, 4, 6, 3), True),
        }[name[6:8]]
        derived = big_resnet(layers, bottleneck, 7 if "imagenet" in name else 3, input.classes)
    assert derived == expected
    assert n_params(meta(name, input)) == expected


# ---- structure ---------------------------------------------------------------------------------


def test_option_a_shortcut_is_parameter_free_subsample_and_even_zero_pad():
    model = meta("resnet20")
    shortcuts = [m for m in model.modules() if type(m).__name__ == "ShortcutA"]
    assert len(shortcuts) == 2  # first block of stages 2 and 3
    assert all(not list(s.parameters()) and not list(s.buffers()) for s in shortcuts)
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())

    shortcut = resnet.modules().ShortcutA(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_cifar_resnet18_has_cifar_stem_and_projection_shortcuts():
    model = meta("resnet18")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.layer2[0].downsample[0].kernel_size == (1, 1)
    assert model.layer1[0].downsample is None


@pytest.mark.parametrize("depth", [18, 50])
def test_imagenet_resnet_matches_torchvision(depth):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")(num_classes=10).eval()
    model = build(f"resnet{depth}-imagenet", CIFAR10).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_imagenet_resnet_other_channels():
    model = meta("resnet50-imagenet", FMNIST)
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)


def test_width_multiplier():
    assert meta("resnet20", width=2).fc.in_features == 128
    assert meta("resnet18", width=0.5).fc.in_features == 256
    with pytest.raises(UsageError, match="width"):
        meta("resnet20", width=0.01)


# ---- wide resnet -------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [27, 4, 0])
def test_wrn_bad_depth(depth):
    with pytest.raises(UsageError, match="6n \\+ 4"):
        build("wide-resnet", CIFAR10, depth=depth)


def test_wrn_presets_default_to_their_depth_and_widen():
    for name in WRN[1:]:
        _, depth, widen = name.split("-")
        opts = SPECS[name].make_options({})
        assert (opts.depth, opts.widen) == (int(depth), int(widen))
    assert SPECS["wrn-28-10"].make_options({"widen": "3"}).widen == 3
    model = meta("wrn-16-8")
    assert len(model.block1) == 2 and model.fc.in_features == 512


def test_wrn_shortcuts_and_dropout():
    model = meta("wide-resnet", widen=1, dropout=0.3)
    assert model.block1[0].shortcut is None  # 16 -> 16
    assert model.block2[0].shortcut.kernel_size == (1, 1)
    assert isinstance(model.block1[0].dropout, nn.Dropout) and model.block1[0].dropout.p == 0.3
    with pytest.raises(UsageError, match="dropout"):
        build("wide-resnet", CIFAR10, dropout=1.5)


def test_registry_finds_them():
    import ticketkit.registry

    names = ticketkit.registry.names("archs")
    if "resnet20" not in names:
        pytest.skip(
            "arch-resnet* / arch-wide-resnet entry points are not installed yet "
            "(add them to pyproject.toml and reinstall)"
        )
    assert set(NAMES) <= set(names)
    from ticketkit.models import build_model

    model = build_model("wrn-16-8", DIGITS, widen=1)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
