"""`ticketkit find-ticket` as a user runs it: stdout is the final ticket's path or one JSON
record with every level, the level table goes to stderr, and bad input is one `Error:` line."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.conftest import run_subprocess

SEARCH = "find-ticket --method imp --arch mlp --dataset digits --levels 2 --epochs 1".split()
TOTAL = 64 * 300 + 300 * 100 + 100 * 10  # the digits MLP's prunable weights


def test_json_record_levels_table_reuse_resume_and_eval(cli, tmp_path):
    r = cli(*SEARCH, "--eval-every", "0", "--out", tmp_path, "--json")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == {"kind", "path", "parent", "method", "k", "metrics", "levels"}
    assert record["kind"] == "ticket" and record["method"] == "imp"
    assert record["path"].endswith("ticket.safetensors") and record["parent"] is None
    levels = record["levels"]
    assert [level["level"] for level in levels] == [0, 1, 2]
    assert all(set(level) == {"level", "k", "kept", "path", "metrics"} for level in levels)
    first = TOTAL - math.floor(0.2 * TOTAL)
    assert [level["kept"] for level in levels] == [
        TOTAL,
        first,
        first - math.floor(0.2 * first),
    ]
    assert levels[0]["k"] == 1.0 and record["k"] == levels[-1]["k"]  # no --k: the k found
    assert record["metrics"] == levels[-1]["metrics"]
    assert all(
        level["path"].endswith(f"stages/{level['level']}/ticket.safetensors") for level in levels
    )
    run_dir = tmp_path / record["path"].split("/")[-2]
    assert json.loads((run_dir / "summary.json").read_text())["levels"] == levels
    assert "remaining" in r.err and "64.00%" in r.err and "Traceback" not in r.err

    again = cli(*SEARCH, "--eval-every", "0", "--out", tmp_path)  # finished: reused
    assert again.code == 0 and again.out == record["path"] + "\n"
    assert "reusing" in again.err and "remaining" in again.err
    resumed = cli("find-ticket", "--resume", run_dir, "--json")
    assert resumed.code == 0, resumed.err
    assert json.loads(resumed.out) == record
    refused = cli("find-ticket", "--resume", run_dir, "--rate", "0.5")
    assert refused.code == 2 and refused.err.startswith("Error:")

    evaluated = cli("eval", record["path"], "--json")
    assert evaluated.code == 0, evaluated.err
    assert json.loads(evaluated.out)["metrics"] == record["metrics"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--levels", "2", "--rewind", "3"], "--rewind must be 0 (the init), Nep"),
        (["--levels", "2", "--rewind", "2epochs"], "--rewind must be"),
        (["--levels", "2", "--rewind", "5ep"], "--rewind 5ep: level 0 trains only 1 epochs"),
        (["--levels", "2", "--rate", "1.5"], "--rate must be in (0, 1)"),
        (["--levels", "2", "--rate", "0"], "--rate must be in (0, 1)"),
        (["--k", "1.2"], "--k is the fraction of weights kept"),
        ([], "imp needs a target: pass --k"),
        (["--k", "1"], "keeps every prunable weight"),
        (["--levels", "2", "--reinit", "sometimes"], "must be one of none, random"),
        (["--levels", "2", "--reinit", "random", "--rewind", "1ep"], "takes no --rewind"),
        (["--levels", "2", "--scope", "row"], "--scope must be one of"),
        (["--k", "0.5", "--rounds", "2", "--rate", "0.2"], "--rounds sets the levels"),
        (["--k", "0.5", "--rounds", "2", "-o", "rate=0.3"], "drop --rate"),
        (["--k", "0.5", "--rounds", "2", "--levels", "2"], "drop --levels"),
        (["--rounds", "2"], "--rounds reaches --k in that many levels: pass --k"),
        (["--k", "0.5", "--rounds", "-1"], "--rounds must be >= 1"),
        (["--k", "0.9999", "--rounds", "30"], "more levels than weights to prune"),
        (["--levels", "2", "--early-bird", "--eb-window", "1"], "--eb-window must be >= 2"),
        (["--levels", "2", "--early-bird", "--eb-eps", "1"], "--eb-eps must be in [0, 1)"),
        (["--levels", "2", "--method", "biprop"], "runs under `ticketkit prune`"),
        (["--levels", "2", "--method", "imq"], "imp"),
    ],
)
def test_bad_input_is_one_error_line(cli, tmp_path, args, message):
    base = "find-ticket --method imp --arch mlp --dataset digits --epochs 1".split()
    r = cli(*base, "--out", tmp_path / "runs", *args)
    assert r.code == 2, (r.out, r.err)
    assert r.out == "" and r.err.startswith("Error:") and message in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not (tmp_path / "runs").exists()  # refused before any run directory


def test_prune_refuses_imp(cli, tmp_path):
    r = cli("prune", "--method", "imp", "--arch", "mlp", "--k", "0.5", "--out", tmp_path)
    assert r.code == 2 and "runs under `ticketkit find-ticket`" in r.err


@pytest.mark.slow
def test_sigterm_in_level_3_resumes_there_and_ends_with_the_uninterrupted_tickets(tmp_path):
    """A scheduler's SIGTERM while level 3 trains: exit 143 with one line; the same command
    leaves levels 0-2 as they were (bytes and mtimes), trains none of them again, and ends
    with every level's ticket bit for bit as a run never interrupted."""
    epochs = 2
    args = [*SEARCH[:-4], "--levels", "4", "--epochs", str(epochs), "--batch-size", "64"]
    args += ["--subset", "300", "--eval-every", "0", "--seed", "3"]
    script = Path(sys.executable).parent / "ticketkit"
    command = [str(script) if script.exists() else "ticketkit", *args]
    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [*command, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:  # one line per epoch: the first of level 3 is line 3 * epochs + 1
        seen.append(line)
        if sum(line.startswith("epoch ") for line in seen) == 3 * epochs + 1:
            proc.send_signal(signal.SIGTERM)
            break
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, "".join(seen) + err
    assert err.strip().splitlines()[-1] == "Terminated (SIGTERM)." and stdout == ""
    assert "Traceback" not in err
    (run,) = out.glob("find-ticket-*")
    assert sorted(p.name for p in (run / "stages").iterdir()) == ["0", "1", "2"]
    assert (run / "checkpoints" / "3" / "last.safetensors").exists()  # level 3 was training
    done = [p for level in "012" for p in (run / "stages" / level).rglob("*") if p.is_file()]
    done += [run / "checkpoints" / level / "end.safetensors" for level in "012"]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done}

    resumed = run_subprocess(*args, "--out", out)
    assert resumed.code == 0, resumed.err
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done} == before
    lines = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    trained = [(line["stage"], line["epoch"]) for line in lines if line["phase"] == "find-ticket"]
    levels = [str(level) for level in range(5)]
    assert trained == [(level, e) for level in levels for e in range(1, epochs + 1)]

    reference = run_subprocess(*args, "--out", tmp_path / "uninterrupted", "--json")
    assert reference.code == 0, reference.err
    record = json.loads(reference.out)
    assert resumed.out.strip() == str(run / "ticket.safetensors")
    paths = [Path(level["path"]) for level in record["levels"]]
    assert [p.parent.name for p in paths] == levels
    for path in [*paths, Path(record["path"])]:
        ours = run / path.relative_to(Path(record["path"]).parent)
        with safe_open(str(ours), "np") as a, safe_open(str(path), "np") as b:
            assert a.metadata()["payload_sha256"] == b.metadata()["payload_sha256"], path
