"""ResNet-18/34/50 with the ImageNet stem (He et al. 2016), in torchvision's layout.

7x7 stride-2 stem conv, BN, ReLU, 3x3 stride-2 max-pool; four stages of 64/128/256/512 planes
(times `width`) with strides 1/2/2/2; BasicBlock (resnet18/34) or Bottleneck with expansion 4
and the stride on the 3x3 conv (v1.5, resnet50); a 1x1 conv + BN `downsample` where the shape
changes (option B); AdaptiveAvgPool(1) and a linear `fc`. Module names and shapes match
`torchvision.models.resnet18/34/50`, so a torchvision state dict loads for 3-channel inputs.

This module also holds the one block implementation the CIFAR ResNets share (resnet_cifar.py):
`modules()` defines the nn.Module classes on first use, so importing it needs no torch. Every
conv feeds a BatchNorm and has no bias, as in the references; `bias` is the classifier's bias.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace

from ticketkit import ArchSpec, hookimpl, option

PLANES = (64, 128, 256, 512)
LAYOUTS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


@dataclass(frozen=True)
class ResNetOptions:
    width: float = option(1.0, "width multiplier for every stage")
    bias: bool = option(True, "bias on the linear classifier (the convs feed BN and have none)")
    affine_bn: bool = option(True, "learnable BatchNorm scale/shift")


@functools.cache
def modules() -> SimpleNamespace:
    """The nn.Module classes (ShortcutA, BasicBlock, Bottleneck, ResNet), defined on first use."""
    import torch.nn.functional as F
    from torch import nn

    from ticketkit.models import norm

    def bn(channels: int, affine: bool) -> nn.BatchNorm2d:
        return norm(channels, 2, affine)

    def conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)

    class ShortcutA(nn.Module):
        """Option A: subsample by `stride` and zero-pad the new channels evenly on both sides."""

        def __init__(self, c_in: int, c_out: int, stride: int):
            super().__init__()
            self.stride, self.before = stride, (c_out - c_in) // 2
            self.after = c_out - c_in - self.before

        def forward(self, x):
            x = x[:, :, :: self.stride, :: self.stride]
            return F.pad(x, (0, 0, 0, 0, self.before, self.after))

        def extra_repr(self) -> str:
            return f"stride={self.stride}, pad=({self.before}, {self.after})"

    def shortcut(kind: str, c_in: int, c_out: int, stride: int, affine: bool):
        if stride == 1 and c_in == c_out:
            return None
        if kind == "A":
            return ShortcutA(c_in, c_out, stride)
        return nn.Sequential(conv(c_in, c_out, 1, stride), bn(c_out, affine))

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, c_in: int, planes: int, stride: int, affine: bool, kind: str):
            super().__init__()
            self.conv1, self.bn1 = conv(c_in, planes, 3, stride), bn(planes, affine)
            self.conv2, self.bn2 = conv(planes, planes, 3), bn(planes, affine)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = shortcut(kind, c_in, planes, stride, affine)

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, c_in: int, planes: int, stride: int, affine: bool, kind: str):
            super().__init__()
            c_out = planes * self.expansion
            self.conv1, self.bn1 = conv(c_in, planes, 1), bn(planes, affine)
            self.conv2, self.bn2 = conv(planes, planes, 3, stride), bn(planes, affine)
            self.conv3, self.bn3 = conv(planes, c_out, 1), bn(c_out, affine)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = shortcut(kind, c_in, c_out, stride, affine)

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        """Stem, one stage per entry of `planes` (stride 1 first, then 2), pool, fc.

        `stem` is "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3/1 conv, no pool);
        `shortcut` is "A" (parameter-free) or "B" (1x1 conv + BN) where the shape changes.
        """

        def __init__(
            self,
            input,
            block: str,
            layers,
            planes,
            *,
            stem: str,
            shortcut: str,
            bias: bool,
            affine_bn: bool,
        ):
            super().__init__()
            cls = BasicBlock if block == "basic" else Bottleneck
            c = planes[0]
            imagenet = stem == "imagenet"
            self.conv1 = nn.Conv2d(
                input.channels,
                c,
                7 if imagenet else 3,
                stride=2 if imagenet else 1,
                padding=3 if imagenet else 1,
                bias=False,
            )
            self.bn1 = bn(c, affine_bn)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet else nn.Identity()
            self.stages = len(layers)
            for i, (n, p) in enumerate(zip(layers, planes, strict=True)):
                blocks = []
                for j in range(n):
                    stride = 2 if i > 0 and j == 0 else 1
                    blocks.append(cls(c, p, stride, affine_bn, shortcut))
                    c = p * cls.expansion
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(c, input.classes, bias=bias)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for i in range(self.stages):
                x = getattr(self, f"layer{i + 1}")(x)
            return self.fc(self.avgpool(x).flatten(1))

    return SimpleNamespace(
        ShortcutA=ShortcutA, BasicBlock=BasicBlock, Bottleneck=Bottleneck, ResNet=ResNet
    )


def build(input, *, name: str, width: float, bias: bool, affine_bn: bool):
    from ticketkit.models import scaled

    block, layers = LAYOUTS[name]
    planes = [scaled(p, width, f"{name}-imagenet") for p in PLANES]
    return modules().ResNet(
        input, block, layers, planes, stem="imagenet", shortcut="B", bias=bias, affine_bn=affine_bn
    )


@hookimpl
def ticketkit_register_archs(register):
    for name, (block, layers) in LAYOUTS.items():
        kind = "BasicBlock" if block == "basic" else "Bottleneck"
        register(
            ArchSpec(
                name=f"{name}-imagenet",
                summary=f"ResNet-{name[6:]}, ImageNet stem (7x7/2 conv + max-pool), {kind} "
                f"{list(layers)} (torchvision layout)",
                factory=functools.partial(build, name=name),
                options=ResNetOptions,
            )
        )
