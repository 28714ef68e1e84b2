"""The benchmarks still run against the current API (tiny sizes; their numbers are not checked)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


@pytest.mark.parametrize("malloc", [[], ["--malloc-defaults"]])
def test_mask_overhead_prints_every_column(malloc):
    lines = _run("mask_overhead.py", "--archs", "mlp", "--steps", "1", "--rounds", "1", *malloc)
    header, row = lines[-2].split(), lines[-1].split()
    assert header[0] == "arch" and row[0] == "mlp"
    assert len(row) == len(header) - 2  # "dense ms" and "biprop ms" are two words each
    assert all(float(x) > 0 for x in row[1:])


def test_bip_cost_prints_its_ratio():
    lines = _run("bip_cost.py", "--arch", "mlp", "--batch", "16", "--steps", "1", "--rounds", "1")
    assert float(lines[-1].split("| ratio")[1]) > 0, lines


def test_mask_overhead_replaced_selectors_do_all_the_selection(monkeypatch):
    """The kthvalue and sort columns time their own selection, never the fused warm path."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import mask_overhead
    import torch

    from ticketkit.masks.sparsifier import sparsifier_of
    from ticketkit.training.data import InputSpec

    calls = []

    class Counting(mask_overhead.KthvalueSelector):
        def select(self, a, keep, out):
            calls.append(keep)
            super().select(a, keep, out)

    model = mask_overhead.biprop_model("mlp", InputSpec(1, 28, 28, 10), Counting)
    step = mask_overhead.Stepper(model, torch.randn(4, 1, 28, 28), torch.arange(4))
    step(3)
    layers = sparsifier_of(model).layers
    assert len(calls) == 3 * len(layers)  # every layer, every step
    assert all(int(layer.mask.sum()) == layer.param.kept for layer in layers)


@pytest.mark.slow  # two exports of a full-width resnet20: ~20 s on a busy 2-core machine
def test_export_throughput_prints_its_table():
    lines = _run(
        "export_throughput.py",
        *("--archs", "resnet20", "--ks", "0.5", "--batches", "2"),
        *("--rounds", "1", "--iters", "1", "--no-bytes"),
    )
    row = lines[-1].split("|")
    assert row[1].strip() == "resnet20" and row[-2].strip().endswith("x"), lines


def test_gpu_step_runs_anywhere_and_prints_its_ratios():
    """The GPU benchmark's table on CPU (tiny): the script a lent GPU runs (`benchmarks/gpu.sh`)."""
    lines = _run(
        "gpu_step.py",
        *("--device", "cpu", "--amp", "none", "--batch", "2", "--archs", "conv2:28"),
        *("--steps", "1", "--rounds", "1"),
    )
    header, row = lines[-2].split(), lines[-1].split()
    assert header[:2] == ["arch", "size"] and row[:2] == ["conv2", "28"]
    assert all(float(x) > 0 for x in row[2:5]) and row[5:] == ["-", "-", "-"]
