import json
import os
import subprocess
import sys

import pytest
import torch

from ticketkit import jobs
from ticketkit.artifacts.ticket import Ticket
from ticketkit.errors import JobError
from ticketkit.runs.config import PretrainConfig, PruneConfig, resolve
from ticketkit.training import loop as train
from ticketkit.training.loop import lr_factor


def cfg(tmp_path, **kw):
    base = dict(
        method="biprop",
        arch="mlp",
        k=0.5,
        dataset="digits",
        epochs=3,
        batch_size=64,
        lr=0.1,
        out=str(tmp_path),
        eval_every=1,
        arch_options={"width": 0.5},
    )
    return resolve(PruneConfig, {**base, **kw})


def test_schedules():
    c = PruneConfig(epochs=10, schedule="cosine")
    assert lr_factor(c, 0) == 1.0 and 0 < lr_factor(c, 9) < 0.03
    c = PruneConfig(epochs=10, schedule="step", lr_steps=[3, 6], lr_gamma=0.1)
    assert [round(lr_factor(c, e), 6) for e in (0, 3, 6)] == [1.0, 0.1, 0.01]
    c = PruneConfig(epochs=10, schedule="constant", warmup=2)
    assert [lr_factor(c, e) for e in (0, 1, 2)] == [0.5, 1.0, 1.0]


def test_interrupted_run_resumes_to_the_same_ticket(tmp_path, monkeypatch):
    from ticketkit.plugins.methods.biprop import Biprop

    full = jobs.prune(cfg(tmp_path / "a"))
    original = Biprop.start_epoch

    def interrupt_at_epoch_2(self, epoch, model):
        if epoch == 1:
            raise KeyboardInterrupt
        original(self, epoch, model)

    monkeypatch.setattr(Biprop, "start_epoch", interrupt_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        jobs.prune(cfg(tmp_path / "b"))
    monkeypatch.setattr(Biprop, "start_epoch", original)
    resumed = jobs.prune(cfg(tmp_path / "b"))  # the same command again: resumes after epoch 1
    a, b = Ticket.read(full.path), Ticket.read(resumed.path)
    assert a.meta["payload_sha256"] == b.meta["payload_sha256"]
    assert a.meta["metrics"] == b.meta["metrics"]
    lines = [
        json.loads(l) for l in (resumed.path.parent / "metrics.jsonl").read_text().splitlines()
    ]
    assert [l["epoch"] for l in lines if l["phase"] == "prune"] == [1, 2, 3]


def test_finished_run_is_reused_and_force_recomputes(tmp_path):
    c = cfg(tmp_path, epochs=1)
    first = jobs.prune(c)
    again = jobs.prune(cfg(tmp_path, epochs=1))
    assert again.reused and again.path == first.path
    forced = jobs.prune(cfg(tmp_path, epochs=1), force=True)
    assert not forced.reused
    assert (
        Ticket.read(forced.path).meta["payload_sha256"]
        == Ticket.read(first.path).meta["payload_sha256"]
    )


def test_scores_gone_to_nan_fail_the_job_though_the_loss_stays_finite(tmp_path):
    """lr 1e30: scores overflow, every mask empties, the loss sits at log(10), not NaN."""
    with pytest.raises(JobError, match=r"diverged at epoch 1 \(.*scores holds NaN or inf\)"):
        jobs.prune(cfg(tmp_path, lr=1e30, epochs=2))
    assert not list(tmp_path.rglob("ticket.safetensors"))


def test_best_and_last_checkpoints_and_metrics(tmp_path):
    result = jobs.prune(cfg(tmp_path))
    run = result.path.parent
    assert (run / "checkpoints" / "last.safetensors").exists()
    assert (run / "checkpoints" / "best.safetensors").exists()
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["phase"] == "final" and "test_acc1" in records[0]
    assert (tmp_path / "results.csv").read_text().count("\n") == 2
    assert not list(run.glob(".*.tmp"))


_ROUNDS = """
import ctypes, resource, sys
from ticketkit.training.loop import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def one_round(size=20 << 20):  # three 20 MiB blocks, as a step's activations and gradients
    blocks = [libc.malloc(size) for _ in range(3)]
    for b in blocks:
        ctypes.memset(b, 1, size)  # touch every page
    for b in reversed(blocks):
        libc.free(b)
one_round()
one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
one_round()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_in_a_round(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(
    not (hasattr(os, "confstr") and "glibc" in (os.confstr("CS_GNU_LIBC_VERSION") or "")),
    reason="glibc's malloc only",
)
def test_freed_memory_is_kept_for_the_next_step():
    """Blocks a step frees come back without page faults. With glibc's adaptive defaults the
    third round of the same allocations faults 10,208 pages in again here (the top of the heap
    was handed back to the kernel); a Conv4 training step faulted 16,000-51,000."""
    default = _faults_in_a_round("default")
    if default < 1000:
        pytest.skip(f"this glibc keeps freed memory anyway ({default} faults)")
    assert _faults_in_a_round("retain") < 100


def test_fit_keeps_freed_memory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "retain_freed_memory", lambda: calls.append(1))
    jobs.prune(cfg(tmp_path, epochs=1))
    assert calls


def _saved_groups(result) -> list[dict]:
    from safetensors import safe_open

    last = result.path.parent / "checkpoints" / "last.safetensors"
    with safe_open(str(last), "pt") as f:
        meta = f.metadata()
    return [g for key in meta if key.startswith("opt.") for g in json.loads(meta[key])["groups"]]


def test_the_training_loop_folds_score_decay_only_for_one_backward_a_step(tmp_path):
    from ticketkit.masks.kernels import kernels

    if kernels() is None:
        pytest.skip("no C compiler: nothing is folded")
    biprop = _saved_groups(jobs.prune(cfg(tmp_path / "biprop", epochs=1, weight_decay=1e-3)))
    assert [g["weight_decay"] for g in biprop] == [0.0]  # in the score gradient instead
    assert [g["ticketkit_folded_weight_decay"] for g in biprop] == [1e-3]
    # BiP steps weights and scores in turns (its own train_step): its optimizers keep theirs
    source = jobs.pretrain(
        resolve(
            PretrainConfig,
            dict(arch="mlp", dataset="digits", epochs=1, out=str(tmp_path / "dense")),
        )
    )
    bip = jobs.prune(
        cfg(
            tmp_path / "bip",
            method="bip",
            arch=None,
            arch_options={},
            epochs=1,
            weight_decay=1e-3,
            input=str(source.path),
        )
    )
    assert not any("ticketkit_folded_weight_decay" in g for g in _saved_groups(bip))


def test_roles_go_to_the_optimizer_that_takes_them(tmp_path):
    from dataclasses import replace

    from ticketkit import InputSpec, build_model
    from ticketkit.plugin import Setup, WeightMethod

    method = WeightMethod(None, Setup(k=1.0))
    model = build_model("conv2", InputSpec(1, 8, 8, 10))
    method.prepare(model)
    roles = method.param_roles(model)
    assert set(roles) == {"weights", "other"}  # conv2: biases are "other", no BN by default
    make = train.OptimizerFactory(cfg(tmp_path, optimizer="adam"))
    make.spec = replace(make.spec, roles=("weights",))
    opts = make.by_role(roles)
    assert isinstance(opts["main"], torch.optim.Adam) and isinstance(opts["sgd"], torch.optim.SGD)
    assert [g["role"] for g in opts["main"].param_groups] == ["weights"]
    assert [g["role"] for g in opts["sgd"].param_groups] == ["other"]
    make = train.OptimizerFactory(cfg(tmp_path, role_optimizers={"other": "adamw"}))
    opts = make.by_role(roles)
    assert [g["role"] for g in opts["main"].param_groups] == ["weights"]
    assert isinstance(opts["adamw"], torch.optim.AdamW)


def test_role_optimizers_are_checked_before_any_work(tmp_path, cli):
    r = cli(
        *"prune --method edgepopup --arch mlp --k 0.5 --dataset digits --epochs 1".split(),
        *("--role-optimizer", "norm=adam", "--out", tmp_path),
    )
    assert r.code == 2 and "unknown role 'norm'; did you mean 'norms'?" in r.err, r.err
    assert list(tmp_path.iterdir()) == []


def test_only_torch_optimizers_are_accepted(tmp_path):
    from dataclasses import replace

    from ticketkit.errors import UsageError

    make = train.OptimizerFactory(cfg(tmp_path))
    make.spec = replace(make.spec, factory=lambda groups, **kw: object())
    with pytest.raises(UsageError, match="not a torch.optim.Optimizer"):
        make([{"params": [torch.nn.Parameter(torch.zeros(1))]}])


def test_an_optimizer_that_refuses_its_settings_leaves_no_run_directory(tmp_path, cli):
    r = cli(
        *"prune --method edgepopup --arch mlp --k 0.5 --dataset digits --epochs 1".split(),
        *("--optimizer", "adam", "-O", "eps=-1", "--out", tmp_path),
    )
    assert r.code == 2 and "optimizer 'adam' refused its settings" in r.err, r.err
    assert list(tmp_path.iterdir()) == []
