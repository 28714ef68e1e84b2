"""The third-party example plugin (plugins-contrib/ticketkit-supermask) works through the CLI."""

import json

import pytest

from tests.conftest import run_subprocess


@pytest.fixture(scope="module")
def installed():
    from ticketkit.registry import registry

    if not any(e.spec.name == "supermask" for e in registry().entries("methods")):
        pytest.fail(
            "install the contrib plugin first: pip install -e plugins-contrib/ticketkit-supermask"
        )


def test_supermask_is_listed_with_its_distribution(installed):
    r = run_subprocess("plugins", "--json")
    (row,) = [row for row in json.loads(r.out) if row["name"] == "supermask"]
    assert row["distribution"] == "ticketkit-supermask" and row["version"] == "0.1.0"


def test_supermask_prunes_and_eval_loads_the_ticket(installed, tmp_path):
    pruned = run_subprocess(
        *"prune --method supermask --arch mlp --k 0.5 --dataset digits --epochs 2".split(),
        *"--lr 100 --weight-decay 0 --out".split(),
        tmp_path,
    )
    assert pruned.code == 0, pruned.err
    evaluated = run_subprocess("eval", pruned.out.strip(), "--json")
    assert evaluated.code == 0, evaluated.err
    record = json.loads(evaluated.out)
    assert record["method"] == "supermask" and record["metrics"] == record["recorded"]
    assert record["metrics"]["test_acc1"] > 30
