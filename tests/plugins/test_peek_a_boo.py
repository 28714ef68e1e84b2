"""The `peek-a-boo` preset (Chen et al., ICLR 2022): SynFlow k = 0.3 with 100 iterations, then
the kept weights' signs train with Bop, in one `prune` command, and the ticket is mask bits,
sign bits and the init (`weights: init-seed`)."""

from __future__ import annotations

import json

import torch

from ticketkit import kept_count
from ticketkit.artifacts.ticket import Ticket
from ticketkit.runs.config import PruneConfig, resolve


def test_preset_is_the_papers_recipe():
    cfg = resolve(PruneConfig, {"arch": "resnet18", "dataset": "cifar10"}, preset="peek-a-boo")
    assert (cfg.method, cfg.k, cfg.options, cfg.init, cfg.init_scale) == (
        "synflow",
        0.3,
        {"iterations": 100},
        "kaiming-normal",
        "unscaled",
    )
    assert cfg.optimizer == "bop" and cfg.optimizer_options == {
        "ar": 1e-3,
        "tau": 1e-6,
        "ar_decay_ratio": 0.15,
        "ar_decay_every": 45,
    }
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.schedule, cfg.lr_steps) == (
        0.1,
        0.9,
        5e-4,
        "step",
        [80, 120],
    )
    assert (cfg.epochs, cfg.batch_size) == (180, 128)


def test_one_command_gives_a_sign_ticket_of_the_init(cli, tmp_path):
    r = cli(
        "prune",
        "--preset",
        "peek-a-boo",
        "--arch",
        "mlp",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "-o",
        "iterations=5",
        "-O",
        "ar=0.2",
        "--batch-size",
        "64",
        "--out",
        tmp_path,
        "--json",
    )
    assert r.code == 0, r.err
    path = json.loads(r.out)["path"]
    ticket = Ticket.read(path)
    assert ticket.meta["weights"] == "init-seed" and ticket.meta["method"] == "synflow"
    assert ticket.meta["init"]["scheme"] == "kaiming-normal"
    kept = sum(int(m.sum()) for m in ticket.masks().values())
    total = sum(m.numel() for m in ticket.masks().values())
    assert kept == kept_count(total, 0.3)  # exact global top-k
    assert all(torch.isfinite(w).all() for w in ticket.weights().values())
    ev = json.loads(cli("eval", path, "--json").out)
    assert ev["metrics"] == ev["recorded"]


def test_prune_trains_the_signs_with_the_psg_backward_when_asked(cli, tmp_path):
    """`prune --psg` gives the masked layers PSG's backward (as `finetune --psg`): same
    mask, other flips; a PSG option without --psg is refused."""
    args = "prune --preset peek-a-boo --arch mlp --dataset digits --epochs 1 -o iterations=5"
    args += " -O ar=0.2 --batch-size 64 --json"
    runs = [cli(*args.split(), *extra, "--out", tmp_path) for extra in ([], ["--psg"])]
    assert all(r.code == 0 for r in runs), [r.err for r in runs]
    plain, psg = (Ticket.read(json.loads(r.out)["path"]) for r in runs)
    assert psg.meta["config"]["psg"] is True and plain.meta["config"]["psg"] is False
    assert all(torch.equal(plain.masks()[n], m) for n, m in psg.masks().items())
    assert any(not torch.equal(plain.weights()[n], w) for n, w in psg.weights().items())
    bad = cli(*args.split(), "--psg-option", "msb-bits=4", "--out", tmp_path)
    assert bad.code == 2 and "--psg-option is given without --psg" in bad.err
