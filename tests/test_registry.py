"""Plugin loading: built-ins through entry points, isolation of broken plugins, name clashes."""

import json
import textwrap

import pytest

from tests.conftest import run_subprocess


def fake_distribution(root, name, module, code):
    """A minimal installed distribution on sys.path with one `ticketkit` entry point."""
    dist = root / f"{name.replace('-', '_')}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[ticketkit]\n{module} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    return {"PYTHONPATH": str(root)}


BROKEN = "raise ImportError('deliberately broken')\n"
IMPOSTOR = """
from ticketkit import MethodSpec, hookimpl

@hookimpl
def ticketkit_register_methods(register):
    register(MethodSpec(name="biprop", summary="impostor", factory="nowhere:Nothing"))
"""


def test_builtins_register_through_entry_points_with_their_distribution():
    from ticketkit.registry import registry

    entries = {(e.kind, e.spec.name): e for e in registry().entries()}
    for key in [
        ("methods", "biprop"),
        ("methods", "edgepopup"),
        ("archs", "conv4"),
        ("archs", "mlp"),
        ("archs", "vgg-small"),
        ("datasets", "fashion-mnist"),
        ("datasets", "digits"),
        ("optimizers", "sgd"),
        ("initializers", "signed-constant"),
    ]:
        assert entries[key].distribution == "ticketkit"


def test_a_broken_plugin_is_one_warning_and_everything_else_works(tmp_path):
    env = fake_distribution(tmp_path / "site", "broken-plugin", "broken_plugin_mod", BROKEN)
    listed = run_subprocess("plugins", "--json", env=env)
    assert listed.code == 0
    warnings = [l for l in listed.err.splitlines() if l.strip()]
    assert len(warnings) == 1
    assert "broken_plugin_mod" in warnings[0] and "broken-plugin 0.1" in warnings[0]
    assert "deliberately broken" in warnings[0]
    assert "biprop" in {r["name"] for r in json.loads(listed.out)}
    pruned = run_subprocess(
        *"prune --method biprop --arch mlp --k 0.5 --dataset digits --epochs 1 --out".split(),
        tmp_path / "runs",
        env=env,
    )
    assert pruned.code == 0, pruned.err
    assert run_subprocess("eval", pruned.out.strip(), env=env).code == 0
    strict = run_subprocess("plugins", env={**env, "TICKETKIT_STRICT_PLUGINS": "1"})
    assert strict.code != 0 and "deliberately broken" in strict.err
    disabled = run_subprocess("plugins", env={**env, "TICKETKIT_DISABLE_PLUGINS": "broken-plugin"})
    assert disabled.code == 0 and disabled.err.strip() == ""


def test_a_name_clash_names_both_distributions(tmp_path):
    env = fake_distribution(tmp_path / "site", "impostor-plugin", "impostor_mod", IMPOSTOR)
    listed = run_subprocess("plugins", "--json", env=env)
    assert listed.code == 0
    assert "already registered by ticketkit" in listed.err and "impostor-plugin" in listed.err
    biprop = [r for r in json.loads(listed.out) if r["name"] == "biprop"]
    assert [r["distribution"] for r in biprop] == ["ticketkit"]


def test_unknown_name_suggests():
    from ticketkit.errors import UsageError
    from ticketkit.registry import get_method

    with pytest.raises(UsageError, match="did you mean 'edgepopup'"):
        get_method("edgepop")


def test_equally_close_names_are_all_suggested():
    from ticketkit.errors import did_you_mean

    choices = ["conv2", "conv4", "conv6", "conv8", "mlp"]
    assert did_you_mean("conv5", choices) == "; did you mean 'conv2', 'conv4', 'conv6' or 'conv8'?"
    assert did_you_mean("conv44", choices) == "; did you mean 'conv4'?"
    assert did_you_mean("resnet", choices) == ""
