"""Early-Bird for IMP (find-ticket --method imp --early-bird) on the digits MLP: the ticket is
declared before the last dense epoch, its mask is within --eb-eps of the mask the full dense run
gives, the distance curve reaches metrics.jsonl and summary.json, and the detection window
survives a run killed in level 0."""

from __future__ import annotations

import json

import pytest
import torch

from ticketkit import jobs
from ticketkit.artifacts.ticket import Ticket
from ticketkit.errors import UsageError
from ticketkit.plugins.methods.early_bird import curve, hamming, observe
from ticketkit.runs.directory import Run

from .test_imp import config

EPOCHS = 8  # the default window (5) declares at epoch 5 at the earliest


def flat_mask(path: str) -> torch.Tensor:
    masks = Ticket.read(path).masks()
    return torch.cat([masks[name].flatten() for name in sorted(masks)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same search with and without Early-Bird (one pruning level each)."""
    full = jobs.find_ticket(config(tmp_path_factory.mktemp("dense"), EPOCHS, None, levels=1))
    eb = jobs.find_ticket(
        config(tmp_path_factory.mktemp("eb"), EPOCHS, None, levels=1, early_bird=True)
    )
    return full, eb


def test_the_ticket_is_declared_early_and_close_to_the_full_runs_mask(runs):
    full, eb = runs
    summary = json.loads((eb.path.parent / "summary.json").read_text())
    found = summary["early_bird"]
    assert found["window"] == 5 and found["eps"] == 0.1
    assert 5 <= found["epoch"] < EPOCHS
    assert len(found["distances"]) == found["epoch"]  # level 0 stopped at the declaration
    assert found["distances"][0] is None and found["distances"][-1] <= 0.1
    level0 = Ticket.read(eb.levels[0]["path"]).meta["stopped"]
    assert level0["stage"] == "0" and level0["epoch"] == found["epoch"]
    assert "Early-Bird" in level0["reason"]
    distance = hamming(flat_mask(eb.levels[1]["path"]), flat_mask(full.levels[1]["path"]))
    assert distance <= 0.1
    assert eb.levels[1]["kept"] == full.levels[1]["kept"]  # the same pruning, earlier
    assert "early_bird" not in json.loads((full.path.parent / "summary.json").read_text())


def test_metrics_lines_carry_the_distances(runs):
    _, eb = runs
    lines = [json.loads(line) for line in (eb.path.parent / "metrics.jsonl").open()]
    level0 = [line for line in lines if line.get("stage") == "0"]
    assert "eb_distance" not in level0[0]
    for line in level0[1:]:
        assert len(line["eb_distances"]) == min(line["epoch"] - 1, 4)
        assert line["eb_distance"] == max(line["eb_distances"])
    assert level0[-1]["early_bird"] and level0[-1]["stopped"]["epoch"] == level0[-1]["epoch"]
    assert not any("eb_distance" in line for line in lines if line.get("stage") == "1")


def test_a_run_killed_in_level_0_keeps_its_window(runs, tmp_path):
    _, eb = runs
    original = Run.save_checkpoint

    def save(self, tag, *args, **kwargs):
        path = original(self, tag, *args, **kwargs)
        if tag == "0/last" and args[2] == 2:  # after epoch 3
            raise KeyboardInterrupt
        return path

    cfg = config(tmp_path, EPOCHS, None, levels=1, early_bird=True)
    Run.save_checkpoint = save  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            jobs.find_ticket(cfg)
    finally:
        Run.save_checkpoint = original  # type: ignore[method-assign]
    resumed = jobs.find_ticket(config(tmp_path, EPOCHS, None, levels=1, early_bird=True))
    lines = [json.loads(line) for line in (resumed.path.parent / "metrics.jsonl").open()]
    assert len([line for line in lines if line.get("stage") == "0"]) == 5
    a, b = Ticket.read(eb.path), Ticket.read(resumed.path)
    assert a.meta["payload_sha256"] == b.meta["payload_sha256"]  # as uninterrupted


def test_observe_declares_once_the_window_agrees():
    history: list[torch.Tensor] = []
    base = torch.zeros(100, dtype=torch.bool)
    steps = []
    for flipped in (0, 30, 31, 32, 33):  # the last three differ by at most 3 of 100 entries
        mask = base.clone()
        mask[:flipped] = True
        metrics: dict = {}
        steps.append(observe(history, mask, 3, 0.05, metrics))
    assert steps == [False, False, False, True, True]
    assert len(history) == 3 and metrics["eb_distances"] == [0.02, 0.01]
    records = [{"stage": "0", "epoch": 1}, {"stage": "0", "epoch": 2, "eb_distance": 0.3}]
    records += [{"stage": "0", "epoch": 2, "eb_distance": 0.2, "early_bird": True}]
    assert curve(records, "0") == {"epoch": 2, "distances": [None, 0.2]}


@pytest.mark.parametrize(
    "options, message",
    [({"eb_window": 1}, "--eb-window must be >= 2"), ({"eb_eps": 1.0}, "--eb-eps must be in")],
)
def test_bad_settings_are_refused(tmp_path, options, message):
    with pytest.raises(UsageError, match=message):
        jobs.find_ticket(config(tmp_path, levels=1, early_bird=True, **options))
