"""build_model: a network that cannot take the dataset's images is a usage error up front."""

import pytest
import torch
from torch import nn

from ticketkit.core.data import InputSpec
from ticketkit.core.model import _check_fits, build_model
from ticketkit.errors import UsageError

DIGITS = InputSpec(channels=1, height=8, width=8, classes=10)


def test_an_arch_whose_kernels_exceed_the_images():
    with pytest.raises(UsageError, match=r"'timm:vit_tiny_patch16_224' cannot take 1x8x8 images"):
        build_model("timm:vit_tiny_patch16_224", DIGITS)


def test_an_arch_that_does_not_give_one_logit_per_class():
    with pytest.raises(UsageError, match=r"shape \(1, 7\) for one image; expected \(1, 10\)"):
        _check_fits(nn.Sequential(nn.Flatten(), nn.Linear(64, 7)), "toy", DIGITS)


def test_the_check_leaves_the_model_and_the_rng_as_they_were():
    import dataclasses

    from ticketkit.registry import get_arch

    torch.manual_seed(0)
    checked = build_model("resnet20", DIGITS)
    after_checked = torch.get_rng_state()
    torch.manual_seed(0)
    spec = get_arch("resnet20")
    plain = spec.load()(DIGITS, **dataclasses.asdict(spec.make_options({})))  # no check
    assert torch.equal(torch.get_rng_state(), after_checked)
    assert checked.training
    for (name, a), b in zip(checked.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name  # weights and BatchNorm statistics untouched
