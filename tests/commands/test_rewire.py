"""`ticketkit rewire` as a user runs it: stdout is the ticket's path or one JSON record, the
per-layer densities of every epoch are in metrics.jsonl, the ticket evaluates (with its layer
densities) and fine-tunes, a dense checkpoint can be the start, 1x1 shortcuts can stay dense,
and bad input is one `Error:` line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RUN = "rewire --method set --arch mlp --dataset digits --k 0.3 --epochs 2 -o every=5".split()


def test_json_record_density_history_reuse_resume_eval_and_finetune(cli, tmp_path):
    r = cli(*RUN, "--eval-every", "0", "--out", tmp_path, "--json")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == {"kind", "path", "parent", "method", "k", "metrics"}
    assert record["kind"] == "ticket" and record["method"] == "set" and record["k"] == 0.3
    assert "Traceback" not in r.err and "30.0%" in r.err  # the per-layer table, on stderr
    run_dir = Path(record["path"]).parent
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if e["phase"] == "rewire"] == [1, 2]
    for e in epochs[:2]:
        assert set(e["density"]) == {"1", "3", "5"} and e["kept"] == 5760 + 9000 + 300

    again = cli(*RUN, "--eval-every", "0", "--out", tmp_path)  # finished: reused
    assert again.code == 0 and again.out == record["path"] + "\n" and "reusing" in again.err
    resumed = cli("rewire", "--resume", run_dir, "--json")
    assert resumed.code == 0, resumed.err
    assert json.loads(resumed.out) == record
    refused = cli("rewire", "--resume", run_dir, "--k", "0.5")
    assert refused.code == 2 and refused.err.startswith("Error:")

    evaluated = cli("eval", record["path"], "--json")
    assert evaluated.code == 0, evaluated.err
    assert json.loads(evaluated.out)["metrics"] == record["metrics"]
    tuned = cli(
        "finetune",
        record["path"],
        "--epochs",
        "1",
        "--eval-every",
        "0",
        "--out",
        tmp_path,
        "--json",
    )
    assert tuned.code == 0, tuned.err
    assert json.loads(tuned.out)["parent"] == record["path"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "biprop", "--k", "0.3"], "runs under `ticketkit prune`"),
        (["--method", "set", "--k", "0.3", "--density", "er"], "--density must be one of"),
        (["--method", "set", "--k", "0.3", "-o", "every=0"], "-o every must be"),
        (["--method", "set", "--k", "0.3", "-o", "zeta=2"], "-o zeta must be in [0, 1]"),
        (["--method", "static", "--k", "0.3", "-o", "every=5"], "takes no options"),
        (["--method", "gmp", "--k", "0.3", "-o", "every=500"], "longer than the pruning span"),
        (["--method", "set"], "no k given: pass --k"),
        (["--method", "set", "--k", "0.3", "-o", "regrow=random"], "must be one of zero, init"),
        (["--method", "dsr", "--k", "0.3", "-o", "period-schedule=often"], "constant, doubling"),
        (["--method", "set", "--k", "0.3", "-o", "period-schedule=0:5,2:x"], "N, Nit or Nep"),
        (["--method", "set", "--k", "0.3", "-o", "period-schedule=3:5,1:9"], "must increase"),
    ],
)
def test_bad_input_is_one_error_line(cli, tmp_path, args, message):
    r = cli("rewire", "--arch", "mlp", "--dataset", "digits", "--out", tmp_path, *args)
    assert r.code == 2, r.err
    assert r.err.startswith("Error:") and message in r.err and len(r.err.splitlines()) == 1
    assert r.out == "" and not any(tmp_path.iterdir())  # nothing left behind


@pytest.mark.parametrize("stdin", ["", None], ids=["empty pipe", "terminal"])
def test_no_arch_and_no_checkpoint_is_one_error_line(cli, tmp_path, monkeypatch, stdin):
    if stdin is None:
        monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    args = ("rewire", "--method", "set", "--k", "0.3", "--dataset", "digits", "--out", tmp_path)
    r = cli(*args, stdin=stdin)
    assert r.code == 2 and r.err.startswith("Error:") and "--arch" in r.err
    assert len(r.err.splitlines()) == 1 and not any(tmp_path.iterdir())


def test_starts_from_a_dense_checkpoint_and_eval_shows_the_layer_densities(
    cli, tmp_path, pretrained_digits_mlp
):
    """At lr 0 the kept weights are the checkpoint's own; the arch and dataset come from it;
    `eval` lists every layer's kept fraction (ERK: they differ) on stderr and in --json."""
    import torch

    from ticketkit.artifacts.bundle import Checkpoint
    from ticketkit.artifacts.ticket import Ticket
    from ticketkit.plugins.methods.rewire import erk_counts

    args = ["--method", "static", "--k", "0.1", "--density", "erk", "--epochs", "1", "--lr", "0"]
    r = cli("rewire", pretrained_digits_mlp, *args, "--eval-every", "0", "--out", tmp_path)
    assert r.code == 0, r.err
    ticket = Ticket.read(r.out.strip())
    assert ticket.meta["arch"] == "mlp" and ticket.meta["parent"] == str(pretrained_digits_mlp)
    dense = Checkpoint.read(pretrained_digits_mlp).build().state_dict()
    sparse = ticket.build().state_dict()
    for path, info in ticket.meta["layers"].items():
        kept = sparse[f"{path}.weight"] != 0
        assert int(kept.sum()) == info["kept"]
        assert torch.equal(sparse[f"{path}.weight"][kept], dense[f"{path}.weight"][kept])

    evaluated = cli("eval", r.out.strip(), "--json")
    assert evaluated.code == 0, evaluated.err
    density = json.loads(evaluated.out)["density"]
    shapes = [tuple(info["shape"]) for info in ticket.meta["layers"].values()]
    counts = erk_counts(shapes, 0.1)
    expected = {
        path: round(n / (s[0] * s[1]), 6)
        for path, n, s in zip(ticket.meta["layers"], counts, shapes, strict=True)
    }
    assert density == expected and len(set(density.values())) == 3
    for path, value in density.items():  # the table on stderr: one row per layer, its kept %
        assert any(
            line.split()[:1] == [path] and f"{100 * value:.1f}%" in line
            for line in evaluated.err.splitlines()
        ), (path, evaluated.err)

    wrong = cli("rewire", "-", *args, "--arch", "resnet20", stdin=str(pretrained_digits_mlp))
    assert wrong.code == 2 and "differs from the checkpoint's arch 'mlp'" in wrong.err
    piped = json.dumps(
        {"kind": "checkpoint", "path": str(pretrained_digits_mlp)}
    )  # pretrain --json
    chained = cli("rewire", *args, "--subset", "128", "--out", tmp_path, "--json", stdin=piped)
    assert chained.code == 0, chained.err
    assert json.loads(chained.out)["parent"] == str(pretrained_digits_mlp)


def test_dense_shortcuts_keep_the_1x1_shortcut_convs_dense(cli, tmp_path):
    wrn = ["--arch", "wide-resnet", "--arch-option", "depth=10", "--arch-option", "widen=1"]
    r = cli(
        "rewire", "--method", "dsr", *wrn, "--dataset", "digits", "--subset", "256",
        "--k", "0.2", "--epochs", "1", "-o", "every=2", "--dense-shortcuts",
        "--eval-every", "0", "--out", tmp_path, "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    from ticketkit.artifacts.ticket import Ticket

    ticket = Ticket.read(json.loads(r.out)["path"])
    assert "block2.0.shortcut" not in ticket.meta["layers"]
    assert {"conv1", "block2.0.conv1", "fc"} <= set(ticket.meta["layers"])
    state = ticket.build().state_dict()
    for path in ("block2.0.shortcut", "block3.0.shortcut"):
        assert state[f"{path}.weight"].ne(0).all()  # fully dense
    assert not state["block2.0.conv1.weight"].ne(0).all()
