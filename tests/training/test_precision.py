"""--amp: bf16 autocast trains on CPU; fp16 (loss-scaled, CUDA only) is refused clearly here."""

import torch

from ticketkit.errors import UsageError
from ticketkit.plugin import Method
from ticketkit.training.precision import check


def test_bf16_trains_on_cpu_and_is_recorded(cli, tmp_path):
    args = "prune --method biprop --arch mlp --dataset digits --k 0.5 --epochs 1 --amp bf16"
    result = cli(*args.split(), "--json", "--out", tmp_path)
    assert result.code == 0, result.err
    assert "amp: bf16" in next(tmp_path.glob("*/config.yaml")).read_text()


def test_fp16_on_cpu_and_unknown_modes_are_one_error_line(cli, tmp_path):
    base = "prune --method biprop --arch mlp --dataset digits --k 0.5 --epochs 1 --device cpu"
    for amp, says in (("fp16", "needs CUDA"), ("fp8", "must be one of bf16, fp16")):
        result = cli(*base.split(), "--amp", amp, "--out", tmp_path)
        assert result.code == 2 and result.err.startswith("Error:") and says in result.err
        assert len(result.err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_fp16_refuses_a_method_with_its_own_step():
    class Own(Method):
        def train_step(self, model, batch, optimizers):  # pragma: no cover - never run
            raise AssertionError

    try:
        check("fp16", torch.device("cuda"), Own.__new__(Own))
    except UsageError as exc:
        assert "bf16" in str(exc)
    else:
        raise AssertionError("fp16 accepted a method that cannot be loss-scaled")
