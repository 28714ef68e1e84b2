"""Conv2/4/6/8: the VGG-like CIFAR networks of Frankle & Carbin, used by edge-popup and biprop.

3x3 convs (padding 1) in pairs, each pair followed by a 2x2 max-pool; then FC 256-256-classes.
Widths are 64, 128, 256, 512 per pair, all multiplied by `width` (the FC layers too). The
binary-activation variant (MPT-1/1) follows biprop's Conv*_BinAct: conv -> BN -> sign, and for
the second conv of a pair conv -> pool -> BN -> sign; FC -> BN -> sign; the first conv sees the
real image, the classifier has no BN after it. Fully connected layers are nn.Linear.
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketkit import ArchSpec, hookimpl, option

DEPTHS = {"conv2": 1, "conv4": 2, "conv6": 3, "conv8": 4}


@dataclass(frozen=True)
class ConvOptions:
    width: float = option(1.0, "width multiplier for every hidden layer")
    binary_act: bool = option(False, "sign activations with BN before each (MPT-1/1)")
    affine_bn: bool = option(True, "learnable BatchNorm scale/shift (only with binary_act)")
    bias: bool = option(True, "biases on conv and linear layers")


def build(
    input, *, depth: int, name: str, width: float, binary_act: bool, affine_bn: bool, bias: bool
):
    from torch import nn

    from ticketkit.models import activation, norm, pooled_size, scaled

    def act(channels: int, dims: int) -> list:
        return (
            [norm(channels, dims, affine_bn), activation(True)]
            if binary_act
            else [activation(False)]
        )

    layers: list = []
    c_in = input.channels
    for i in range(depth):
        c = scaled(64 * (2**i), width, name)
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=bias), *act(c, 2)]
        layers += [nn.Conv2d(c, c, 3, padding=1, bias=bias)]
        layers += [nn.MaxPool2d(2), *act(c, 2)] if binary_act else [*act(c, 2), nn.MaxPool2d(2)]
        c_in = c
    h, w = pooled_size(input, depth, name)
    hidden = scaled(256, width, name)
    layers += [nn.Flatten(), nn.Linear(c_in * h * w, hidden, bias=bias), *act(hidden, 1)]
    layers += [nn.Linear(hidden, hidden, bias=bias), *act(hidden, 1)]
    layers += [nn.Linear(hidden, input.classes, bias=bias)]
    return nn.Sequential(*layers)


def _factory(name: str):
    def factory(input, **options):
        return build(input, depth=DEPTHS[name], name=name, **options)

    return factory


@hookimpl
def ticketkit_register_archs(register):
    for name, depth in DEPTHS.items():
        register(
            ArchSpec(
                name=name,
                summary=f"{2 * depth} conv layers (64..{64 * 2 ** (depth - 1)} ch) + FC 256-256 "
                "(Frankle & Carbin)",
                factory=_factory(name),
                options=ConvOptions,
            )
        )
