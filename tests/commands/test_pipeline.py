"""pretrain | prune | finetune | eval as a real shell pipeline, and chaining errors."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def sh(command: str, tmp_path) -> subprocess.CompletedProcess:
    env_path = f"{BIN}:{__import__('os').environ.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**__import__("os").environ, "PATH": env_path},
        timeout=900,
    )


@pytest.mark.slow
def test_four_command_shell_pipeline_ends_with_a_json_record(tmp_path, fashion):
    common = f"--dataset fashion-mnist --subset 1000 --out {shlex.quote(str(tmp_path))}"
    r = sh(
        f"ticketkit pretrain --arch resnet20 --epochs 1 {common}"
        f" | ticketkit prune --method bip --k 0.05 --epochs 1 --subset 1000 --out {tmp_path}"
        f" | ticketkit finetune --epochs 1 --subset 1000 --out {tmp_path}"
        " | ticketkit eval --json",
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["kind"] == "eval" and record["method"] == "bip" and record["k"] == 0.05
    assert record["metrics"] == record["recorded"] and 0 < record["metrics"]["test_acc1"] <= 100
    assert "finetune-resnet20-bip-k0.05" in record["path"]
    assert "prune-resnet20-bip-k0.05" in record["parent"]
    assert "layer3.2.conv2" in r.stderr  # the per-layer sparsity tables went to stderr


def test_upstream_failure_is_a_clear_error_not_a_hang(tmp_path):
    r = sh(
        f"ticketkit pretrain --arch nope --dataset digits --out {tmp_path} "
        f"| ticketkit prune --method hydra --k 0.1 --out {tmp_path}",
        tmp_path,
    )
    assert r.returncode == 2
    assert "unknown arch 'nope'" in r.stderr
    assert "no dense checkpoint on stdin: the upstream command printed nothing" in r.stderr
    assert "Traceback" not in r.stderr


def test_inputs_as_path_dash_and_json_record(cli, pretrained_digits_mlp, tmp_path):
    by_path = cli(
        "prune",
        pretrained_digits_mlp,
        "--method",
        "magnitude",
        "--k",
        "0.3",
        "--out",
        tmp_path,
        "--json",
    )
    assert by_path.code == 0, by_path.err
    record = json.loads(by_path.out)
    assert record["parent"] == str(pretrained_digits_mlp) and record["method"] == "magnitude"
    by_dash = cli("finetune", "-", "--epochs", "1", "--out", tmp_path, stdin=record["path"] + "\n")
    assert by_dash.code == 0, by_dash.err
    by_json = cli("eval", "--json", stdin=by_path.out)
    assert by_json.code == 0 and json.loads(by_json.out)["path"] == record["path"]
