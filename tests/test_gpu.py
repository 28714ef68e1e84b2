"""CUDA paths: selection, training and ticket loading on a GPU (skipped without CUDA)."""

import math

import pytest
import torch

from ticketkit.masks.select import Selector, kept_count

pytestmark = pytest.mark.gpu


def test_cuda_selection_is_exact_with_ties():
    a = torch.tensor([0.5, 1.0, 0.5, 2.0] * 50_000, device="cuda")
    for keep in (1, 3, 50_001, kept_count(a.numel(), 0.3)):
        mask = Selector().mask(a, keep)
        assert int(mask.sum()) == keep
        order = torch.sort(-a.cpu(), stable=True).indices[:keep]
        expected = torch.zeros(a.numel(), dtype=torch.bool)
        expected[order] = True
        assert torch.equal(mask.cpu(), expected)


def test_cuda_selection_does_not_wait_for_the_device():
    """A host synchronisation per layer would stall the GPU's queue once a layer a step."""
    a = torch.rand(2_000_000, device="cuda")
    out = torch.empty_like(a)
    Selector().select(a, 100, out)  # allocations and kernels' first loads may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for keep in (1, 1000, kept_count(a.numel(), 0.5), a.numel() - 1):
            Selector().select(a, keep, out)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(out.sum()) == a.numel() - 1


def test_prune_on_cuda_and_load_the_ticket_on_both_devices(tmp_path):
    from ticketkit import jobs
    from ticketkit.artifacts.ticket import Ticket
    from ticketkit.runs.config import PruneConfig, resolve

    cfg = resolve(
        PruneConfig,
        {
            "method": "biprop",
            "arch": "mlp",
            "k": 0.3,
            "dataset": "digits",
            "epochs": 2,
            "device": "cuda",
            "out": str(tmp_path),
        },
    )
    result = jobs.prune(cfg)
    ticket = Ticket.read(result.path)
    for info in ticket.meta["layers"].values():
        n = math.prod(info["shape"])
        assert info["kept"] == n - math.floor((1 - 0.3) * n)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        on_cpu = ticket.build("cpu")(x)
        on_gpu = ticket.build("cuda")(x.cuda()).cpu()
    assert torch.allclose(on_cpu, on_gpu, atol=1e-4)


def test_amp_trains_on_cuda_in_bf16_and_loss_scaled_fp16(tmp_path):
    from ticketkit import jobs
    from ticketkit.runs.config import PruneConfig, resolve

    for amp in ("bf16", "fp16"):
        cfg = resolve(
            PruneConfig,
            {
                "method": "biprop",
                "arch": "mlp",
                "k": 0.5,
                "dataset": "digits",
                "epochs": 2,
                "device": "cuda",
                "amp": amp,
                "out": str(tmp_path / amp),
            },
        )
        result = jobs.prune(cfg)
        assert result.metrics["test_acc1"] > 60, (amp, result.metrics)
