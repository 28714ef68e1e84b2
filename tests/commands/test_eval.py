"""`ticketkit eval` on the ticket's own dataset and, with --dataset, on another one that fits."""

import json

import pytest

from tests.commands.test_errors import assert_usage_error


@pytest.fixture(scope="module")
def fashion_ticket(tmp_path_factory, fashion):
    """An mlp ticket found on real Fashion-MNIST images (small and quick)."""
    from ticketkit import jobs
    from ticketkit.runs import config

    cfg = config.resolve(
        config.PruneConfig,
        {
            "method": "biprop",
            "arch": "mlp",
            "k": 0.5,
            "dataset": "fashion-mnist",
            "subset": 500,
            "epochs": 1,
            "out": str(tmp_path_factory.mktemp("runs")),
        },
    )
    return jobs.prune(cfg).path


def test_eval_on_its_own_dataset_shows_what_was_recorded(cli, fashion_ticket):
    r = cli("eval", fashion_ticket, "--json")
    assert r.code == 0, r.err
    record = json.loads(r.out)
    assert record["dataset"] == "fashion-mnist"
    assert record["metrics"] == record["recorded"]


def test_eval_on_another_dataset_of_the_same_shape(cli, fashion_ticket, fashion):
    # MNIST's loader reads the same idx file names: pointed at the Fashion-MNIST files, it
    # gives the same test images under MNIST's normalisation, so the numbers differ slightly
    r = cli("eval", fashion_ticket, "--dataset", "mnist", "--data", fashion, "--json")
    assert r.code == 0, r.err
    record = json.loads(r.out)
    assert record["dataset"] == "mnist"
    assert record["recorded"] == {}  # measured on other data: nothing to compare with
    assert 0 <= record["metrics"]["test_acc1"] <= 100
    assert "recorded" not in r.err


def test_eval_on_a_dataset_that_does_not_fit(cli, fashion_ticket):
    assert_usage_error(
        cli("eval", fashion_ticket, "--dataset", "digits"),
        "made for 1x28x28 images in 10 classes, but dataset 'digits' gives 1x8x8 images",
    )
