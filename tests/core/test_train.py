import json

from ticketkit.core import jobs
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
    import pytest

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
