"""Each epoch's metrics line says how much of the mask changed and each layer's density."""

import json

import torch

from ticketkit.masks import attach_masks, masked_layers
from ticketkit.training.mask_watch import MaskWatch


def test_changes_are_counted_against_the_last_look():
    model = torch.nn.Sequential(torch.nn.Linear(10, 4), torch.nn.Linear(4, 2))
    attach_masks(model)
    first, second = masked_layers(model)
    watch = MaskWatch(model)
    first.set_mask(torch.arange(40).view(4, 10) < 20)  # 20 of 48 entries dropped
    stats = watch.stats()
    assert stats == {"kept": 28, "density": {"0": 0.5, "1": 1.0}, "mask_changed": round(20 / 48, 6)}
    second.set_mask(torch.arange(8).view(2, 4) != 0)  # one more, counted from the last look
    assert watch.stats()["mask_changed"] == round(1 / 48, 6)
    assert watch.stats()["mask_changed"] == 0.0
    assert MaskWatch(torch.nn.Linear(3, 3)).stats() == {}  # no masks, no fields


def test_a_score_method_settles_and_a_fixed_mask_never_changes(cli, tmp_path):
    args = "prune --method edgepopup --arch mlp --dataset digits --k 0.3 --epochs 3 --json"
    pruned = cli(*args.split(), "--out", tmp_path / "prune")
    assert pruned.code == 0, pruned.err
    assert "% changed" in pruned.err  # the epoch line says it too
    run = json.loads(pruned.out)["path"].rsplit("/", 1)[0]
    lines = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    changed = [line["mask_changed"] for line in lines if line["phase"] == "prune"]
    assert len(changed) == 3 and all(0 < c < 1 for c in changed)
    assert all(set(line["density"].values()) == {0.3} for line in lines if "density" in line)

    ticket = json.loads(pruned.out)["path"]
    tuned = cli("finetune", ticket, "--epochs", "1", "--json", "--out", tmp_path / "tune")
    assert tuned.code == 0, tuned.err
    run = json.loads(tuned.out)["path"].rsplit("/", 1)[0]
    lines = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    (line,) = [line for line in lines if line["phase"] == "finetune"]
    assert line["mask_changed"] == 0.0 and set(line["density"].values()) == {0.3}
