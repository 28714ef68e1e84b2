"""CIFAR ResNets: He et al.'s resnet20/32/44/56 and the CIFAR-stem resnet18/34/50.

resnet20/32/44/56 (He et al. 2016, section 4.2; the layout of akamaster/pytorch_resnet_cifar10):
a 3x3 stem conv with 16 channels, BN, ReLU; three stages of 16/32/64 channels (times `width`),
n = (depth - 2) / 6 BasicBlocks each, the first block of stages 2 and 3 with stride 2; where
the shape changes the shortcut is option A, parameter-free: subsample x[:, :, ::2, ::2] and
zero-pad the new channels evenly on both sides; global average pool; Linear(64 * width).

resnet18/34/50 (the kuangliu/pytorch-cifar layout used by BiP and HYDRA): a 3x3 stride-1 stem
with 64 channels, BN, ReLU and no max-pool; stages of 64/128/256/512 planes with strides
1/2/2/2; BasicBlock [2,2,2,2] / [3,4,6,3] or Bottleneck (expansion 4) [3,4,6,3]; 1x1 conv + BN
projection shortcuts (option B); AdaptiveAvgPool(1); linear classifier.

The blocks are those of resnet.py (torchvision's module names). Convs have no bias, as in the
references; `bias` is the classifier's bias.
"""

from __future__ import annotations

import functools

from ticketkit import ArchSpec, hookimpl
from ticketkit.plugins.archs.resnet import LAYOUTS, PLANES, ResNetOptions, modules

DEPTHS = (20, 32, 44, 56)


def build(input, *, name: str, width: float, bias: bool, affine_bn: bool):
    """One of DEPTHS' option-A ResNets (`resnet20`...) or a LAYOUTS one (`resnet18`...)."""
    from ticketkit.models import scaled

    if name in LAYOUTS:
        block, layers = LAYOUTS[name]
        planes, shortcut = PLANES, "B"
    else:
        n = (int(name[6:]) - 2) // 6
        block, layers, planes, shortcut = "basic", (n, n, n), (16, 32, 64), "A"
    planes = [scaled(p, width, name) for p in planes]
    return modules().ResNet(
        input,
        block,
        layers,
        planes,
        stem="cifar",
        shortcut=shortcut,
        bias=bias,
        affine_bn=affine_bn,
    )


@hookimpl
def ticketkit_register_archs(register):
    for depth in DEPTHS:
        n = (depth - 2) // 6
        register(
            ArchSpec(
                name=f"resnet{depth}",
                summary=f"CIFAR ResNet-{depth}: 3 stages of {n} BasicBlocks, 16/32/64 ch, "
                "option-A shortcuts (He et al.)",
                factory=functools.partial(build, name=f"resnet{depth}"),
                options=ResNetOptions,
            )
        )
    for name, (block, layers) in LAYOUTS.items():
        kind = "BasicBlock" if block == "basic" else "Bottleneck"
        register(
            ArchSpec(
                name=name,
                summary=f"ResNet-{name[6:]}, CIFAR stem (3x3/1 conv, no max-pool), {kind} "
                f"{list(layers)}, 64..512 ch",
                factory=functools.partial(build, name=name),
                options=ResNetOptions,
            )
        )
