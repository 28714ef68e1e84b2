"""`weights: init-seed` tickets (DESIGN §5, Peek-a-Boo): a ticket whose kept weights are +-|W0|
stores mask and sign bits only, |W0| is regenerated from its init record on loading, and eval
reproduces the recorded accuracy exactly; weights that are not +-|W0| still store values."""

from __future__ import annotations

import json

import pytest
import torch

from ticketkit import jobs, load_ticket, testing
from ticketkit.artifacts.init_seed import DIGEST
from ticketkit.artifacts.ticket import Ticket
from ticketkit.errors import UsageError
from ticketkit.runs.config import FinetuneConfig, resolve

WIDE = {"width": 4.0}  # ~400k prunable weights: the bits, not the 64 KiB slack, decide the size


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """SynFlow at k = 0.3 on a random MLP, untrained: its kept weights are W0 itself."""
    out = tmp_path_factory.mktemp("init-seed")
    cfg = testing.prune_config(
        "synflow", out / "prune", epochs=0, arch_options=WIDE, options={"iterations": 2}
    )
    return out, jobs.prune(cfg).path


def finetune(ticket, out, optimizer: str, **options):
    cfg = resolve(
        FinetuneConfig,
        {
            "input": str(ticket),
            "dataset": "digits",
            "epochs": 1,
            "subset": 256,  # a few steps: Bop flips many signs in the first
            "batch_size": 64,
            "optimizer": optimizer,
            "optimizer_options": options,
            "eval_every": 0,
            "out": str(out),
        },
    )
    return jobs.finetune(cfg).path


def test_bop_ticket_stores_signs_and_the_init(pruned, cli):
    out, parent = pruned
    before = Ticket.read(parent)
    assert before.meta["weights"] == "init-seed"  # an untrained prune-at-init ticket too
    tuned = finetune(parent, out / "bop", "bop", ar=0.2, tau=1e-6)
    ticket = Ticket.read(tuned)
    assert ticket.meta["weights"] == "init-seed" and ticket.meta["init"] == before.meta["init"]
    assert all(f"{p}.values" not in ticket.tensors for p in ticket.meta["layers"])
    n = sum(int(torch.tensor(i["shape"]).prod()) for i in ticket.meta["layers"].values())
    k = float(ticket.meta["k"])
    assert tuned.stat().st_size <= 1.05 * (1 + k) / 8 * n + 64 * 1024
    flips, after = 0, ticket.weights()
    for path, w0 in before.weights().items():
        w1 = after[path]
        assert torch.equal(w1.abs(), w0.abs()), path
        flips += int((torch.sign(w1) != torch.sign(w0)).sum())
    assert flips > 0
    model = load_ticket(tuned)
    layer = next(iter(ticket.meta["layers"]))
    assert torch.equal(model.get_submodule(layer).weight, after[layer])
    ev = json.loads(cli("eval", str(tuned), "--json").out)
    assert ev["metrics"] == ev["recorded"]


def test_trained_magnitudes_store_values_and_a_wrong_init_is_refused(pruned, tmp_path):
    out, parent = pruned
    ticket = Ticket.read(finetune(parent, out / "sgd", "sgd"))
    assert ticket.meta["weights"] == "values"
    assert all(i["weights"] == "values" and DIGEST not in i for i in ticket.meta["layers"].values())
    # an init record that regenerates other magnitudes (another seed) is an error, not a network
    bop = Ticket.read(finetune(parent, out / "bop", "bop", ar=0.2, tau=1e-6))  # reused run
    bop.meta["init"] = {**bop.meta["init"], "seed": int(bop.meta["init"]["seed"]) + 1}
    with pytest.raises(UsageError, match="differs from the saved one"):
        bop.weights()
    bop.meta["init"] = {}
    with pytest.raises(UsageError, match="no usable init record"):
        bop.weights()
