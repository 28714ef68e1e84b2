"""The `timm` arch family: `timm:<name>` builds any timm model with pretrained=False."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ticketkit.errors import UsageError
from ticketkit.models import build_model
from ticketkit.plugins.archs import timm as timm_arch
from ticketkit.training.data import InputSpec

FOUND: list = []
timm_arch.ticketkit_register_archs(register=FOUND.append)
(SPEC,) = FOUND

FMNIST = InputSpec(1, 28, 28, 10)
CIFAR100 = InputSpec(3, 32, 32, 100)
DIGITS = InputSpec(1, 8, 8, 10)


build = build_model  # through the registry, as the CLI builds them


def forward(model, input, batch=2):
    with torch.no_grad():
        return model.eval()(torch.randn(batch, input.channels, input.height, input.width))


def test_spec():
    assert SPEC.name == "timm" and SPEC.family
    assert SPEC.summary == "any timm model, built with pretrained=False (timm:<name>)"
    declared = {f.name for f in dataclasses.fields(SPEC.options)}
    assert {"drop_rate", "patch_size"} <= declared
    assert {"bias", "affine_bn"} <= declared  # the flavor random-weight methods force


@pytest.mark.parametrize("arch", ["timm:resnet18", "timm:mobilenetv3_small_100"])
@pytest.mark.parametrize("input", [FMNIST, CIFAR100, DIGITS], ids=["1x28x28", "3x32x32", "1x8x8"])
def test_cnn_forward(arch, input):
    model = build(arch, input)
    assert forward(model, input).shape == (2, input.classes)
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == input.channels


def test_vit_with_small_images_and_patch_size():
    model = build("timm:vit_tiny_patch16_224", CIFAR100, patch_size=4)
    assert model.patch_embed.patch_size == (4, 4)
    assert model.patch_embed.num_patches == 64  # (32 / 4) ** 2, from img_size=(32, 32)
    assert forward(model, CIFAR100).shape == (2, 100)

    model = build("timm:vit_tiny_patch16_224", FMNIST, patch_size=7)
    assert model.patch_embed.num_patches == 16
    assert forward(model, FMNIST).shape == (2, 10)


def test_options_are_passed_through():
    model = build("timm:resnet18", FMNIST, drop_rate=0.25)
    assert model.drop_rate == 0.25
    with pytest.raises(UsageError, match="does not take option patch-size"):
        build("timm:resnet18", FMNIST, patch_size=4)


def test_never_pretrained(monkeypatch):
    import timm

    seen = {}
    create = timm.create_model

    def spy(name, **kwargs):
        seen.update(kwargs, name=name)
        return create(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    build("timm:mobilenetv3_small_100.lamb_in1k", DIGITS)
    assert seen["pretrained"] is False and seen["name"] == "mobilenetv3_small_100.lamb_in1k"
    assert seen["num_classes"] == 10 and seen["in_chans"] == 1


def test_unknown_name_suggests():
    with pytest.raises(UsageError, match="did you mean 'resnet18'") as info:
        build("timm:resnet18x", FMNIST)
    assert "unknown timm model 'resnet18x'" in str(info.value)
    with pytest.raises(UsageError, match="unknown timm model"):
        build("timm:zzzz_qqqq", FMNIST)


def test_empty_name():
    with pytest.raises(UsageError, match="needs a model name"):
        build("timm:", FMNIST)


def test_registry_finds_it():
    import ticketkit.registry

    if "timm" not in ticketkit.registry.names("archs"):
        pytest.skip(
            "the arch-timm entry point is not installed yet (add it to pyproject.toml "
            "and reinstall)"
        )
    from ticketkit.models import build_model

    model = build_model("timm:resnet18", DIGITS, drop_rate=0.1)
    assert forward(model, DIGITS).shape == (2, 10)
    assert ticketkit.registry.get_arch("timm:anything").name == "timm"
