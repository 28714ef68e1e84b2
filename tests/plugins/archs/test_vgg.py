"""vgg11-bn and vgg16-bn (BiP/HYDRA CIFAR layout), and vgg-small still as it was.

Specs come from the module's registration hook and are built the way
`ticketkit.models.build_model` builds them, so the entry point need not be installed.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ticketkit.errors import UsageError
from ticketkit.models import build_model
from ticketkit.plugins.archs import vgg
from ticketkit.training.data import InputSpec

FOUND: list = []
vgg.ticketkit_register_archs(register=FOUND.append)
SPECS = {spec.name: spec for spec in FOUND}
NEW = ["vgg11-bn", "vgg16-bn"]

FMNIST = InputSpec(1, 28, 28, 10)
CIFAR10 = InputSpec(3, 32, 32, 10)
CIFAR100 = InputSpec(3, 32, 32, 100)
DIGITS = InputSpec(1, 8, 8, 10)


build = build_model  # through the registry, as the CLI builds them


def meta(name, input=CIFAR10, **options):
    with torch.device("meta"):
        return build(name, input, **options)


def test_registers_vgg_small_and_the_bn_vggs():
    assert sorted(SPECS) == ["vgg-small", "vgg11-bn", "vgg16-bn"]
    for name in NEW:
        declared = {f.name for f in dataclasses.fields(SPECS[name].options)}
        assert declared == {"width", "bias", "affine_bn"}


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("input", [FMNIST, CIFAR100, DIGITS], ids=["1x28x28", "3x32x32", "1x8x8"])
def test_forward_shape(name, input):
    model = build(name, input).eval()
    with torch.no_grad():
        out = model(torch.randn(2, input.channels, input.height, input.width))
    assert out.shape == (2, input.classes)


@pytest.mark.parametrize("name", NEW)
def test_bias_false_and_affine_bn_false(name):
    plain = meta(name)
    layers = [m for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(m.bias is not None for m in layers)

    model = meta(name, bias=False, affine_bn=False)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.bias is None for m in layers)
    assert norms and all(not m.affine and m.weight is None for m in norms)


def conv_layers(cfg, c_in=3):
    """(params, convs) of 3x3 convs with bias, each followed by an affine BN."""
    total, convs = 0, 0
    for v in cfg:
        if v != "M":
            total += c_in * v * 9 + v + 2 * v
            c_in, convs = v, convs + 1
    return total, convs


@pytest.mark.parametrize(
    ("name", "expected_convs", "expected"),
    [
        # convs 9,220,480 + BN 5,504 + FC (2048*256+256) + (256*256+256) + (256*10+10) = 592,906
        ("vgg11-bn", 8, 9_818_890),
        # convs 14,714,688 + BN 8,448 + FC 592,906: HYDRA/BiP's vgg16_bn, 15.3M for CIFAR-10
        ("vgg16-bn", 13, 15_316_042),
    ],
)
def test_parameter_counts(name, expected_convs, expected):
    conv_params, convs = conv_layers(vgg.CONFIGS[name[3:5]])
    fc = 2048 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert fc == 592_906 and convs == expected_convs
    assert conv_params + fc == expected
    model = meta(name)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == expected_convs


def test_pooling_on_small_images():
    pools = lambda model: [
        type(m).__name__
        for m in model[0]
        if not isinstance(  # noqa: E731
            m, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)
        )
    ]
    # CIFAR: four 2x2 max-pools, 32 -> 2, the adaptive pool is then the identity
    assert pools(meta("vgg16-bn")) == ["MaxPool2d"] * 4
    # digits: 8 -> 4 -> 2 -> 1, the fourth pool is skipped (an Identity keeps layer indices)
    assert pools(meta("vgg11-bn", DIGITS)) == ["MaxPool2d"] * 3 + ["Identity"]
    # the state dict does not depend on the image size, so tickets move between datasets
    assert meta("vgg11-bn", DIGITS).state_dict().keys() == meta("vgg11-bn").state_dict().keys()
    # non-square: 2x8 pools only the width once the height is 1
    model = build("vgg11-bn", InputSpec(1, 2, 8, 3)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 2, 8)).shape == (2, 3)


def test_width():
    model = meta("vgg11-bn", width=0.5)
    assert model[3][0].in_features == 256 * 4 and model[3][0].out_features == 256
    with pytest.raises(UsageError, match="width"):
        meta("vgg16-bn", width=0.001)


def test_vgg_small_unchanged():
    model = meta("vgg-small")
    assert sum(p.numel() for p in model.parameters()) == 4_661_898
    assert [f.name for f in dataclasses.fields(SPECS["vgg-small"].options)] == [
        "width",
        "binary_act",
        "affine_bn",
        "bias",
    ]


def test_registry_finds_them():
    import ticketkit.registry

    names = ticketkit.registry.names("archs")
    if "vgg11-bn" not in names:
        pytest.skip("the installed arch-vgg entry point predates vgg11-bn (reinstall ticketkit)")
    assert {"vgg11-bn", "vgg16-bn", "vgg-small"} <= set(names)
