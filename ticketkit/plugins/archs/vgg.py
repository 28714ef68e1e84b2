"""VGG-Small (the binary-network benchmark model used by biprop): six 3x3 convs of
128-128-256-256-512-512 channels (times `width`), max-pool after every second, BN after every
conv, one linear classifier.

biprop's own VGG_Small leaves most ReLUs commented out; ticketkit builds the standard form
(conv -> BN -> activation, pool before BN on the pooled convs). The binary-activation variant
uses sign everywhere except before the classifier, which sees BN -> ReLU as in biprop.

VGG-11-BN and VGG-16-BN in the CIFAR layout of BiP and HYDRA (their vgg.py): configurations
"11" = 64 M 128 M 256 256 M 512 512 M 512 512 and "16" = 64 64 M 128 128 M 256 256 256 M
512 512 512 M 512 512 512 (no max-pool after the last conv), each conv 3x3 with padding 1,
then BN, then ReLU; AdaptiveAvgPool2d((2, 2)); Linear(512 * 4 * width, 256), ReLU,
Linear(256, 256), ReLU, Linear(256, classes). Conv widths scale with `width`, the 256-unit
classifier does not. For small images a max-pool halves only the sides that are still at
least 2 pixels and becomes nn.Identity when both are 1 (so layer indices do not depend on the
image size): 8x8 digits go 8 -> 4 -> 2 -> 1 -> 1 and the adaptive pool then repeats the 1x1
map to 2x2. 28x28 and 32x32 images pool exactly as in the reference (floor division).
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

    from ticketkit.models import activation, norm, pooled_size, scaled

    widths = [scaled(c, width, "vgg-small") for c in (128, 128, 256, 256, 512, 512)]
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


CONFIGS = {
    "11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
}


@dataclass(frozen=True)
class VGGBNOptions:
    width: float = option(1.0, "width multiplier for every conv layer")
    affine_bn: bool = option(True, "learnable BatchNorm scale/shift")
    bias: bool = option(True, "biases on conv and linear layers")


def build_bn(input, *, depth: str, width: float, affine_bn: bool, bias: bool):
    """VGG-11-BN or VGG-16-BN (CONFIGS[depth]) for `input`."""
    from torch import nn

    from ticketkit.models import norm, scaled

    layers: list = []
    c_in, h, w = input.channels, input.height, input.width
    for v in CONFIGS[depth]:
        if v == "M":
            kernel = (2 if h >= 2 else 1, 2 if w >= 2 else 1)
            layers.append(nn.MaxPool2d(kernel) if kernel != (1, 1) else nn.Identity())
            h, w = h // kernel[0], w // kernel[1]
            continue
        c = scaled(v, width, f"vgg{depth}-bn")
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=bias), norm(c, 2, affine_bn)]
        layers.append(nn.ReLU(inplace=True))
        c_in = c
    return nn.Sequential(
        nn.Sequential(*layers),
        nn.AdaptiveAvgPool2d((2, 2)),
        nn.Flatten(),
        nn.Sequential(
            nn.Linear(c_in * 4, 256, bias=bias),
            nn.ReLU(inplace=True),
            nn.Linear(256, 256, bias=bias),
            nn.ReLU(inplace=True),
            nn.Linear(256, input.classes, bias=bias),
        ),
    )


def _bn_factory(depth: str):
    def factory(input, **options):
        return build_bn(input, depth=depth, **options)

    return factory


@hookimpl
def ticketkit_register_archs(register):
    register(
        ArchSpec(
            name="vgg-small",
            summary="VGG-Small, 6 convs 128..512 ch with BN (binary-network benchmark)",
            factory=build,
            options=VGGSmallOptions,
        )
    )
    for depth, cfg in CONFIGS.items():
        convs = sum(1 for v in cfg if v != "M")
        register(
            ArchSpec(
                name=f"vgg{depth}-bn",
                summary=f"VGG-{depth} with BN, {convs} convs 64..512 ch + FC 256-256 (BiP/HYDRA)",
                factory=_bn_factory(depth),
                options=VGGBNOptions,
            )
        )
