import pytest

from ticketkit.errors import UsageError
from ticketkit.runs.config import PruneConfig, presets, read_yaml, resolve

BASE = {"method": "biprop", "arch": "mlp", "k": 0.5, "dataset": "digits"}


def test_precedence_cli_over_file_over_preset_over_defaults(tmp_path):
    cfg_file = tmp_path / "c.yml"
    cfg_file.write_text("lr: 0.05\nepochs: 7\nweight-decay: 0.001\noptions: {alpha: channel}\n")
    cfg = resolve(
        PruneConfig,
        {**BASE, "epochs": 2, "options": {"ramp_epochs": 3}},
        str(cfg_file),
        "biprop-mpt-1-32",
    )
    assert cfg.epochs == 2  # CLI
    assert cfg.lr == 0.05 and cfg.weight_decay == 0.001  # file over preset
    assert cfg.momentum == 0.9 and cfg.init == "kaiming-normal"  # preset
    assert cfg.batch_size == 128 and cfg.seed == 0  # defaults
    assert cfg.options == {"alpha": "channel", "ramp_epochs": 3}  # dicts merge key by key


def test_a_methods_defaults_sit_under_preset_file_and_cli(tmp_path):
    def method(values):
        assert values["method"] == "biprop"  # the layer is chosen from the merged values
        return ("method biprop's defaults", {"lr": 100.0, "epochs": 9, "momentum": 0.5})

    cfg_file = tmp_path / "c.yml"
    cfg_file.write_text("epochs: 7\n")
    cfg = resolve(PruneConfig, {**BASE, "lr": 0.3}, str(cfg_file), "biprop-mpt-1-32", method)
    assert cfg.lr == 0.3 and cfg.epochs == 7 and cfg.momentum == 0.9  # CLI, file, preset
    cfg = resolve(PruneConfig, BASE, beneath=method)
    assert (cfg.lr, cfg.epochs, cfg.momentum) == (100.0, 9, 0.5)  # over the dataclass defaults
    with pytest.raises(UsageError, match="unknown config key 'learning_rate' in method biprop"):
        resolve(
            PruneConfig, BASE, beneath=lambda v: ("method biprop's defaults", {"learning_rate": 1})
        )


def test_unknown_key_names_the_nearest(tmp_path):
    cfg_file = tmp_path / "c.yml"
    cfg_file.write_text("learning_rate: 0.1\n")
    with pytest.raises(UsageError, match="unknown config key 'learning_rate'"):
        resolve(PruneConfig, BASE, str(cfg_file))
    cfg_file.write_text("epoch: 3\n")
    with pytest.raises(UsageError, match="did you mean 'epochs'"):
        resolve(PruneConfig, BASE, str(cfg_file))


@pytest.mark.parametrize("key", ["lr", "momentum", "weight_decay"])
def test_negative_optimizer_settings(key):
    flag = "--" + key.replace("_", "-")
    with pytest.raises(UsageError, match=f"{flag} must be >= 0, got -1"):
        resolve(PruneConfig, {**BASE, key: -1.0})


@pytest.mark.parametrize("k", [0.0, -0.1, 1.5])
def test_k_outside_the_unit_interval(k):
    with pytest.raises(UsageError, match=r"\(0, 1\]"):
        resolve(PruneConfig, {**BASE, "k": k})


def test_bad_values_and_files(tmp_path):
    with pytest.raises(UsageError, match="expected int"):
        resolve(PruneConfig, {**BASE, "epochs": "three"})
    with pytest.raises(UsageError, match="no such file"):
        resolve(PruneConfig, BASE, str(tmp_path / "missing.yml"))
    with pytest.raises(UsageError, match="unknown preset 'biprop-mpt-1-33'; did you mean"):
        resolve(PruneConfig, BASE, preset="biprop-mpt-1-33")
    (tmp_path / "bad.yml").write_text("- a list\n")
    with pytest.raises(UsageError, match="mapping"):
        resolve(PruneConfig, BASE, str(tmp_path / "bad.yml"))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"eval_every": -1}, "--eval-every must be >= 0"),
        ({"warmup": -2}, "--warmup must be >= 0"),
        ({"lr_gamma": 0.0}, "--lr-gamma must be positive"),
        ({"lr_steps": "3,x"}, "config key 'lr_steps': expected int, got 'x'"),
        ({"lr_steps": [3, 2.5]}, "expected an integer, got '2.5'"),
        ({"lr_steps": [3, -1]}, r"--lr-steps must be epochs \(>= 0\)"),
        ({"name": ".."}, "--name must be a plain directory name"),
        ({"device": "tpu"}, "is not a device"),
    ],
)
def test_bad_schedule_and_run_settings(values, message):
    with pytest.raises(UsageError, match=message):
        resolve(PruneConfig, {**BASE, **values})


def test_lr_steps_from_the_command_line_or_a_file(tmp_path):
    assert resolve(PruneConfig, {**BASE, "lr_steps": "30,60"}).lr_steps == [30, 60]
    (tmp_path / "c.yml").write_text("lr_steps: [5, 8]\n")
    assert resolve(PruneConfig, BASE, str(tmp_path / "c.yml")).lr_steps == [5, 8]


def test_shipped_presets_all_resolve():
    assert {"edgepopup-conv", "biprop-mpt-1-32", "biprop-mpt-1-1"} <= set(presets())
    for name in presets():
        base = {"arch": "conv4", "k": 0.5, "dataset": "cifar10"}
        if "method" not in read_yaml(presets()[name], "preset"):
            base["method"] = "snip"  # synaptic-flow: the training of every scorer it compares
        cfg = resolve(PruneConfig, base, preset=name)
        assert cfg.method is not None
