"""The foundation's acceptance tests, through the real console script."""

import json
import math

import numpy as np
import pytest
from safetensors import safe_open

from tests.conftest import run_subprocess


@pytest.fixture(scope="module")
def conv4_ticket(tmp_path_factory, fashion):
    out = tmp_path_factory.mktemp("runs")
    result = run_subprocess(
        *"prune --method biprop --arch conv4 --k 0.2 --dataset fashion-mnist".split(),
        *"--subset 5000 --epochs 2 --out".split(),
        out,
    )
    return result, out


@pytest.mark.slow
def test_prune_prints_exactly_the_ticket_path(conv4_ticket):
    result, out = conv4_ticket
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert len(lines) == 1 and lines[0].endswith("ticket.safetensors")
    assert lines[0].startswith(str(out))
    assert "epoch 1" in result.err and "Traceback" not in result.err


@pytest.mark.slow
def test_ticket_is_exact_and_small_read_with_plain_safetensors(conv4_ticket):
    result, _ = conv4_ticket
    path = result.out.strip()
    total_weights = 0
    with safe_open(path, "np") as f:
        meta = f.metadata()
        layers = json.loads(meta["layers"])
        assert meta["weights"] == "sign" and float(meta["k"]) == 0.2
        for name, info in layers.items():
            n = int(np.prod(info["shape"]))
            total_weights += n
            keep = n - math.floor((1 - 0.2) * n)
            bits = np.unpackbits(f.get_tensor(f"{name}.mask"), count=n, bitorder="little")
            assert int(bits.sum()) == keep == info["kept"]
            assert f.get_tensor(f"{name}.sign").size * 8 - keep in range(8)
    size = (lambda p: __import__("os").path.getsize(p))(path)
    assert size <= 1.05 * (1 + 0.2) / 8 * total_weights + 64 * 1024


@pytest.mark.slow
def test_eval_reproduces_the_recorded_accuracy_exactly(conv4_ticket):
    result, _ = conv4_ticket
    path = result.out.strip()
    evaluated = run_subprocess("eval", path, "--json")
    assert evaluated.code == 0, evaluated.err
    record = json.loads(evaluated.out)
    assert record["metrics"] == record["recorded"]
    assert record["metrics"]["test_acc1"] > 50  # 2 epochs on 5000 images: far above chance


def test_same_command_and_seed_give_identical_payloads(tmp_path):
    args = (
        "prune",
        "--method",
        "biprop",
        "--arch",
        "mlp",
        "--k",
        "0.3",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--batch-size",
        "64",
    )
    a = run_subprocess(*args, "--out", tmp_path / "a")
    b = run_subprocess(*args, "--out", tmp_path / "b")
    assert a.code == 0 and b.code == 0, a.err + b.err
    with safe_open(a.out.strip(), "np") as fa, safe_open(b.out.strip(), "np") as fb:
        assert fa.metadata()["payload_sha256"] == fb.metadata()["payload_sha256"]
        for name in fa.keys():
            assert np.array_equal(fa.get_tensor(name), fb.get_tensor(name))


def test_json_record_and_reuse(cli, tmp_path):
    args = (
        "prune",
        "--method",
        "edgepopup",
        "--arch",
        "mlp",
        "--k",
        "0.5",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--out",
        tmp_path,
        "--json",
    )
    first = cli(*args)
    assert first.code == 0, first.err
    record = json.loads(first.out)
    assert record["kind"] == "ticket" and record["method"] == "edgepopup" and record["k"] == 0.5
    assert set(record["metrics"]) == {"test_acc1", "test_acc5", "test_loss"}
    again = cli(*args)
    assert json.loads(again.out)["path"] == record["path"]
    assert "reusing finished run" in again.err


def test_config_is_saved_in_run_dir_and_ticket(cli, tmp_path):
    cfg = tmp_path / "exp.yml"
    cfg.write_text("epochs: 1\nbatch_size: 32\noptions:\n  alpha: channel\n")
    r = cli(
        *"prune --method biprop --arch mlp --k 0.4 --dataset digits --config".split(),
        cfg,
        "--out",
        tmp_path,
    )
    assert r.code == 0, r.err
    import yaml

    from ticketkit.artifacts.ticket import Ticket

    path = r.out.strip()
    saved = yaml.safe_load(open(path.replace("ticket.safetensors", "config.yaml")))
    assert saved["batch_size"] == 32 and saved["options"] == {"alpha": "channel"}
    t = Ticket.read(path)
    assert t.meta["config"]["batch_size"] == 32 and t.meta["method_options"] == {"alpha": "channel"}


def test_schedule_flags_reach_the_training_loop(cli, tmp_path):
    r = cli(
        *"prune --method biprop --arch mlp --k 0.5 --dataset digits --epochs 4".split(),
        *"--eval-every 0 --schedule step --warmup 1 --lr-steps 2,3 --lr-gamma 0.5".split(),
        *("--out", tmp_path),
    )
    assert r.code == 0, r.err
    run = tmp_path / r.out.strip().split("/")[-2]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = [line["lr"] for line in lines if line["phase"] == "prune"]
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.025])  # warm-up epoch, then steps at 2, 3


def test_optimizer_options_reach_the_optimizer(cli, tmp_path):
    args = [*"prune --method biprop --arch mlp --k 0.5 --dataset digits --epochs 1".split()]
    r = cli(*args, "-O", "nesterov=true", "--out", tmp_path / "runs")
    assert r.code == 0, r.err
    last = tmp_path / "runs" / r.out.strip().split("/")[-2] / "checkpoints" / "last.safetensors"
    with safe_open(str(last), "pt") as f:
        groups = json.loads(f.metadata()["opt.main"])["groups"]
    assert groups and all(group["nesterov"] for group in groups)
    bad = cli(*args, "-O", "nestrov=true", "--out", tmp_path / "bad")
    assert bad.code == 2 and "no option 'nestrov'; did you mean 'nesterov'?" in bad.err
    assert not (tmp_path / "bad").exists()  # refused before any work


def test_ctrl_c_exits_130_and_the_run_resumes(tmp_path):
    """SIGINT after the first epoch: "Interrupted.", exit 130; the same command then resumes."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "ticketkit"
    command = [str(script) if script.exists() else "ticketkit"]
    command += "prune --method biprop --arch mlp --k 0.5 --dataset digits --epochs 50".split()
    command += ["--out", str(tmp_path)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # progress notes: one line per epoch
        seen.append(line)
        if line.startswith("epoch 1:"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + err
    assert err.strip().splitlines()[-1] == "Interrupted." and out == ""
    resumed = run_subprocess(*command[1:])
    assert resumed.code == 0 and "resuming" in resumed.err
