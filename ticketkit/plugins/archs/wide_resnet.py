"""Wide ResNet WRN-depth-widen (Zagoruyko & Komodakis 2016), in the pre-activation form of
xternalz/WideResNet-pytorch that BiP, HYDRA and DSR use.

A 3x3 stem conv with 16 channels; three stages of 16w/32w/64w channels (w = `widen`) with
strides 1/2/2, each of n = (depth - 4) / 6 pre-activation BasicBlocks: BN, ReLU, 3x3 conv,
BN, ReLU, dropout, 3x3 conv. Where the channel count changes the block's first BN-ReLU is
shared with a 1x1 conv shortcut (no BN after it); otherwise the shortcut is the identity.
Then BN, ReLU, global average pool (adaptive, so any image size works) and a linear
classifier. Convs have no bias, as in the reference; `bias` is the classifier's bias.
`wrn-28-2`, `wrn-28-4`, `wrn-28-10` and `wrn-16-8` are the same network with other defaults.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from ticketkit import ArchSpec, hookimpl, option
from ticketkit.errors import UsageError

PRESETS = ((28, 2), (28, 4), (28, 10), (16, 8))


@dataclass(frozen=True)
class WideResNetOptions:
    depth: int = option(28, "total depth, 6n + 4 (n pre-activation blocks per stage)")
    widen: int = option(2, "widening factor k: stages have 16k, 32k, 64k channels")
    dropout: float = option(0.0, "dropout between the two convs of each block")
    bias: bool = option(True, "bias on the linear classifier (the convs have none)")
    affine_bn: bool = option(True, "learnable BatchNorm scale/shift")


def _preset_options(depth: int, widen: int) -> type:
    """WideResNetOptions with other defaults for depth and widen."""
    help = {f.name: f.metadata["help"] for f in dataclasses.fields(WideResNetOptions)}
    fields = [
        ("depth", int, option(depth, help["depth"])),
        ("widen", int, option(widen, help["widen"])),
    ]
    return dataclasses.make_dataclass(
        f"WRN{depth}x{widen}Options",
        fields,
        bases=(WideResNetOptions,),
        frozen=True,
        namespace={"__module__": __name__},
    )


@functools.cache
def _modules():
    """The nn.Module classes, defined on first use so that importing this module needs no torch."""
    from torch import nn

    class PreActBlock(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int, dropout: float, affine: bool):
            super().__init__()
            self.bn1, self.relu1 = nn.BatchNorm2d(c_in, affine=affine), nn.ReLU(inplace=True)
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
            self.bn2, self.relu2 = nn.BatchNorm2d(c_out, affine=affine), nn.ReLU(inplace=True)
            self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
            self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
            self.equal = c_in == c_out
            self.shortcut = (
                None if self.equal else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
            )

        def forward(self, x):
            out = self.relu1(self.bn1(x))
            if not self.equal:  # the shortcut sees the pre-activated input
                x = out
            out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(out)))))
            return out + (x if self.shortcut is None else self.shortcut(x))

    class WideResNet(nn.Module):
        def __init__(
            self, input, depth: int, widen: int, dropout: float, bias: bool, affine_bn: bool
        ):
            super().__init__()
            n = (depth - 4) // 6
            widths = (16 * widen, 32 * widen, 64 * widen)
            self.conv1 = nn.Conv2d(input.channels, 16, 3, padding=1, bias=False)
            c = 16
            for i, w in enumerate(widths):
                blocks = []
                for j in range(n):
                    stride = 2 if i > 0 and j == 0 else 1
                    blocks.append(PreActBlock(c, w, stride, dropout, affine_bn))
                    c = w
                setattr(self, f"block{i + 1}", nn.Sequential(*blocks))
            self.bn1, self.relu = nn.BatchNorm2d(c, affine=affine_bn), nn.ReLU(inplace=True)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(c, input.classes, bias=bias)

        def forward(self, x):
            x = self.block3(self.block2(self.block1(self.conv1(x))))
            return self.fc(self.avgpool(self.relu(self.bn1(x))).flatten(1))

    return WideResNet


def build(input, *, depth: int, widen: int, dropout: float, bias: bool, affine_bn: bool):
    if depth < 10 or (depth - 4) % 6:
        raise UsageError(
            f"arch 'wide-resnet': depth must be 6n + 4 with n >= 1 (10, 16, 22, "
            f"28, 40, ...); got {depth}"
        )
    if widen < 1:
        raise UsageError(f"arch 'wide-resnet': widen must be at least 1; got {widen}")
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"arch 'wide-resnet': dropout must be in [0, 1); got {dropout}")
    return _modules()(input, depth, widen, dropout, bias, affine_bn)


@hookimpl
def ticketkit_register_archs(register):
    register(
        ArchSpec(
            name="wide-resnet",
            summary="pre-activation Wide ResNet WRN-depth-widen (Zagoruyko & Komodakis)",
            factory=build,
            options=WideResNetOptions,
        )
    )
    for depth, widen in PRESETS:
        register(
            ArchSpec(
                name=f"wrn-{depth}-{widen}",
                summary=f"Wide ResNet WRN-{depth}-{widen}: {(depth - 4) // 6} blocks per stage, "
                f"{16 * widen}/{32 * widen}/{64 * widen} ch",
                factory=build,
                options=_preset_options(depth, widen),
            )
        )
