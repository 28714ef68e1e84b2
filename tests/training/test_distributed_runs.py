"""The "Scale" issue's torchrun acceptance on CPU (gloo): biprop, finetune and rewire under
two processes make one run like a single process does, reach its accuracy with the same global
batch, refuse ranks that disagree, and a killed two-process run resumes to the same ticket.

Why `--subset 1436`: digits has 1437 training images. Under torchrun the epoch's permutation
is padded to a multiple of the world size with its first index (`distributed.shard`, as
torch's DistributedSampler), so the last step of every epoch trains on one duplicated image
that a single process does not see. That changes the trajectory (measured on the full split,
biprop 2 epochs: 87.50% in one process vs 86.39% under torchrun; with --subset 1437 88.33% vs
89.44%), while an even train split gives the same global batches and the same accuracy to the
last digit (1436: 86.94% both; 1280: 87.78% both). finetune and rewire (set) matched to the
last digit even on the full split; biprop's top-k of scores is what one extra image tips. The
subset compares what the issue claims: sharded gradients equal the single-process ones up to
reduction order.
"""

import csv
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.training.test_distributed import start_torchrun, torchrun, torchrun_script

EVEN = ["--subset", "1436", "--epochs", "2", "--json"]
PRUNE = ["prune", "--method", "biprop", "--arch", "mlp", "--dataset", "digits", "--k", "0.5"]
REWIRE = ["rewire", "--method", "set", "--arch", "mlp", "--dataset", "digits", "--k", "0.3"]


def one_job(out: Path, stdout: str) -> dict:
    """The command's JSON record, after checking `out` holds one run and one results row,
    and that rank 0 alone printed."""
    assert len(stdout.splitlines()) == 1, stdout
    record = json.loads(stdout)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 1 and rows[0]["path"] == record["path"]
    assert [p.name for p in out.iterdir() if p.is_dir()] == [rows[0]["run"]]
    assert Path(record["path"]).is_file() and not list(out.rglob(".*.tmp"))
    return record


def one_run(out: Path, stdout: str) -> dict:
    """`one_job` whose artifact is the only ticket under `out`."""
    record = one_job(out, stdout)
    assert list(out.rglob("ticket.safetensors")) == [Path(record["path"])]
    return record


def accuracy(record: dict) -> float:
    return record["metrics"]["test_acc1"]


def both_ways(cli, tmp_path: Path, name: str, args: list, check=one_run) -> tuple[dict, dict]:
    """`args` in one process and under two-process torchrun, with the same global batch:
    (one's record, two's record), each `check`ed, their accuracies within 0.5 points."""
    single = cli(*args, *EVEN, "--out", tmp_path / f"{name}-1")
    assert single.code == 0, single.err
    alone = check(tmp_path / f"{name}-1", single.out)
    both = torchrun(*args, *EVEN, out=tmp_path / f"{name}-2")
    assert both.returncode == 0, both.stderr
    shared = check(tmp_path / f"{name}-2", both.stdout)
    assert abs(accuracy(shared) - accuracy(alone)) <= 0.5, name
    return alone, shared


@pytest.mark.slow
def test_biprop_finetune_and_rewire_under_two_processes_match_one(tmp_path, cli):
    pruned, _ = both_ways(cli, tmp_path, "prune", PRUNE)
    # finetune the same ticket both ways, so only the way it is trained differs
    tuned, _ = both_ways(cli, tmp_path, "finetune", ["finetune", pruned["path"]])
    assert tuned["metrics"] != pruned["metrics"]  # it trained
    rewired, _ = both_ways(cli, tmp_path, "rewire", REWIRE)
    assert accuracy(rewired) > 50  # a real run, not two equally broken ones


FIND = ["find-ticket", "--method", "imp", "--arch", "mlp", "--dataset", "digits", "--k", "0.5"]
PRETRAIN = ["pretrain", "--arch", "mlp", "--dataset", "digits"]


@pytest.mark.slow
def test_pretrain_and_find_ticket_under_two_processes_match_one(tmp_path, cli):
    pretrained, _ = both_ways(cli, tmp_path, "pretrain", PRETRAIN, one_job)
    assert accuracy(pretrained) > 50
    alone, shared = both_ways(cli, tmp_path, "find-ticket", [*FIND, "--rounds", "2"], one_job)
    assert accuracy(alone) > 50
    # every level trained under both ranks and pruned the same number of weights
    assert [level["kept"] for level in shared["levels"]] == [
        level["kept"] for level in alone["levels"]
    ]
    assert all(Path(level["path"]).is_file() for level in shared["levels"])


RANKS_DISAGREE = """
import sys

import torch
from torch import nn

from ticketkit.errors import JobError
from ticketkit.training import distributed

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
if distributed.rank() == 1:
    model[1].running_mean += 1  # statistics of its own share: rank 0's replace them
distributed.check_identical(model, 0)
assert torch.equal(model[1].running_mean, torch.zeros(3)), "rank 0's statistics not broadcast"
if distributed.rank() == 1:
    with torch.no_grad():  # the same values, moved: a count or a plain sum would miss it
        weight = model[0].weight.view(-1)
        weight[[0, 1]] = weight[[1, 0]].clone()
try:
    distributed.check_identical(model, 4)
except JobError as exc:
    print(f"rank {distributed.rank()}: {exc}", flush=True)
    distributed.abandon()
    sys.exit(3)
distributed.finish()
"""


@pytest.mark.slow
def test_ranks_that_disagree_stop_with_an_error_naming_the_tensor(tmp_path):
    done = torchrun_script(tmp_path, RANKS_DISAGREE)
    assert done.returncode != 0
    for rank in (0, 1):
        assert (
            f"rank {rank}: the 2 processes disagree after epoch 5: '0.weight' differs"
            in done.stdout
        ), done.stdout + done.stderr
    assert "'1.running_mean'" not in done.stdout


def tensors(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """A ticket's tensors and payload checksum (its metadata holds the time and --out)."""
    with safe_open(path, "pt") as f:
        digest = f.metadata()["payload_sha256"]
    return load_file(path), digest


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_uninterrupted_ticket(tmp_path):
    # batches of 16: an epoch takes ~0.5 s, time to stop the run between its checkpoints
    args = [*PRUNE, "--subset", "1436", "--epochs", "3", "--batch-size", "16"]
    killed = tmp_path / "killed"
    proc = start_torchrun(*args, out=killed)
    try:
        deadline = time.monotonic() + 120
        while not list(killed.glob("*/checkpoints/last.safetensors")):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no epoch-1 checkpoint in 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
        # torchrun kills workers still there after 30 s: an interrupted rank must not wait in
        # the final barrier for one stuck in a collective (it did, and ran into the SIGKILL)
        _, err = proc.communicate(timeout=25)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode != 0, err
    assert "Terminated (SIGTERM)." in err and "forcefully" not in err, err
    (run_dir,) = [p for p in killed.iterdir() if p.is_dir()]
    assert not (run_dir / "ticket.safetensors").exists()  # stopped mid-way, not at the end
    epochs = [json.loads(line)["epoch"] for line in open(run_dir / "metrics.jsonl")]
    assert 1 in epochs and 3 not in epochs

    resumed = torchrun(*args, out=killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "epoch 1:" not in resumed.stderr
    assert "epoch 3:" in resumed.stderr
    assert len(list(csv.DictReader(open(killed / "results.csv")))) == 1

    whole = torchrun(*args, out=tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    assert "resuming" not in whole.stderr
    got, got_digest = tensors(resumed.stdout.strip())
    want, want_digest = tensors(whole.stdout.strip())
    assert got_digest == want_digest
    assert got.keys() == want.keys()
    assert all(torch.equal(got[name], want[name]) for name in want)
