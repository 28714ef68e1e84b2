"""Any timm model as a ticketkit architecture: `timm:<name>`, e.g. `timm:resnet18`.

The model is `timm.create_model(name, pretrained=False, num_classes=classes, in_chans=channels)`
(never with pretrained weights: nothing is downloaded). Models that take an image size (ViTs,
Swin, MLP-Mixer, ...) get `img_size=(height, width)`, so small images work; the others are
built without it (found by trying: timm's entrypoints take **kwargs, so their signatures do not
say). `patch_size`, `drop_rate` and `drop_path_rate` are passed only when set, and a model that
does not take one is a UsageError. `bias` and `affine_bn` (the flavor random-weight methods
force: edge-popup and biprop train no biases and no BatchNorm affines) are applied after timm
builds the model: biases of its conv and linear layers, and BatchNorm's scale and shift, are
removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ticketkit import ArchSpec, hookimpl, option
from ticketkit.errors import UsageError, did_you_mean

_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
_OPTION_NAMES = {
    "patch_size": "patch-size",
    "drop_rate": "drop-rate",
    "drop_path_rate": "drop-path-rate",
}


@dataclass(frozen=True)
class TimmOptions:
    drop_rate: float = option(0.0, "dropout before the classifier (timm drop_rate; 0 = off)")
    drop_path_rate: float = option(0.0, "stochastic depth rate (timm drop_path_rate; 0 = off)")
    patch_size: int = option(0, "patch size for patch-based models such as ViTs (0 = default)")
    bias: bool = option(True, "keep the biases of conv and linear layers")
    affine_bn: bool = option(True, "keep BatchNorm's learnable scale and shift")


def build(
    input,
    *,
    variant: str,
    drop_rate: float,
    drop_path_rate: float,
    patch_size: int,
    bias: bool = True,
    affine_bn: bool = True,
):
    model = _create(input, variant, drop_rate, drop_path_rate, patch_size)
    _flavor(model, bias=bias, affine_bn=affine_bn)
    return model


def _flavor(model, *, bias: bool, affine_bn: bool) -> None:
    """Remove biases and BatchNorm affines where the flavor says so."""
    from torch import nn

    for module in model.modules():
        if not bias and isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            module.bias = None
        if not affine_bn and isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight, module.bias, module.affine = None, None, False


def _create(input, variant: str, drop_rate: float, drop_path_rate: float, patch_size: int):
    import timm

    if not variant:
        raise UsageError(
            "arch 'timm:' needs a model name, e.g. timm:resnet18 (see timm.list_models())"
        )
    if not timm.is_model(variant):
        hint = did_you_mean(variant, timm.list_models())
        raise UsageError(f"unknown timm model '{variant}'{hint} (see timm.list_models())")
    if patch_size < 0:
        raise UsageError(f"arch 'timm:{variant}': patch-size must be positive; got {patch_size}")
    extra: dict = {"img_size": (input.height, input.width)}
    for key, value in (
        ("drop_rate", drop_rate),
        ("drop_path_rate", drop_path_rate),
        ("patch_size", patch_size),
    ):
        if value:
            extra[key] = value
    while True:
        try:
            return timm.create_model(
                variant,
                pretrained=False,
                num_classes=input.classes,
                in_chans=input.channels,
                **extra,
            )
        except TypeError as exc:
            match = _UNEXPECTED.search(str(exc))
            if not match or match.group(1) not in extra:
                raise
            key = match.group(1)
            if key != "img_size":
                raise UsageError(
                    f"timm model '{variant}' does not take option {_OPTION_NAMES.get(key, key)}"
                ) from None
            del extra[key]


@hookimpl
def ticketkit_register_archs(register):
    register(
        ArchSpec(
            name="timm",
            summary="any timm model, built with pretrained=False (timm:<name>)",
            factory=build,
            options=TimmOptions,
            family=True,
        )
    )
