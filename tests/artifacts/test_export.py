"""Every export format of tickets made by real runs, a sign ticket (biprop: +-alpha) and a Bop
ticket (mask and sign bits plus the init, `weights: init-seed`), gives `load_ticket`'s logits."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.commands.test_export import read_back
from ticketkit import jobs, load_ticket, testing
from ticketkit.artifacts.export import export
from ticketkit.artifacts.ticket import Ticket

FORMATS = ["dense", "onnx", "pt2", "structured"]
NEEDS = {"onnx": "onnxruntime", "structured": "torch_pruning"}


@pytest.fixture(scope="module")
def tickets(tmp_path_factory):
    """One short digits run each: biprop (sign ticket), synflow + Bop (init-seed ticket)."""
    out = tmp_path_factory.mktemp("tickets")
    biprop = testing.prune_config("biprop", out / "biprop", epochs=1, subset=256)
    bop = testing.prune_config(
        "synflow",
        out / "bop",
        epochs=1,
        subset=256,
        options={"iterations": 5},
        optimizer="bop",
        optimizer_options={"ar": 0.2, "tau": 1e-6},
    )
    return {"biprop": jobs.prune(biprop).path, "bop": jobs.prune(bop).path}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("which,weights", [("biprop", "sign"), ("bop", "init-seed")])
def test_every_format_gives_the_tickets_logits(tickets, tmp_path, fmt, which, weights):
    if fmt in NEEDS and importlib.util.find_spec(NEEDS[fmt]) is None:
        pytest.skip(f"needs {NEEDS[fmt]}")
    path = tickets[which]
    ticket = Ticket.read(path)
    assert ticket.meta["weights"] == weights  # the encoding this case is about
    out = tmp_path / f"model.{fmt}"
    result = export(ticket, fmt, out)
    assert result.max_abs_diff <= (1e-4 if fmt == "structured" else 1e-5)
    x = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = load_ticket(path)(x)
    got = read_back("pt2" if fmt == "structured" else fmt, out, path, x)
    assert (got - expected).abs().max() <= 1e-5
