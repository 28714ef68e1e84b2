"""`ticketkit rewire` as a user runs it: stdout is the ticket's path or one JSON record, the
per-layer densities of every epoch are in metrics.jsonl, the ticket evaluates and fine-tunes,
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
    ],
)
def test_bad_input_is_one_error_line(cli, tmp_path, args, message):
    r = cli("rewire", "--arch", "mlp", "--dataset", "digits", "--out", tmp_path, *args)
    assert r.code == 2, r.err
    assert r.err.startswith("Error:") and message in r.err and len(r.err.splitlines()) == 1
    assert r.out == "" and not any(tmp_path.iterdir())  # nothing left behind
