"""The third-party example plugins (plugins-contrib/ticketkit-supermask, ticketkit-rigl) work
through the CLI and import only the public names of docs/plugins.md."""

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_subprocess


@pytest.fixture(scope="module")
def installed():
    from ticketkit.registry import registry

    if not any(e.spec.name == "supermask" for e in registry().entries("methods")):
        pytest.fail(
            "install the contrib plugin first: pip install -e plugins-contrib/ticketkit-supermask"
        )


def test_supermask_is_listed_with_its_distribution(installed):
    r = run_subprocess("plugins", "--json")
    (row,) = [row for row in json.loads(r.out) if row["name"] == "supermask"]
    assert row["distribution"] == "ticketkit-supermask" and row["version"] == "0.1.0"


def test_supermask_prunes_and_eval_loads_the_ticket(installed, tmp_path):
    """With no training flags: the plugin's own defaults (lr 100, no weight decay) apply."""
    pruned = run_subprocess(
        *"prune --method supermask --arch mlp --k 0.5 --dataset digits --epochs 2 --out".split(),
        tmp_path,
    )
    assert pruned.code == 0, pruned.err
    config = yaml.safe_load((Path(pruned.out.strip()).parent / "config.yaml").read_text())
    assert config["lr"] == 100.0 and config["weight_decay"] == 0.0
    evaluated = run_subprocess("eval", pruned.out.strip(), "--json")
    assert evaluated.code == 0, evaluated.err
    record = json.loads(evaluated.out)
    assert record["method"] == "supermask" and record["metrics"] == record["recorded"]
    assert record["metrics"]["test_acc1"] > 30


def test_supermask_defaults_are_shown_and_yield_to_the_command_line(installed, tmp_path):
    shown = run_subprocess("plugins", "show", "supermask", "--json")
    (record,) = json.loads(shown.out)
    assert record["defaults"] == {"lr": 100.0, "weight_decay": 0.0}
    pruned = run_subprocess(
        *"prune --method supermask --arch mlp --k 0.5 --dataset digits --epochs 0".split(),
        *"--lr 0.5 --out".split(),
        tmp_path,
    )
    assert pruned.code == 0, pruned.err
    config = yaml.safe_load((Path(pruned.out.strip()).parent / "config.yaml").read_text())
    assert config["lr"] == 0.5 and config["weight_decay"] == 0.0


@pytest.fixture(scope="module")
def rigl():
    from ticketkit.registry import registry

    if not any(e.spec.name == "rigl" for e in registry().entries("methods")):
        pytest.fail("install it first: pip install -e plugins-contrib/ticketkit-rigl")


@pytest.mark.parametrize("package", ["ticketkit-supermask", "ticketkit-rigl"])
def test_contrib_plugins_import_only_documented_names(package):
    import ast

    from tests.plugins.test_method_contract import ROOT, documented_names

    public = documented_names()
    modules = (ROOT / "plugins-contrib" / package).glob("ticketkit_*/*.py")
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("ticketkit."):
                for alias in node.names:
                    assert alias.name in public.get(node.module, set()), (path, node.module)


def test_rigl_is_listed_and_rewires_end_to_end(rigl, tmp_path):
    r = run_subprocess("plugins", "--json")
    (row,) = [row for row in json.loads(r.out) if row["name"] == "rigl"]
    assert row["distribution"] == "ticketkit-rigl" and row["version"] == "0.1.0"
    rewired = run_subprocess(
        *"rewire --method rigl --arch mlp --k 0.3 --dataset digits --epochs 2".split(),
        *"--density erk -o every=5 -o alpha=0.5 --out".split(),
        tmp_path,
    )
    assert rewired.code == 0, rewired.err
    evaluated = run_subprocess("eval", rewired.out.strip(), "--json")
    assert evaluated.code == 0, evaluated.err
    record = json.loads(evaluated.out)
    assert record["method"] == "rigl" and record["metrics"] == record["recorded"]
    assert record["metrics"]["test_acc1"] > 30
    bad = run_subprocess(*"rewire --method rigl --arch mlp --k 0.3 -o alpha=2".split())
    assert bad.code == 2 and bad.err.strip().startswith("Error:") and "alpha" in bad.err
