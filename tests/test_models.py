"""build_model: a network that cannot take the dataset's images is a usage error up front."""

import pytest
import torch
from torch import nn

from ticketkit.errors import UsageError
from ticketkit.models import _check_fits, build_model
from ticketkit.training.data import InputSpec

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


def test_an_arch_option_a_method_forces_and_the_arch_does_not_declare_is_an_error():
    from ticketkit.models import arch_options

    with pytest.raises(UsageError) as caught:
        arch_options("mlp", {}, {"bias": False, "dropout": 0.5}, "mine")
    message = str(caught.value)
    assert "method 'mine'" in message and "arch 'mlp'" in message
    assert "dropout=0.5" in message and "bias=False" not in message
    with pytest.raises(UsageError, match=r"'mine' forces arch option binary_actt=True.*'conv4'"):
        arch_options("conv4", {}, {"binary_actt": True}, "mine")
    # declared ones apply, under what the user sets
    forced = {"bias": False, "affine_bn": False}
    resolved = arch_options("conv4", {"affine_bn": True}, forced, "edgepopup")
    assert resolved["bias"] is False and resolved["affine_bn"] is True


def test_timm_models_take_the_random_weight_flavor():
    from torch import nn

    from ticketkit.models import arch_options

    options = arch_options("timm:resnet18", {}, {"bias": False, "affine_bn": False}, "edgepopup")
    model = build_model("timm:resnet18", DIGITS, **options)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert layers and all(m.bias is None for m in layers)
    assert norms and all(m.weight is None and not m.affine for m in norms)
    default = build_model("timm:resnet18", DIGITS)
    assert default.fc.bias is not None


def test_prune_refuses_a_method_forcing_an_option_the_arch_lacks(cli, tmp_path, monkeypatch):
    from ticketkit.plugins.methods.edgepopup import EdgePopup

    monkeypatch.setattr(EdgePopup, "arch_options", lambda self: {"dropout": 0.1})
    r = cli(
        *"prune --method edgepopup --arch mlp --dataset digits --k 0.5".split(),
        *("--epochs", "1", "--out", tmp_path),
    )
    assert r.code == 2
    assert "method 'edgepopup' forces arch option dropout=0.1" in r.err
    assert "arch 'mlp'" in r.err
    assert not any(tmp_path.iterdir())  # refused before a run directory exists
