"""--amp: bf16 autocast and loss-scaled fp16 train on CPU; fp16 resumes with its scale."""

import pytest

from ticketkit.errors import UsageError
from ticketkit.plugin import Method
from ticketkit.training.precision import check


def test_bf16_trains_on_cpu_and_is_recorded(cli, tmp_path):
    args = "prune --method biprop --arch mlp --dataset digits --k 0.5 --epochs 1 --amp bf16"
    result = cli(*args.split(), "--json", "--out", tmp_path)
    assert result.code == 0, result.err
    assert "amp: bf16" in next(tmp_path.glob("*/config.yaml")).read_text()


def test_an_unknown_mode_is_one_error_line(cli, tmp_path):
    base = "prune --method biprop --arch mlp --dataset digits --k 0.5 --epochs 1 --device cpu"
    result = cli(*base.split(), "--amp", "fp8", "--out", tmp_path)
    assert result.code == 2 and result.err.startswith("Error:")
    assert "must be one of bf16, fp16" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_fp16_is_loss_scaled_checkpointed_and_resumes_to_the_same_ticket(tmp_path, monkeypatch):
    """Started high (as large networks' gradients make torch's default), the scale halves on
    the first steps' overflows, skipping them, then holds: a resume that restarted from the
    initial scale would skip steps again and end on another ticket."""
    import functools
    import json

    import torch
    from safetensors import safe_open

    from tests.training.test_loop import cfg
    from ticketkit import jobs
    from ticketkit.artifacts.ticket import Ticket
    from ticketkit.testing import interrupted_after_first_checkpoint

    high = 2.0**40
    scaler = functools.partial(torch.amp.GradScaler, init_scale=high)
    monkeypatch.setattr(torch.amp, "GradScaler", scaler)
    full = jobs.prune(cfg(tmp_path / "a", amp="fp16"))
    assert full.metrics["test_acc1"] > 60
    with safe_open(str(full.path.parent / "checkpoints" / "last.safetensors"), "pt") as f:
        scale = json.loads(f.metadata()["info"])["precision"]["scale"]
    assert 0 < scale < high  # overflowing steps were skipped and the scale backed off
    with pytest.raises(KeyboardInterrupt), interrupted_after_first_checkpoint():
        jobs.prune(cfg(tmp_path / "b", amp="fp16"))
    resumed = jobs.prune(cfg(tmp_path / "b", amp="fp16"))
    a, b = Ticket.read(full.path), Ticket.read(resumed.path)
    assert a.meta["payload_sha256"] == b.meta["payload_sha256"]
    assert a.meta["metrics"] == b.meta["metrics"]


def test_fp16_refuses_a_method_with_its_own_step():
    class Own(Method):
        def train_step(self, model, batch, optimizers):  # pragma: no cover - never run
            raise AssertionError

    try:
        check("fp16", Own.__new__(Own))
    except UsageError as exc:
        assert "bf16" in str(exc)
    else:
        raise AssertionError("fp16 accepted a method that cannot be loss-scaled")
