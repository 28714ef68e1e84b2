"""IMP's controls (find-ticket --controls) on the digits MLP, one epoch a stage: per pruned level
a random mask with the ticket's per-layer kept counts and the ticket's mask with fresh weights,
each a resumable stage with its ticket on disk and its accuracy in the levels records; the
next level prunes the ticket, never a control."""

from __future__ import annotations

import json

import pytest
import torch

from ticketkit import jobs
from ticketkit.artifacts.ticket import Ticket
from ticketkit.plugins.methods.imp import Imp
from ticketkit.runs.directory import Run

from .test_imp import config, snapshot

CONTROLS = ("random_mask", "random_reinit")


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """Two pruned levels with controls; the starting network of every stage, by name."""
    starts: dict[str, dict] = {}
    begin = Imp.begin_stage

    def spied(method, stage, model):
        begin(method, stage, model)
        starts[stage.name] = snapshot(model)

    Imp.begin_stage = spied  # type: ignore[method-assign]
    try:
        result = jobs.find_ticket(
            config(tmp_path_factory.mktemp("controls"), k=None, levels=2, controls=True)
        )
    finally:
        Imp.begin_stage = begin  # type: ignore[method-assign]
    return result, starts


def test_every_pruned_level_has_both_controls_on_disk_with_accuracy(search):
    result, _ = search
    assert [level["level"] for level in result.levels] == [0, 1, 2]
    assert "controls" not in result.levels[0]
    for level in result.levels[1:]:
        assert sorted(level["controls"]) == list(CONTROLS)
        for name, control in level["controls"].items():
            assert control["path"].endswith(
                f"stages/{level['level']}-{name.replace('_', '-')}/ticket.safetensors"
            )
            assert control["kept"] == level["kept"] and control["k"] == level["k"]
            assert 0 < control["metrics"]["test_acc1"] <= 100
            assert control["metrics"] == Ticket.read(control["path"]).meta["metrics"]
    summary = json.loads((result.path.parent / "summary.json").read_text())
    assert summary["levels"] == result.levels


def test_random_mask_keeps_each_layers_count_elsewhere_from_the_same_start(search):
    result, starts = search
    for level in result.levels[1:]:
        ticket = Ticket.read(level["path"]).masks()
        control = Ticket.read(level["controls"]["random_mask"]["path"]).masks()
        for path, mask in ticket.items():
            assert int(control[path].sum()) == int(mask.sum()), path
            assert (control[path] != mask).any(), path
        name = str(level["level"])
        for path, (weight, mask) in starts[f"{name}-random-mask"].items():
            assert torch.equal(mask, control[path])
            assert torch.equal(weight[mask], starts["0"][path][0][mask])  # rewound to the init


def test_random_reinit_keeps_the_tickets_mask_with_fresh_weights(search):
    result, starts = search
    for level in result.levels[1:]:
        ticket = Ticket.read(level["path"]).masks()
        control = Ticket.read(level["controls"]["random_reinit"]["path"]).masks()
        name = str(level["level"])
        for path, mask in ticket.items():
            assert torch.equal(control[path], mask), path
            weight, start_mask = starts[f"{name}-random-reinit"][path]
            ticket_start = starts[name][path][0]
            assert torch.equal(start_mask, mask)
            assert (weight[mask] != ticket_start[mask]).float().mean() > 0.99, path


def test_the_next_level_and_the_run_ticket_come_from_the_ticket_not_a_control(search):
    result, _ = search
    one, two = (Ticket.read(level["path"]).masks() for level in result.levels[1:])
    for path, mask in two.items():
        assert not (mask & ~one[path]).any(), f"{path}: level 2 is not inside level 1"
    final, last = Ticket.read(result.path), Ticket.read(result.levels[-1]["path"])
    assert final.meta["payload_sha256"] == last.meta["payload_sha256"]
    assert result.metrics == result.levels[-1]["metrics"]


def test_a_run_killed_in_a_control_resumes_there(search, tmp_path):
    full, _ = search
    original = Run.save_checkpoint

    def save(self, tag, *args, **kwargs):
        path = original(self, tag, *args, **kwargs)
        if tag == "2-random-mask/last":
            raise KeyboardInterrupt
        return path

    Run.save_checkpoint = save  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            jobs.find_ticket(config(tmp_path, k=None, levels=2, controls=True))
    finally:
        Run.save_checkpoint = original  # type: ignore[method-assign]
    resumed = jobs.find_ticket(config(tmp_path, k=None, levels=2, controls=True))
    lines = [json.loads(line) for line in (resumed.path.parent / "metrics.jsonl").open()]
    trained = [line["stage"] for line in lines if line.get("phase") == "find-ticket"]
    stages = ["0", "1", "1-random-mask", "1-random-reinit", "2", "2-random-mask"]
    assert trained == [*stages, "2-random-reinit"]  # each stage trained once
    assert [lv["metrics"] for lv in resumed.levels] == [lv["metrics"] for lv in full.levels]
    for a, b in zip(full.levels[1:], resumed.levels[1:]):
        for name in CONTROLS:
            assert a["controls"][name]["metrics"] == b["controls"][name]["metrics"]
    a, b = Ticket.read(full.path), Ticket.read(resumed.path)
    assert a.meta["payload_sha256"] == b.meta["payload_sha256"]


def test_the_cli_reports_controls(cli, tmp_path):
    args = "find-ticket --method imp --arch mlp --dataset digits --levels 1 --epochs 1".split()
    r = cli(*args, "--controls", "--eval-every", "0", "--out", tmp_path, "--json")
    assert r.code == 0, r.err
    record = json.loads(r.out)
    assert sorted(record["levels"][1]["controls"]) == list(CONTROLS)
    assert "random mask" in r.err and "random reinit" in r.err
