"""results.csv without training: typed round trip, old files, filters, series and plot."""

from __future__ import annotations

import csv

import pytest

from ticketkit.errors import UsageError
from ticketkit.runs import plot as plots
from ticketkit.runs import results
from ticketkit.runs.directory import Run
from ticketkit.runs.results import RESULT_COLUMNS

# the header and a pretrain row as ticketkit wrote them before the columns were fixed
OLD_HEADER = "finished,run,arch,method,k,command,dataset,epochs,seed,test_acc1,test_acc5,path"
OLD_ROWS = [
    "2026-01-01T10:00:00,pretrain-mlp-aaaaaaaa,mlp,dense,1.0,,digits,1,0,82.50,99.44,p/c.st",
    "2026-01-01T10:01:00,prune-mlp-biprop-k0.2-bbbbbbbb,mlp,biprop,0.2,prune,digits,1,0,"
    "84.17,98.61,p/t.st",
]


def _row(**values) -> dict[str, str]:
    """A full row as `result_row` writes it, from typed values."""
    return {name: results._text(values.get(name), name) for name in RESULT_COLUMNS}


def test_values_round_trip_through_their_text():
    row = _row(
        command="prune",
        k=0.05,
        kept=0.0500004,
        method_options={"alpha": "channel"},
        binary_act=True,
        learn_bn=False,
        subset=None,
        epochs=3,
        lr=1e-05,
        test_acc1=84.16666,
        wall_s=12.345,
    )
    assert row["binary_act"] == "true" and row["subset"] == "" and row["lr"] == "1e-05"
    assert row["method_options"] == '{"alpha":"channel"}' and row["test_acc1"] == "84.17"
    back = {name: results.parse(name, text) for name, text in row.items()}
    assert back["k"] == 0.05 and back["kept"] == pytest.approx(0.05, abs=1e-6)
    assert back["method_options"] == {"alpha": "channel"} and back["binary_act"] is True
    assert back["learn_bn"] is False and back["subset"] is None and back["epochs"] == 3
    assert back["wall_s"] == 12.3 and back["scope"] is None


def test_kept_fraction_is_over_all_masked_weights():
    layers = {"a": {"shape": [10, 10], "kept": 50}, "b": {"shape": [300], "kept": 30}}
    assert results.kept_fraction(layers) == 80 / 400
    assert results.kept_fraction({}) == 1.0  # a dense checkpoint


def test_old_file_is_read_and_brought_to_the_documented_columns(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("\n".join([OLD_HEADER, *OLD_ROWS]) + "\n")
    records, columns = results.read_results(path)
    assert columns == list(RESULT_COLUMNS)
    assert [r["command"] for r in records] == ["pretrain", "prune"]  # the old empty one inferred
    assert records[1]["k"] == 0.2 and records[1]["scope"] is None and records[1]["kept"] is None

    Run(tmp_path / "prune-mlp-x").append_result(_row(command="prune", method="biprop", k=0.5))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert reader.fieldnames == list(RESULT_COLUMNS)
    assert len(rows) == 3 and rows[0]["run"] == "pretrain-mlp-aaaaaaaa" and rows[2]["k"] == "0.5"
    # a plot falls back to k where an old row has no kept fraction
    assert [s.label for s in plots.series(results.read_results(path)[0])] == ["biprop", "dense"]


def test_where_is_typed_and_checked():
    columns = list(RESULT_COLUMNS)
    records = [
        {"k": 0.2, "learn_bn": True, "init": None, "method_options": {"alpha": "layer"}},
        {"k": 0.5, "learn_bn": False, "init": "signed-constant", "method_options": {}},
    ]
    where = results.parse_where(["k=0.20", "learn-bn=yes", "init="], columns)
    assert where == [("k", 0.2), ("learn_bn", True), ("init", None)]
    assert results.select(records, where) == [records[0]]
    alpha = results.parse_where(['method_options={"alpha":"layer"}'], columns)
    assert results.select(records, alpha) == [records[0]]
    with pytest.raises(UsageError, match="learn_bn is true or false"):
        results.parse_where(["learn_bn=maybe"], columns)
    with pytest.raises(UsageError, match="did you mean 'seed'"):
        results.parse_where(["sede=1"], columns)


def test_varying_ignores_rows_where_a_column_does_not_apply():
    records = [
        {"command": "prune", "scope": "layer", "seed": 0},
        {"command": "prune", "scope": "layer", "seed": 1},
        {"command": "pretrain", "scope": None, "seed": 0},
    ]
    assert results.varying(records, ["command", "scope", "seed"]) == ["command", "seed"]


def test_series_pool_seeds_and_split_what_they_must():
    def run(method, kept, acc, **more):
        return {"method": method, "kept": kept, "test_acc1": acc, "arch": "mlp", **more}

    records = [
        run("biprop", 0.2, 80.0, seed=0),
        run("biprop", 0.2, 84.0, seed=1),
        run("biprop", 0.5, 90.0),
        run("biprop", 0.5, 70.0, command="finetune"),
        run("edgepopup", 0.2, 60.0, arch="conv4"),
        run("edgepopup", 0.2, None),  # no accuracy: not plotted
    ]
    drawn = plots.series(records)
    assert [s.label for s in drawn] == [
        "biprop (mlp)",
        "biprop finetuned (mlp)",
        "edgepopup (conv4)",
    ]
    biprop = drawn[0]
    assert biprop.x == [20.0, 50.0] and biprop.runs == [2, 1]
    assert (
        biprop.mean == [82.0, 90.0] and biprop.low == [80.0, 90.0] and biprop.high == [84.0, 90.0]
    )


def test_plot_writes_the_format_its_suffix_names(tmp_path):
    pytest.importorskip("matplotlib")
    records = [{"method": "bip", "kept": 0.1, "test_acc1": 50.0, "arch": "mlp"}]
    figure = plots.plot(records, tmp_path / "a.svg")
    assert (tmp_path / "a.svg").read_text().lstrip().startswith("<?xml")
    assert figure.axes[0].get_legend_handles_labels()[1] == ["bip"]
    with pytest.raises(UsageError, match="cannot write .xyz files"):
        plots.plot(records, tmp_path / "a.xyz")
    with pytest.raises(UsageError, match="no listed run has an accuracy"):
        plots.plot([], tmp_path / "b.png")
