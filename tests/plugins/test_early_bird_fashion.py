"""Early-Bird on real Fashion-MNIST images (the digits tests cover the mechanics): for IMP on
the MLP and for network slimming on a conv net with BatchNorm, the ticket is declared before
the last dense epoch and its mask is within --eb-eps of the mask the full dense run gives."""

from __future__ import annotations

import json

import pytest
import torch

from ticketkit import jobs
from ticketkit.artifacts.ticket import Ticket
from ticketkit.plugins.methods.early_bird import hamming
from ticketkit.runs.config import FindTicketConfig, resolve

EPOCHS = 8
SEARCHES = {
    "imp": {"arch": "mlp", "k": 0.5, "options": {"levels": 1}},
    "slimming": {
        "arch": "conv2",
        "arch_options": {"binary_act": True, "width": 0.25},
        "k": 0.5,
        "options": {"l1": 1e-3, "eb_window": 3, "eb_eps": 0.1},
    },
}


def search(out, method: str, early_bird: bool):
    values = {
        "method": method,
        "dataset": "fashion-mnist",
        "subset": 2000,
        "epochs": EPOCHS,
        "eval_every": 0,
        "out": str(out),
        **SEARCHES[method],
    }
    values["options"] = {**values["options"], **({"early_bird": True} if early_bird else {})}
    return jobs.find_ticket(resolve(FindTicketConfig, values))


def kept(path: str, channels: bool) -> torch.Tensor:
    """The ticket's mask as one flat vector: per weight, or per output channel (slimming)."""
    masks = Ticket.read(path).masks()
    parts = [
        masks[name].flatten(1).any(1) if channels else masks[name].flatten()
        for name in sorted(masks)
    ]
    return torch.cat(parts)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["imp", "slimming"])
def test_early_bird_declares_a_ticket_close_to_the_full_runs(tmp_path, fashion, method):
    eb = search(tmp_path / "eb", method, early_bird=True)
    full = search(tmp_path / "full", method, early_bird=False)
    found = json.loads((eb.path.parent / "summary.json").read_text())["early_bird"]
    assert found["epoch"] < EPOCHS, found
    eps = found["eps"]
    declared = kept(eb.levels[1]["path"], channels=method == "slimming")
    final = kept(full.levels[1]["path"], channels=method == "slimming")
    assert hamming(declared, final) <= eps, (hamming(declared, final), found)
