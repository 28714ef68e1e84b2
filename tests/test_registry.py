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


TYPO = """
from ticketkit import MethodSpec, hookimpl

@hookimpl
def ticketkit_register_method(register):  # misspelled: the hook is ..._methods
    register(MethodSpec(name="typo-method", summary="never registered", factory="nowhere:X"))

@hookimpl
def ticketkit_register_optimizers(register):
    pass
"""
QUIET = """
from ticketkit import MethodSpec, hookimpl
from quiet_helpers import ticketkit_helper  # another module's function: not this plugin's

@hookimpl(specname="ticketkit_register_methods")
def ticketkit_methods_here(register):  # a ticketkit_* name that pluggy did register
    register(MethodSpec(name="renamed", summary="registered through specname", factory=str))

@hookimpl(optionalhook=True)
def ticketkit_register_exporters(register):  # a hook of a later version, marked optional
    pass
"""
UNDECORATED = """
from ticketkit import ArchSpec

def ticketkit_register_archs(register):  # no @hookimpl: pluggy skips it
    register(ArchSpec(name="undecorated-arch", summary="never registered", factory="nowhere:x"))
"""


def test_a_misspelled_or_undecorated_hook_is_one_warning_naming_plugin_and_hook(tmp_path):
    site = tmp_path / "site"
    env = fake_distribution(site, "typo-plugin", "typo_mod", TYPO)
    fake_distribution(site, "undecorated-plugin", "undecorated_mod", UNDECORATED)
    fake_distribution(site, "quiet-plugin", "quiet_mod", QUIET)  # nothing to report here
    (site / "quiet_helpers.py").write_text("def ticketkit_helper():\n    pass\n")
    listed = run_subprocess("plugins", "--json", env=env)
    assert listed.code == 0, listed.err
    typo, undecorated = [line for line in listed.err.splitlines() if line.strip()]
    assert typo.startswith("warning: plugin 'typo_mod' from typo-plugin 0.1: ")
    assert "'ticketkit_register_method' is not a ticketkit hook" in typo
    assert "did you mean 'ticketkit_register_methods'?" in typo
    assert undecorated.startswith("warning: plugin 'undecorated_mod' from undecorated-plugin 0.1")
    assert "'ticketkit_register_archs' lacks @hookimpl" in undecorated
    names = {row["name"] for row in json.loads(listed.out)}
    assert {"biprop", "renamed"} <= names and not {"typo-method", "undecorated-arch"} & names

    strict = run_subprocess("plugins", env={**env, "TICKETKIT_STRICT_PLUGINS": "1"})
    assert strict.code == 2
    (line,) = [line for line in strict.err.splitlines() if line.strip()]
    assert line.startswith("Error: plugin 'typo_mod' from typo-plugin 0.1: ")
    assert "'ticketkit_register_method'" in line and "'ticketkit_register_methods'" in line
    assert strict.out == ""


BOOM = {
    "register.py": """
        from ticketkit import ArchSpec, hookimpl

        @hookimpl
        def ticketkit_register_archs(register):
            register(ArchSpec(name="boom-arch", summary="fails", factory="boom_pkg.impl:build"))
        """,
    "impl.py": """
        def _layers(input):
            raise ValueError(f"no layers for {input.classes} classes")

        def build(input, **options):
            return _layers(input)
        """,
}


def test_an_exception_in_plugin_code_names_the_plugin_and_its_distribution(tmp_path):
    site = tmp_path / "site"
    package = site / "boom_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, code in BOOM.items():
        (package / name).write_text(textwrap.dedent(code))
    dist = site / "boom_plugin-2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: boom-plugin\nVersion: 2.3\n")
    (dist / "entry_points.txt").write_text("[ticketkit]\nboom = boom_pkg.register\n")
    env = {"PYTHONPATH": str(site)}
    r = run_subprocess(
        *"pretrain --arch boom-arch --dataset digits --epochs 1 --out".split(), tmp_path, env=env
    )
    assert r.code == 1
    assert r.err.strip() == (
        "Error: plugin 'boom' (distribution boom-plugin 2.3) failed: ValueError: no layers for "
        "10 classes (rerun with TICKETKIT_DEBUG=1 for the traceback)"
    )
    debug = run_subprocess(
        *"pretrain --arch boom-arch --dataset digits --epochs 1 --out".split(),
        tmp_path,
        env={**env, "TICKETKIT_DEBUG": "1"},
    )
    assert debug.code == 1 and "Traceback" in debug.err and "boom_pkg/impl.py" in debug.err


def test_plugin_of_traceback_finds_the_innermost_plugin_frame_past_ticketkit_frames():
    from torch import nn

    from ticketkit.errors import UsageError
    from ticketkit.plugin import Setup
    from ticketkit.registry import Owner, get_method, plugin_of_traceback

    supermask = get_method("supermask").load()  # plugins-contrib, installed by the suite
    method = supermask(get_method("supermask").make_options(), Setup(k=0.5))
    # Supermask.prepare -> ScoreMethod.prepare -> Sparsifier.attach, which raises
    with pytest.raises(UsageError, match="no prunable layer") as in_plugin:
        method.prepare(nn.ReLU())
    owner = plugin_of_traceback(in_plugin.value.__traceback__)
    assert owner == Owner("supermask", "ticketkit-supermask", "0.1.0")
    with pytest.raises(UsageError) as in_ticketkit:  # ticketkit's own code, no plugin frame
        get_method("no-such-method")
    assert plugin_of_traceback(in_ticketkit.value.__traceback__) is None
    assert plugin_of_traceback(None) is None


def test_a_method_for_a_command_that_does_not_exist_is_refused_at_registration(tmp_path):
    from ticketkit import MethodSpec
    from ticketkit.specs import PHASES

    assert PHASES == ("prune", "find-ticket", "rewire")
    with pytest.raises(ValueError, match=r"phase .distill. has no command .*find-ticket, rewire"):
        MethodSpec(name="later", summary="", factory="x:y", phase="distill")
    code = """
    from ticketkit import MethodSpec, hookimpl

    @hookimpl
    def ticketkit_register_methods(register):
        register(MethodSpec(name="later", summary="s", factory="x:y", phase="distill"))
    """
    env = fake_distribution(tmp_path / "site", "later-plugin", "later_mod", code)
    listed = run_subprocess("plugins", "--json", env=env)
    assert listed.code == 0
    (line,) = [line for line in listed.err.splitlines() if line.strip()]
    assert "plugin 'later_mod' from later-plugin 0.1 failed to load" in line
    assert "phase 'distill'" in line and "valid phases: prune, find-ticket, rewire" in line
    assert "later" not in {row["name"] for row in json.loads(listed.out)}
