import json
import subprocess
import sys

from tests.conftest import run_subprocess


def test_plugins_json_lists_every_kind_with_provenance(cli):
    r = cli("plugins", "--json")
    assert r.code == 0
    rows = json.loads(r.out)
    kinds = {row["kind"] for row in rows}
    assert {"method", "arch", "dataset", "optimizer", "initializer"} <= kinds
    for row in rows:
        assert row["summary"] and row["distribution"] and row["version"]


def test_plugins_table_on_a_terminal_and_show(cli):
    table = cli("plugins")
    assert table.code == 0 and "biprop" in table.out and "ticketkit 0.1.0" in table.out
    shown = cli("plugins", "show", "biprop", "--json")
    (record,) = json.loads(shown.out)
    options = {o["name"]: o for o in record["options"]}
    assert options["alpha"]["type"] == "str" and options["alpha"]["default"] == "layer"
    assert options["alpha"]["choices"] == ["layer", "channel"] and options["alpha"]["help"]
    assert options["ramp-epochs"]["type"] == "int"
    text = cli("plugins", "show", "conv4")
    assert "width" in text.out and "binary_act" in text.out
    missing = cli("plugins", "show", "biprp")
    assert missing.code == 2 and "did you mean 'biprop'" in missing.err


def test_help_and_plugins_do_not_import_torch():
    code = (
        "import sys\n"
        "from ticketkit.cli import main\n"
        "for argv in (['--help'], ['plugins'], ['plugins', 'show', 'biprop'],\n"
        "             ['prune', '--help'], ['eval', '--help'], ['pretrain', '--help'],\n"
        "             ['finetune', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "    assert 'torch' not in sys.modules, argv\n"
        "print('clean')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("clean")


def test_python_dash_m_and_help_lists_only_implemented_commands():
    proc = subprocess.run(
        [sys.executable, "-m", "ticketkit", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    for command in ("pretrain", "prune", "finetune", "eval", "plugins"):
        assert command in proc.stdout
    assert run_subprocess("--help").code == 0
