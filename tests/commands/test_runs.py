"""`ticketkit runs`: results.csv rows that tell runs apart, filters, the table, the plot, and
`ticketkit --version`. The runs are tiny (mlp on the bundled digits, one epoch each)."""

from __future__ import annotations

import itertools
import json
import sys
from importlib.metadata import version

import pytest

from ticketkit.runs.results import OUTCOMES, RESULT_COLUMNS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASE = {"method": "biprop", "arch": "mlp", "k": 0.5, "dataset": "digits", "epochs": 1}
# one option changed per variant, against BASE (learn-bn needs BN: against binary-act)
VARIANTS = {
    "base": {},
    "init": {"init": "signed-constant"},
    "scope": {"scope": "global"},
    "binary-act": {"arch_options": {"binary_act": True}},
    "learn-bn": {"arch_options": {"binary_act": True}, "learn_bn": True},
    "seed": {"seed": 1},
}
PAIRS = {
    ("base", "init"): "init",
    ("base", "scope"): "scope",
    ("base", "binary-act"): "binary_act",
    ("binary-act", "learn-bn"): "learn_bn",
    ("base", "seed"): "seed",
}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """One --out holding the variants, an edgepopup run, a pretrain and a finetune; returns
    (directory, {variant: ticket path})."""
    from ticketkit import jobs
    from ticketkit.runs.config import FinetuneConfig, PretrainConfig, PruneConfig, resolve

    out = tmp_path_factory.mktemp("runs")
    common = {"eval_every": 0, "out": str(out)}
    paths = {}
    for name, change in VARIANTS.items():
        cfg = resolve(PruneConfig, {**BASE, **common, **change})
        paths[name] = str(jobs.prune(cfg).path)
    edgepopup = {**BASE, "method": "edgepopup", "k": 0.2}
    paths["edgepopup"] = str(jobs.prune(resolve(PruneConfig, {**edgepopup, **common})).path)
    dense = {"arch": "mlp", "dataset": "digits", "epochs": 1, **common}
    paths["pretrain"] = str(jobs.pretrain(resolve(PretrainConfig, dense)).path)
    tuned = {"input": paths["learn-bn"], "epochs": 1, **common}
    paths["finetune"] = str(jobs.finetune(resolve(FinetuneConfig, tuned)).path)
    return out, paths


def _records(cli, *args):
    result = cli("runs", *args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def _by_path(records):
    return {r["path"]: r for r in records}


def test_json_tells_every_one_option_variant_apart(cli, runs_dir):
    out, paths = runs_dir
    records = _by_path(_records(cli, out))
    assert len(records) == len(paths)
    assert all(list(r) == list(RESULT_COLUMNS) for r in records.values())
    made = [name for name in RESULT_COLUMNS if name not in OUTCOMES]

    def differ(a, b):
        return {name for name in made if records[paths[a]][name] != records[paths[b]][name]}

    for (a, b), column in PAIRS.items():
        assert column in differ(a, b), (a, b)
    for a, b in itertools.combinations(VARIANTS, 2):  # no two variants look the same
        assert differ(a, b), (a, b)
    base = records[paths["base"]]
    assert base["command"] == "prune" and base["method"] == "biprop" and base["k"] == 0.5
    assert base["kept"] == pytest.approx(0.5, abs=1e-3) and base["scope"] == "layer"
    assert base["init"] == "kaiming-normal" and base["init_scale"] == "scaled"
    assert base["method_options"]["alpha"] == "layer"  # the method's defaults, filled in
    assert base["binary_act"] is False and base["learn_bn"] is False and base["seed"] == 0
    assert base["optimizer"] == "sgd" and base["lr"] == 0.1 and base["epochs"] == 1
    assert base["dataset"] == "digits" and base["subset"] is None and base["parent"] is None
    assert 0 < base["test_acc1"] <= 100 and 0 <= base["wall_s"] < 600
    assert base["run"] == out.joinpath(base["run"]).name and base["path"].endswith(".safetensors")


def test_pretrain_and_finetune_rows(cli, runs_dir):
    out, paths = runs_dir
    records = _by_path(_records(cli, out))
    dense = records[paths["pretrain"]]
    assert dense["command"] == "pretrain" and dense["method"] == "dense"
    assert dense["k"] == 1.0 and dense["kept"] == 1.0 and dense["scope"] is None
    tuned = records[paths["finetune"]]
    assert tuned["command"] == "finetune" and tuned["parent"] == paths["learn-bn"]
    assert tuned["method"] == "biprop" and tuned["lr"] == 0.01  # finetune's own default lr
    # what the ticket was found with, inherited from it
    assert tuned["learn_bn"] is True and tuned["binary_act"] is True
    assert tuned["init"] == "kaiming-normal" and tuned["kept"] == pytest.approx(0.5, abs=1e-3)


def test_filters_method_arch_and_where(cli, runs_dir):
    out, paths = runs_dir
    assert {r["path"] for r in _records(cli, out, "--method", "edgepopup")} == {paths["edgepopup"]}
    assert _records(cli, out, "--arch", "conv4") == []
    chosen = _records(cli, out, "--where", "learn-bn=true", "--where", "command=prune")
    assert [r["path"] for r in chosen] == [paths["learn-bn"]]
    assert len(_records(cli, out, "--method", "biprop", "--where", "k=0.50")) == 7
    assert {r["command"] for r in _records(cli, out, "--where", "scope=")} == {"pretrain"}


@pytest.mark.parametrize(
    "where, message",
    [
        ("lern_bn=true", "unknown column 'lern_bn'; did you mean 'learn_bn'?"),
        ("k=abc", "k is a number"),
        ("seed", "--where takes key=value"),
    ],
)
def test_bad_where_is_one_error_line(cli, runs_dir, where, message):
    result = cli("runs", runs_dir[0], "--where", where)
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("Error: ") and message in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_missing_results_is_an_error(cli, tmp_path):
    result = cli("runs", tmp_path / "nowhere")
    assert result.code == 2 and "no such directory" in result.err
    result = cli("runs", tmp_path)
    assert result.code == 2 and "holds no results.csv" in result.err


def test_table_shows_the_columns_that_differ(cli, runs_dir):
    from ticketkit.commands.runs import SHOWN_ALWAYS, table_columns
    from ticketkit.runs.results import read_results, results_file, select

    out, _ = runs_dir
    records, columns = read_results(results_file(out))
    variants = select(records, [("method", "biprop"), ("command", "prune")])
    shown = table_columns(variants, columns)
    # arch_options differs too: it holds binary_act and the affine BatchNorm of +BN
    assert shown == ["arch_options", "scope", "init", "binary_act", "learn_bn", "seed"] + list(
        SHOWN_ALWAYS
    )
    result = cli("runs", out, "--method", "biprop", "--where", "command=prune")
    assert result.code == 0 and result.out == ""  # the table is for humans: stderr
    assert "6 of 9 runs" in result.err
    shared = result.err[result.err.index("every run (where set):") :]
    assert "method=biprop" in shared and "optimizer=sgd" in shared and "init=" not in shared


def test_plot_draws_one_series_per_method(cli, runs_dir, tmp_path):
    from ticketkit.runs import plot as plots
    from ticketkit.runs import results

    out, _ = runs_dir
    png = tmp_path / "acc-vs-k.png"
    result = cli("runs", out, "--where", "command=prune", "--plot", png)
    assert result.code == 0, result.err
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert "(2 series: biprop, edgepopup)" in result.err

    records, _ = results.read_results(out / "results.csv")
    figure = plots.plot(results.select(records, [("command", "prune")]), tmp_path / "b.png")
    axes = figure.axes[0]
    assert axes.get_legend_handles_labels()[1] == ["biprop", "edgepopup"]
    assert len(axes.containers) == 2 and axes.get_xscale() == "log"
    biprop = plots.series(records)[0]
    assert biprop.label == "biprop" and biprop.x == [50.0]
    assert biprop.runs == [6]  # the six variants pooled at 50% (the finetune is its own)
    assert biprop.low[0] <= biprop.mean[0] <= biprop.high[0]


def test_plot_without_matplotlib_names_the_extra(cli, runs_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    png = tmp_path / "p.png"
    result = cli("runs", runs_dir[0], "--plot", png)
    assert result.code == 2 and not png.exists()
    assert result.err.startswith("Error: ") and "pip install 'ticketkit[plot]'" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_version(cli):
    result = cli("--version")
    assert result.code == 0 and result.out == f"ticketkit {version('ticketkit')}\n"
