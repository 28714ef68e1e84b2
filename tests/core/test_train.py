import json
import os
import subprocess
import sys

import pytest

from ticketkit.core import jobs, train
from ticketkit.core.config import PruneConfig, resolve
from ticketkit.core.ticket import Ticket
from ticketkit.core.train import lr_factor


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


def test_best_and_last_checkpoints_and_metrics(tmp_path):
    result = jobs.prune(cfg(tmp_path))
    run = result.path.parent
    assert (run / "checkpoints" / "last.safetensors").exists()
    assert (run / "checkpoints" / "best.safetensors").exists()
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["phase"] == "final" and "test_acc1" in records[0]
    assert (tmp_path / "results.csv").read_text().count("\n") == 2
    assert not list(run.glob(".*.tmp"))


_STEPS = """
import resource, sys, torch, torch.nn.functional as F
from ticketkit.core.data import InputSpec
from ticketkit.core.model import build_model
from ticketkit.core.train import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
torch.manual_seed(0)
model = build_model("conv2", InputSpec(1, 28, 28, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
def step():
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for _ in range(4):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_step(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, check=True
    )
    return float(done.stdout)


@pytest.mark.skipif(
    not (hasattr(os, "confstr") and "glibc" in (os.confstr("CS_GNU_LIBC_VERSION") or "")),
    reason="glibc's malloc only",
)
def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in():
    """conv2 steps free ~10 MB of activations each; glibc's default hands them back to the
    kernel and the next step faults them in again (5,000-6,300 pages a step measured here;
    kept: 0-800, from a second malloc arena the thresholds reach too late)."""
    default = _faults_per_step("default")
    if default < 500:
        pytest.skip(f"this malloc keeps freed memory anyway ({default:.0f} faults a step)")
    assert _faults_per_step("retain") < default / 4


def test_fit_keeps_freed_memory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "retain_freed_memory", lambda: calls.append(1))
    jobs.prune(cfg(tmp_path, epochs=1))
    assert calls
