"""Bad input: one `Error:` line on stderr, exit code 2, no traceback."""

import pytest

ARGS = ["prune", "--arch", "mlp", "--dataset", "digits", "--epochs", "1"]


def assert_usage_error(r, *fragments):
    assert r.code == 2, (r.code, r.err)
    lines = [l for l in r.err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.err
    assert "Traceback" not in r.err and r.out == ""
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_method_arch_dataset_suggest_the_nearest(cli, tmp_path):
    assert_usage_error(
        cli(*ARGS, "--method", "biprops", "--k", "0.5", "--out", tmp_path),
        "unknown method 'biprops'; did you mean 'biprop'?",
    )
    assert_usage_error(
        cli(
            *"prune --method biprop --arch conv44 --k 0.5 --dataset digits --out".split(), tmp_path
        ),
        "unknown arch 'conv44'; did you mean",
    )
    assert_usage_error(
        cli(
            *"prune --method biprop --arch mlp --k 0.5 --dataset fashion_mnist --out".split(),
            tmp_path,
        ),
        "unknown dataset 'fashion_mnist'; did you mean 'fashion-mnist'?",
    )


@pytest.mark.parametrize("k", ["0", "1.01", "-0.5"])
def test_k_outside_range(cli, tmp_path, k):
    assert_usage_error(cli(*ARGS, "--method", "biprop", "--k", k, "--out", tmp_path), "(0, 1]")


def test_unknown_config_key_and_option(cli, tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text("epoch: 2\n")
    assert_usage_error(
        cli(*ARGS, "--method", "biprop", "--k", "0.5", "--config", cfg, "--out", tmp_path),
        "unknown config key 'epoch'",
        "did you mean 'epochs'",
    )
    assert_usage_error(
        cli(*ARGS, "--method", "biprop", "--k", "0.5", "-o", "alfa=layer", "--out", tmp_path),
        "has no option 'alfa'",
        "did you mean 'alpha'",
    )
    assert_usage_error(
        cli(*ARGS, "--method", "biprop", "--k", "0.5", "-o", "alpha=row", "--out", tmp_path),
        "must be one of layer, channel",
    )


def test_missing_dataset_offline(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETKIT_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert_usage_error(
        cli(
            *"prune --method biprop --arch conv4 --k 0.5 --dataset cifar10 --out".split(), tmp_path
        ),
        "dataset 'cifar10' not found",
        "--data",
    )


def test_bad_files_for_eval(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("not a ticket")
    assert_usage_error(cli("eval", tmp_path / "notes.txt"), "not a readable safetensors file")
    assert_usage_error(cli("eval", tmp_path / "missing.safetensors"), "no such file")
    assert_usage_error(cli("eval", tmp_path), "is a directory; pass the ticket or checkpoint file")
    ok = cli(
        *"prune --method biprop --arch mlp --k 0.5 --dataset digits --epochs 1 --out".split(),
        tmp_path,
    )
    data = open(ok.out.strip(), "rb").read()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    assert_usage_error(cli("eval", tmp_path / "cut.safetensors"), "truncated or corrupt")
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    assert_usage_error(
        cli("eval", tmp_path / "plain.safetensors"), "not a ticketkit ticket or checkpoint"
    )


def test_ticket_whose_shapes_do_not_match_its_arch(cli, tmp_path):
    from ticketkit.artifacts.ticket import Ticket

    ok = cli(
        *"prune --method biprop --arch mlp --k 0.5 --dataset digits --epochs 1 --out".split(),
        tmp_path,
    )
    t = Ticket.read(ok.out.strip())
    t.meta["arch_kwargs"]["width"] = 2.0
    t.save(tmp_path / "wrong.safetensors")
    assert_usage_error(
        cli("eval", tmp_path / "wrong.safetensors"), "does not match its declared arch 'mlp'"
    )


def test_arch_too_small_for_input_and_learn_bn_without_bn(cli, tmp_path):
    assert_usage_error(
        cli(*"prune --method biprop --arch conv8 --k 0.5 --dataset digits --out".split(), tmp_path),
        "needs images of at least 16x16",
    )
    assert_usage_error(
        cli(
            *"prune --method biprop --arch conv4 --k 0.5 --dataset digits --learn-bn --out".split(),
            tmp_path,
        ),
        "no affine normalisation layers",
    )


def test_bad_flags_are_usage_errors_not_internal_ones(cli):
    """The parser's own errors (typer may parse with a vendored copy of click)."""
    assert_usage_error(cli("prune", "--nope"), "No such option: --nope", "ticketkit prune --help")
    assert_usage_error(cli(*ARGS, "--epochs", "abc"), "Invalid value for '--epochs'")
    assert_usage_error(cli("plugins", "show"), "Missing argument")
    assert_usage_error(cli("nope"), "No such command 'nope'")
    alone = cli()  # no arguments: the help, and no error line
    assert "Usage: ticketkit" in alone.out + alone.err and "Error" not in alone.out + alone.err


@pytest.mark.parametrize("arch", ["mlp", "conv2", "vgg-small"])
@pytest.mark.parametrize("width", ["0", "-1", "0.001"])
def test_a_width_that_leaves_no_units(cli, arch, width, tmp_path):
    r = cli(
        *"prune --method biprop --k 0.5 --dataset digits --epochs 0 --arch".split(),
        arch,
        *("--width", width, "--out", tmp_path),
    )
    assert_usage_error(r, f"arch '{arch}': width {float(width)} leaves no channels")
    assert not list(tmp_path.iterdir())  # a run that fails to set up leaves no directory


def test_where_a_run_would_be_written(cli, tmp_path):
    """--name stays inside --out; an --out that cannot hold run directories is bad input."""
    args = [*ARGS, "--method", "biprop", "--k", "0.5", "--epochs", "0"]
    for name in ("..", ".", "a/b", "../escape"):
        assert_usage_error(
            cli(*args, "--out", tmp_path / "runs", "--name", name), "--name must be a plain"
        )
    (tmp_path / "afile").write_text("mine")
    assert_usage_error(
        cli(*args, "--out", tmp_path / "afile"), "cannot create the run directory", "Not a dir"
    )
    assert (tmp_path / "afile").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing written anywhere


def test_config_that_is_a_directory_and_a_device_that_is_not_there(cli, tmp_path):
    args = [*ARGS, "--method", "biprop", "--k", "0.5", "--out", tmp_path]
    assert_usage_error(cli(*args, "--config", tmp_path), "is a directory, not a YAML file")
    assert_usage_error(cli(*args, "--device", "tpu"), "is not a device")
    assert not list(tmp_path.iterdir())  # no run directory for a run that cannot start


def test_presets_are_offered_only_where_there_are_some(cli):
    """Every shipped preset is a prune recipe: pretrain and finetune take no --preset."""
    for command in ("pretrain", "finetune"):
        assert_usage_error(cli(command, "--preset", "biprop-mpt-1-32"), "No such option")
