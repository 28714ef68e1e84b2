"""Runs a researcher can trust and share (issue 19, item 3): one process per run directory,
an explicit --data that is used or refused, the umask's permissions, eval's check of what an
artifact records, and SIGTERM (a scheduler's preemption notice) handled as Ctrl-C."""

from __future__ import annotations

import csv
import json
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.commands.test_errors import assert_usage_error
from tests.conftest import run_subprocess

PRUNE = "prune --method biprop --arch mlp --k 0.5 --dataset digits".split()


def _script() -> str:
    script = Path(sys.executable).parent / "ticketkit"  # the venv's script, even if not on PATH
    return str(script) if script.exists() else "ticketkit"


def test_two_identical_prunes_started_together_train_once(tmp_path):
    """Both hash to one run directory: one trains (each epoch logged once, one results row),
    the other exits 2 naming the lock's holder (pid, host, start time)."""
    command = [_script(), *PRUNE, "--epochs", "2", "--out", str(tmp_path)]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    lines: queue.Queue = queue.Queue()
    err: dict[int, list[str]] = {p.pid: [] for p in procs}

    def pump(proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            err[proc.pid].append(line)
            lines.put((proc, line))

    pumps = [threading.Thread(target=pump, args=(p,), daemon=True) for p in procs]
    for thread in pumps:
        thread.start()
    # the first to finish an epoch holds the lock: stop it there, so that the other surely
    # reaches the lock while it is held, however the two happened to be scheduled
    winner = None
    while winner is None:
        proc, line = lines.get(timeout=120)
        if line.startswith("epoch 1:"):
            winner = proc
    os.kill(winner.pid, signal.SIGSTOP)
    (loser,) = [p for p in procs if p is not winner]
    try:
        loser.wait(timeout=120)
    finally:
        os.kill(winner.pid, signal.SIGCONT)
    winner.wait(timeout=120)
    for thread in pumps:
        thread.join(timeout=10)
    assert winner.returncode == 0, "".join(err[winner.pid])
    assert loser.returncode == 2, "".join(err[loser.pid])
    message = err[loser.pid][-1]
    assert message.startswith("Error: run directory") and "is in use" in message
    assert f"ticketkit process {winner.pid} on {socket.gethostname()} (started " in message
    assert loser.stdout.read() == "" and winner.stdout.read().strip().endswith(".safetensors")
    (run,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in records] == [
        ("prune", 1),
        ("prune", 2),
        ("final", 2),
    ]
    with open(tmp_path / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 1
    assert (run / ".lock").read_text() == ""  # given back: it names no holder any more


def test_data_dir_without_the_dataset_is_an_error(cli, tmp_path):
    """No silent fallback to the system copy while the run records `data: DIR`."""
    empty = tmp_path / "empty"
    empty.mkdir()
    args = "prune --method biprop --arch mlp --k 0.5 --dataset fashion-mnist".split()
    r = cli(*args, "--subset", "100", "--epochs", "1", "--data", empty, "--out", tmp_path / "runs")
    assert_usage_error(r, f"--data {empty}: dataset 'fashion-mnist' is not there")
    assert "t10k-labels-idx1-ubyte.gz" in r.err  # the files expected
    assert not (tmp_path / "runs").exists()


def test_every_file_a_run_writes_gets_the_umasks_permissions(tmp_path):
    """Under umask 022 every file is 0644 (tickets and checkpoints were 0600: safetensors
    writes its own 0600 file over the temporary one)."""
    proc = subprocess.run(
        [_script(), *PRUNE, "--epochs", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert proc.returncode == 0, proc.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"ticket.safetensors", "last.safetensors", "best.safetensors", "results.csv"} <= names
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


def test_eval_warns_when_the_recorded_accuracy_was_edited(cli, tmp_path):
    from ticketkit import jobs
    from ticketkit.runs import config

    cfg = config.resolve(
        config.PruneConfig,
        {"method": "biprop", "arch": "mlp", "k": 0.5, "dataset": "digits", "epochs": 1},
    )
    cfg.out = str(tmp_path / "runs")
    path = jobs.prune(cfg).path
    honest = cli("eval", path)
    assert honest.code == 0 and "Warning" not in honest.err
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    metrics = json.loads(meta["metrics"])
    metrics["test_acc1"] = 99.5  # the payload checksum does not cover the metadata
    edited = tmp_path / "edited.safetensors"
    save_file(load_file(str(path)), str(edited), metadata={**meta, "metrics": json.dumps(metrics)})
    r = cli("eval", edited)
    assert r.code == 0, r.err
    (warning,) = [line for line in r.err.splitlines() if line.startswith("Warning:")]
    assert "top-1" in warning and "99.50%" in warning and str(edited) in warning


def test_sigterm_exits_143_and_the_same_command_gives_the_same_ticket(tmp_path):
    """SIGTERM after the first epoch: one line, exit 143; the same command resumes and ends
    with the ticket of an uninterrupted run, bit for bit."""
    from ticketkit import jobs
    from ticketkit.runs import config

    command = [_script(), *PRUNE, "--epochs", "3", "--out", str(tmp_path / "runs")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # progress notes: one line per epoch
        seen.append(line)
        if line.startswith("epoch 1:"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, "".join(seen) + err
    assert err.strip().splitlines()[-1] == "Terminated (SIGTERM)." and out == ""
    assert "Traceback" not in err
    resumed = run_subprocess(*command[1:])
    assert resumed.code == 0 and "resuming" in resumed.err, resumed.err
    cfg = config.resolve(
        config.PruneConfig,
        {"method": "biprop", "arch": "mlp", "k": 0.5, "dataset": "digits", "epochs": 3},
    )
    cfg.out = str(tmp_path / "uninterrupted")
    reference = jobs.prune(cfg).path
    with safe_open(resumed.out.strip(), "np") as a, safe_open(str(reference), "np") as b:
        assert a.metadata()["payload_sha256"] == b.metadata()["payload_sha256"]
