"""Contract tests: every registered plugin is exercised the moment it registers.

Archs: build for a small input, masked forward and backward, ticket round trip.
Methods: find a tiny ticket on real data with exact kept counts.
Optimizers and initializers: run through the training loop / fill a tensor.
"""

from __future__ import annotations

import math

import pytest
import torch

from ticketkit.artifacts.ticket import Ticket, load_ticket
from ticketkit.models import arch_options, build_model
from ticketkit.plugin import Setup
from ticketkit.plugins.methods.edgepopup import EdgePopup
from ticketkit.registry import names, registry
from ticketkit.training.data import InputSpec

TIMM_VARIANTS = ["timm:resnet18", "timm:mobilenetv3_small_100"]
SPEC = InputSpec(1, 28, 28, 10)


def arch_names():
    out = []
    for entry in registry().entries("archs"):
        out += TIMM_VARIANTS if entry.spec.family else [entry.spec.name]
    return out


@pytest.mark.parametrize("arch", arch_names())
def test_arch_masked_forward_backward_and_ticket_round_trip(arch, tmp_path):
    torch.manual_seed(0)
    kwargs = arch_options(arch, {}, {"bias": False, "affine_bn": False})
    model = build_model(arch, SPEC, **kwargs)
    method = EdgePopup(None, Setup(k=0.5))
    method.prepare(model)
    x = torch.randn(2, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.square().sum().backward()
    assert any(float(layer.scores.grad.abs().sum()) > 0 for layer in method.sparsifier.layers)
    method.finish(model)
    model.eval()
    ticket = Ticket.from_model(
        model,
        arch=arch,
        arch_kwargs=kwargs,
        input=vars(SPEC),
        method="edgepopup",
        method_options={},
        k=0.5,
        scope="layer",
        granularity="unstructured",
        init={},
        dataset="fashion-mnist",
        metrics={},
        config={},
    )
    for path, info in ticket.meta["layers"].items():
        n = math.prod(info["shape"])
        assert info["kept"] == n - math.floor(0.5 * n)
    path = ticket.save(tmp_path / "t.safetensors")
    with torch.no_grad():
        assert torch.allclose(load_ticket(path)(x), model(x), atol=1e-6)


@pytest.mark.parametrize("method", names("methods"))
def test_method_finds_a_ticket_on_real_data(method, tmp_path, pretrained_digits_mlp):
    from ticketkit.registry import get_method
    from ticketkit.specs import PHASES
    from ticketkit.testing import check_finds_ticket

    assert get_method(method).phase in PHASES  # check_finds_ticket runs it under its command
    from_checkpoint = get_method(method).load().source == "checkpoint"
    check_finds_ticket(method, tmp_path, pretrained_digits_mlp if from_checkpoint else None)


@pytest.mark.parametrize("optimizer", names("optimizers"))
def test_optimizer_trains_scores(optimizer, tmp_path):
    from ticketkit import jobs
    from ticketkit.runs.config import PruneConfig, resolve

    cfg = resolve(
        PruneConfig,
        {
            "method": "edgepopup",
            "arch": "mlp",
            "k": 0.5,
            "dataset": "digits",
            "epochs": 2,
            "optimizer": optimizer,
            "lr": 0.05,
            "eval_every": 1,
            "out": str(tmp_path),
        },
    )
    assert jobs.prune(cfg).metrics["test_acc1"] > 20  # 10 classes: well above chance


@pytest.mark.parametrize("scheme", names("initializers"))
def test_initializer_fills_with_the_declared_scale(scheme):
    from ticketkit.registry import get_initializer

    w = torch.empty(256, 512)
    get_initializer(scheme).load()(
        w, fan=512.0, gain=math.sqrt(2), generator=torch.Generator().manual_seed(0)
    )
    sigma = math.sqrt(2 / 512)
    assert torch.isfinite(w).all()
    if "constant" in scheme:
        assert torch.allclose(w.abs(), torch.full_like(w, sigma))
        assert (w < 0).any() == (scheme == "signed-constant")
    else:
        assert abs(float(w.std()) - sigma) / sigma < 0.02
