"""VGG-Small (the binary-network benchmark model used by biprop): six 3x3 convs of
128-128-256-256-512-512 channels (times `width`), max-pool after every second, BN after every
conv, one linear classifier.

biprop's own VGG_Small leaves most ReLUs commented out; ticketkit builds the standard form
(conv -> BN -> activation, pool before BN on the pooled convs). The binary-activation variant
uses sign everywhere except before the classifier, which sees BN -> ReLU as in biprop.
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketkit import ArchSpec, hookimpl, option


@dataclass(frozen=True)
class VGGSmallOptions:
    width: float = option(1.0, "width multiplier for every conv layer")
    binary_act: bool = option(False, "sign activations (MPT-1/1); the classifier input stays ReLU")
    affine_bn: bool = option(True, "learnable BatchNorm scale/shift")
    bias: bool = option(True, "biases on conv and linear layers")


def build(input, *, width: float, binary_act: bool, affine_bn: bool, bias: bool):
    from torch import nn

    from ticketkit.core.model import activation, norm, pooled_size

    widths = [int(c * width) for c in (128, 128, 256, 256, 512, 512)]
    layers: list = []
    c_in = input.channels
    for i, c in enumerate(widths):
        layers.append(nn.Conv2d(c_in, c, 3, padding=1, bias=bias))
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
        last = i == len(widths) - 1
        layers += [norm(c, 2, affine_bn), activation(binary_act and not last)]
        c_in = c
    h, w = pooled_size(input, 3, "vgg-small")
    layers += [nn.Flatten(), nn.Linear(c_in * h * w, input.classes, bias=bias)]
    return nn.Sequential(*layers)


@hookimpl
def ticketkit_register_archs(register):
    register(
        ArchSpec(name="vgg-small", summary="VGG-Small, 6 convs 128..512 ch with BN (binary-network benchmark)", factory=build, options=VGGSmallOptions)
    )
