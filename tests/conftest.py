"""Shared fixtures: run the CLI in-process or as a real subprocess, and locate real data."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")

# The suite's own third-party plugin (methods written from docs/plugins.md alone): its
# dist-info on sys.path installs its entry point for every in-process test.
sys.path.insert(0, str(Path(__file__).parent / "plugins" / "contract_plugin"))


REPO_RUNS = Path(__file__).resolve().parents[1] / "runs"
_REPO_RUNS_BEFORE = REPO_RUNS.exists()


def pytest_sessionfinish(session, exitstatus):
    """Every test writes its runs under its tmp_path: a `runs/` left in the checkout by the
    suite (a command run without --out in the working directory) fails it."""
    if not _REPO_RUNS_BEFORE and REPO_RUNS.exists():
        session.exitstatus = 1
        print(f"\nERROR: the test suite wrote run directories into {REPO_RUNS} (pass --out)")


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `ticketkit ARGS` in this process; returns exit code, stdout and stderr."""

    def run(*args: str, stdin: str | None = None) -> Outcome:
        from ticketkit.cli import main

        if stdin is not None:
            import io

            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return Outcome(code, out, err)

    return run


def run_subprocess(
    *args: str, env: dict | None = None, stdin: str | None = None, cwd=None
) -> Outcome:
    """Run the installed `ticketkit` console script as a user would."""
    script = Path(sys.executable).parent / "ticketkit"  # the venv's script, even if not on PATH
    proc = subprocess.run(
        [str(script) if script.exists() else "ticketkit", *map(str, args)],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=900,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


FASHION_MISSING = (
    f"Fashion-MNIST is not in {FASHION}: README's test command installs it "
    "(apt-get install dataset-fashion-mnist, as root)"
)


@pytest.fixture(scope="session")
def fashion():
    """The Fashion-MNIST files of Debian's dataset-fashion-mnist; tests that need them are
    skipped with one line saying how to get them (README's test command installs them)."""
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(FASHION_MISSING)
    return FASHION


@pytest.fixture(scope="session")
def pretrained_resnet20(tmp_path_factory, fashion):
    """A resnet20 trained briefly on real Fashion-MNIST images (a dense checkpoint path)."""
    from ticketkit import jobs
    from ticketkit.runs.config import PretrainConfig, resolve

    out = tmp_path_factory.mktemp("pretrained")
    cfg = resolve(
        PretrainConfig,
        {
            "arch": "resnet20",
            "dataset": "fashion-mnist",
            "subset": 1000,
            "epochs": 1,
            "eval_every": 0,
            "out": str(out),
        },
    )
    return jobs.pretrain(cfg).path


@pytest.fixture(scope="session")
def pretrained_digits_mlp(tmp_path_factory):
    """A small MLP trained on the scikit-learn digits (fast dense checkpoint for method tests)."""
    from ticketkit import jobs
    from ticketkit.runs.config import PretrainConfig, resolve

    out = tmp_path_factory.mktemp("pretrained-mlp")
    cfg = resolve(
        PretrainConfig,
        {"arch": "mlp", "dataset": "digits", "epochs": 3, "eval_every": 0, "out": str(out)},
    )
    return jobs.pretrain(cfg).path
