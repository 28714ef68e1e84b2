"""`finetune --psg`: E2-Train's quantiser on hand-computed values; the PSG weight gradient of
Conv2d and Linear equals an independent computation from quantised operands (thresholded, the
input gradient full precision); finetune with Bop and PSG trains a ticket; bad settings are
`Error:` lines."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketkit import jobs, testing
from ticketkit.artifacts.ticket import Ticket
from ticketkit.training.psg import PSGOptions, attach_psg, quantize


def test_quantize_on_hand_values():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0, -0.3])
    # signed, 2 bits on [-1, 1): step 0.5, levels -1, -0.5, 0, 0.5; zeros stay exactly 0
    assert quantize(x, 2, torch.tensor(1.0), signed=True).tolist() == [0, 0, 0.5, 0.5, -0.5]
    # unsigned, 2 bits on [0, 1): step 0.25, the top clipped to 0.75, negatives to 0
    assert quantize(x, 2, torch.tensor(1.0), signed=False).tolist() == [0, 0.25, 0.5, 0.75, 0]


def by_hand(x: torch.Tensor, bits: int, bound: float, signed: bool) -> torch.Tensor:
    """The quantiser's definition, written out again: q = round(clamp((x - lo) / step))."""
    lo = -bound if signed else 0.0
    step = (bound - lo) / 2**bits
    q = torch.round(torch.clamp((x - lo) / step, 0, 2**bits - 1))
    return torch.where(x == 0, torch.zeros_like(x), q * step + lo)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_weight_gradient_comes_from_quantised_operands(kind):
    torch.manual_seed(0)
    if kind == "conv":
        layer = nn.Conv2d(2, 3, 3, padding=1)
        x = torch.rand(4, 2, 5, 5)  # post-ReLU: unsigned
        plain = lambda inp, w: F.conv2d(inp, w, layer.bias, padding=1)  # noqa: E731
        per_sample_max = x.flatten(1).amax(1).mean()
    else:
        layer = nn.Linear(6, 3)
        x = torch.randn(4, 6)  # negatives: signed
        plain = lambda inp, w: F.linear(inp, w, layer.bias)  # noqa: E731
        per_sample_max = x.abs().amax(1).mean()
    r = torch.randn_like(plain(x, layer.weight))  # dL/dy
    w = layer.weight.detach().clone().requires_grad_()
    xin = x.clone().requires_grad_()
    gx_full, _ = torch.autograd.grad((plain(xin, w) * r).sum(), (xin, w))
    xq = by_hand(x, 4, float(per_sample_max), signed=kind == "linear")
    rq = by_hand(r, 6, float(r.abs().max()), signed=True)
    (gw,) = torch.autograd.grad((plain(xq, w) * rq).sum(), (w,))
    expected = gw * (gw.abs() >= 0.2 * gw.abs().max())

    attach_psg([("layer", layer)], PSGOptions(msb_bits=4, msb_bits_grad=6, threshold=0.2))
    xin = x.clone().requires_grad_()
    y = layer(xin)
    assert torch.equal(y, plain(x, layer.weight))  # the forward is unchanged
    (y * r).sum().backward()
    assert torch.allclose(layer.weight.grad, expected, atol=1e-6)
    assert int((layer.weight.grad == 0).sum()) > 0  # the threshold zeroed some entries
    assert torch.allclose(xin.grad, gx_full, atol=1e-6)  # full-precision input gradient
    assert torch.allclose(layer.bias.grad, r.sum(tuple(i for i in range(r.dim()) if i != 1)))


def test_finetune_with_bop_and_psg(tmp_path, cli):
    cfg = testing.prune_config("synflow", tmp_path / "p", epochs=0, options={"iterations": 3})
    ticket = str(jobs.prune(cfg).path)
    common = ("--optimizer", "bop", "-O", "ar=0.2", "--epochs", "1", "--subset", "256")
    common = (*common, "--out", tmp_path)
    r = cli("finetune", ticket, *common, "--psg", "--psg-option", "sign=true", "--json")
    assert r.code == 0, r.err
    tuned = Ticket.read(json.loads(r.out)["path"])
    assert tuned.meta["config"]["psg"] is True and tuned.meta["weights"] == "init-seed"
    before = Ticket.read(ticket).weights()
    assert any(not torch.equal(w, tuned.weights()[p]) for p, w in before.items())  # flipped
    for bad, message in (
        (("--psg", "--psg-option", "msb-bits=0"), "msb-bits must be in 1..24"),
        (("--psg", "--psg-option", "bits=8"), "has no option 'bits'"),
        (("--psg-option", "threshold=0"), "--psg-option is given without --psg"),
    ):
        r = cli("finetune", ticket, *common, *bad)
        assert r.code == 2 and r.err.startswith("Error: ") and message in r.err, r.err
