"""The CLI as users expect it (issue 19, item 4): defaults in --help, `plugins` through a pipe,
non-finite numbers and a warm-up as long as the run refused up front, one record shape for a
dense checkpoint, no `loss nan` on the bar, and which option gives an arch BatchNorm."""

from __future__ import annotations

import io
import json
import re

import pytest

from tests.commands.test_errors import assert_usage_error

PRUNE = "prune --method biprop --arch mlp --k 0.5 --dataset digits".split()


def _default_of(help_text: str, flag: str) -> str | None:
    """The `[default: X]` on the help line of `flag` (options are on one line when wide)."""
    for line in help_text.splitlines():
        if re.search(rf"\s{re.escape(flag)}\s", line):
            found = re.search(r"\[default: ([^\]]+)\]", line)
            return found.group(1) if found else None
    raise AssertionError(f"{flag} not in the help:\n{help_text}")


def test_help_shows_the_effective_defaults(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    prune = cli("prune", "--help")
    assert prune.code == 0
    assert _default_of(prune.out, "--epochs") == "10"
    assert _default_of(prune.out, "--lr") == "0.1"
    assert _default_of(prune.out, "--batch-size") == "128"
    assert _default_of(prune.out, "--learn-bn") == "--no-learn-bn"
    assert _default_of(prune.out, "--out") == "runs"
    finetune = cli("finetune", "--help")  # a shared option, with this command's default
    assert _default_of(finetune.out, "--lr") == "0.01"
    assert _default_of(cli("pretrain", "--help").out, "--weight-decay") == "0.0005"
    assert _default_of(cli("eval", "--help").out, "--device") == "auto"


def test_plugins_piped_prints_one_line_per_plugin(cli):
    listed = json.loads(cli("plugins", "--json").out)
    r = cli("plugins")  # captured: stdout is not a terminal
    assert r.code == 0
    rows = [line.split("\t") for line in r.out.splitlines()]
    assert len(rows) == len(listed) and all(len(row) == 4 for row in rows)
    assert ["method", "biprop"] in [row[:2] for row in rows]


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--lr", "nan"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--momentum", "-inf"], "--momentum"),
        (["--width", "nan"], "width"),
        (["-o", "ramp-epochs=2", "--lr-gamma", "NaN"], "--lr-gamma"),
    ],
)
def test_non_finite_numbers_are_refused_up_front(cli, tmp_path, extra, flag):
    r = cli(*PRUNE, *extra, "--out", tmp_path / "runs")
    assert_usage_error(r, flag, "expected a finite number")
    assert not (tmp_path / "runs").exists()


def test_warmup_not_shorter_than_the_run_is_refused(cli, tmp_path):
    r = cli(*PRUNE, "--epochs", "3", "--warmup", "3", "--out", tmp_path / "runs")
    assert_usage_error(r, "--warmup 3 must be shorter than --epochs 3")
    assert not (tmp_path / "runs").exists()


def test_pretrain_records_a_dense_checkpoint_as_eval_does(cli, tmp_path):
    """k 1.0 and method "dense" for the checkpoint, whether trained now or found finished."""
    args = [*"pretrain --arch mlp --dataset digits --epochs 1 --json --out".split(), tmp_path]
    first, again = cli(*args), cli(*args)
    assert first.code == 0 and again.code == 0, first.err + again.err
    evaluated = json.loads(cli("eval", "--json", stdin=first.out).out)
    for record in (json.loads(first.out), json.loads(again.out)):
        assert (record["method"], record["k"]) == (evaluated["method"], evaluated["k"])
        assert (record["method"], record["k"]) == ("dense", 1.0)


def test_progress_bar_shows_no_loss_before_the_first_step(monkeypatch):
    from rich.console import Console

    from ticketkit.commands import _console

    screen = io.StringIO()
    monkeypatch.setattr(_console, "console", Console(file=screen, force_terminal=True, width=120))
    bar = _console.Progress()
    bar.start("prune epoch 1/1", 10)
    bar._bar.refresh()
    before = screen.getvalue()
    bar.advance(loss=1.23456)
    bar._bar.refresh()
    bar.stop()
    assert "epoch 1/1" in before and "nan" not in before and "loss" not in before
    assert "loss 1.2346" in screen.getvalue()


def test_learn_bn_without_batchnorm_names_the_option_that_adds_it(cli, tmp_path):
    for arch in ("conv4", "mlp"):
        args = f"prune --method biprop --arch {arch} --k 0.5 --dataset digits --learn-bn"
        r = cli(*args.split(), "--out", tmp_path)
        assert_usage_error(r, "no affine normalisation layers; --binary-act adds them")
