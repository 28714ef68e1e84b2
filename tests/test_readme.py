"""README's two commands are what a newcomer copies: each must do all of its own set-up.

The quickstart line is read from README.md and its `ticketkit` step run as written; the test
command is the line `.ci/run` extracts and runs, so CI breaks the day it stops setting up.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.conftest import run_subprocess

ROOT = Path(__file__).resolve().parents[1]


def readme_line(marker: str) -> str:
    """The one line of the fenced block right after README's `<!-- marker` comment."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {marker}[^\n]*-->\n```\n([^\n]+)\n```", text)
    assert found, f"README.md has no {marker} block"
    return found.group(1)


def steps(line: str) -> list[str]:
    return [step.strip() for step in line.split("&&")]


def test_quickstart_installs_its_data_and_finds_a_ticket(tmp_path, fashion):
    line = readme_line("quickstart")
    setup, run = steps(line)[:-1], steps(line)[-1]
    assert "apt-get install -y dataset-fashion-mnist" in setup and "pip install -e ." in setup
    args = shlex.split(run)
    assert args[0] == "ticketkit"
    r = run_subprocess(*args[1:], cwd=tmp_path)  # as written, in a fresh directory
    assert r.code == 0, r.err
    ticket = tmp_path / r.out.strip()
    assert ticket.name == "ticket.safetensors" and ticket.is_file()
    assert ticket.parent.parent == tmp_path / "runs"


def test_ci_runs_the_readme_test_command_and_installs_nothing_itself():
    ci = (ROOT / ".ci" / "run").read_text()
    line = readme_line("test-command")
    assert ci.rstrip("\n").splitlines()[-1] == line  # verbatim, and the last thing it does
    assert "apt-get" not in ci.replace(line, "").replace("# ", "")  # only README's line installs
    assert "apt-get install -y dataset-fashion-mnist" in line
    assert steps(line)[-1] == "python -m pytest -q"


def test_the_kernels_compile_where_a_compiler_is_installed():
    """README's test command installs gcc: the kernels' tests must run, not skip, there."""
    import os
    import shutil

    import pytest

    from ticketkit.masks.kernels import kernels

    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler: README's test command installs gcc (as root)")
    assert kernels() is not None, "the CPU kernels did not compile"
