"""Under torchrun: two CPU processes (gloo) train one job, and rank 0 alone writes it."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ticketkit.training import distributed


def test_shares_of_a_global_batch_cover_it_evenly(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    order = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    batches = list(distributed.shard(order, 8))
    assert len(batches) == distributed.steps(23, 8) == 3
    assert torch.equal(torch.cat(batches)[:23], order)  # the single-process order, padded
    assert all(len(b) % 4 == 0 and len(b) > 0 for b in batches)
    with pytest.raises(Exception, match="global batch"):
        distributed.check_batch(30)


ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def torchrun_env() -> dict[str, str]:
    """This environment for a torchrun launch: offline, one thread a rank, no inherited rank."""
    env = {**os.environ, "TICKETKIT_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return env


def start_torchrun(*args: str, out) -> subprocess.Popen:
    """`torchrun --nproc_per_node=2 -m ticketkit ARGS --out OUT`, started, not waited for."""
    command = [*TORCHRUN, "--nproc_per_node=2", "--standalone", "-m", "ticketkit"]
    return launch([*command, *map(str, args), "--out", str(out)])


def launch(command: list[str]) -> subprocess.Popen:
    """A torchrun command started in its own session, so a hung run's workers are killed with
    it rather than orphaned."""
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=torchrun_env(),
        start_new_session=True,
    )


def torchrun_script(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess:
    """A Python script (`source`) run by two torchrun processes, to its end."""
    script = tmp_path / "script.py"
    script.write_text(source)
    return subprocess.run(
        [*TORCHRUN, "--nproc_per_node=2", "--standalone", str(script), *args],
        capture_output=True,
        text=True,
        env=torchrun_env(),
        timeout=120,
        cwd=ROOT,  # ticketkit importable as in the suite
    )


def torchrun(*args: str, out) -> subprocess.CompletedProcess:
    """Run ticketkit under two-process torchrun to the end (a hang fails the test, not CI)."""
    proc = start_torchrun(*args, out=out)
    command = proc.args
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"torchrun hung:\n{err}") from None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.mark.slow
def test_two_processes_make_one_run_and_resume_it(tmp_path, cli):
    args = "prune --method edgepopup --arch mlp --dataset digits --k 0.5 --epochs 2".split()
    first = torchrun(*args, out=tmp_path)
    assert first.returncode == 0, first.stderr
    ticket = first.stdout.strip()
    assert ticket.endswith("ticket.safetensors") and len(first.stdout.splitlines()) == 1
    assert first.stderr.count("top-1") == 1  # rank 0 alone prints
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 1
    run_dir = tmp_path / rows[0]["run"]
    lines = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["epoch"] for r in lines if r["phase"] == "prune"] == [1, 2]
    assert not list(tmp_path.rglob(".*.tmp"))
    evaluated = cli("eval", ticket, "--json")
    assert evaluated.code == 0, evaluated.err
    assert json.loads(evaluated.out)["metrics"]["test_acc1"] > 50

    os.unlink(ticket)  # as if killed after its last checkpoint: both ranks resume from it
    again = torchrun(*args, out=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr and "epoch 1:" not in again.stderr
    assert again.stdout.strip() == ticket and os.path.exists(ticket)
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 2
