"""finetune trains the kept weights with the mask fixed; artifacts are checked by kind."""

import json

import torch

from ticketkit.artifacts.ticket import Ticket


def assert_usage_error(r, fragment):
    assert r.code == 2, (r.code, r.err)
    assert r.err.startswith("Error: ") and fragment in r.err and "Traceback" not in r.err


def test_finetune_keeps_the_mask_and_changes_the_kept_weights(cli, pretrained_digits_mlp, tmp_path):
    pruned = cli(
        "prune",
        pretrained_digits_mlp,
        "--method",
        "hydra",
        "--k",
        "0.2",
        "--epochs",
        "1",
        "--out",
        tmp_path,
    )
    assert pruned.code == 0, pruned.err
    tuned = cli("finetune", pruned.out.strip(), "--epochs", "2", "--out", tmp_path, "--json")
    assert tuned.code == 0, tuned.err
    record = json.loads(tuned.out)
    before, after = Ticket.read(pruned.out.strip()), Ticket.read(record["path"])
    for path, mask in before.masks().items():
        assert torch.equal(mask, after.masks()[path])
    changed = [not torch.equal(before.weights()[p], after.weights()[p]) for p in before.masks()]
    assert all(changed)
    assert after.meta["method"] == "hydra" and after.meta["command"] == "finetune"
    assert after.meta["parent"] == pruned.out.strip()
    ev = json.loads(cli("eval", record["path"], "--json").out)
    assert ev["metrics"] == ev["recorded"]


def test_wrong_artifact_kinds_and_mismatches(cli, pretrained_digits_mlp, tmp_path, fashion):
    pruned = cli(
        "prune", pretrained_digits_mlp, "--method", "magnitude", "--k", "0.5", "--out", tmp_path
    ).out.strip()
    assert_usage_error(
        cli("prune", pruned, "--method", "hydra", "--k", "0.1", "--out", tmp_path),
        "is a ticket, but a dense checkpoint is needed here",
    )
    assert_usage_error(
        cli("finetune", pretrained_digits_mlp, "--out", tmp_path),
        "is a dense checkpoint, but a ticket is needed here",
    )
    assert_usage_error(
        cli("prune", pretrained_digits_mlp, "--method", "biprop", "--k", "0.5", "--out", tmp_path),
        "starts from a random network; it takes no input",
    )
    assert_usage_error(
        cli("finetune", pruned, "--k", "0.3", "--out", tmp_path),
        "--k 0.3 differs from the ticket's k = 0.5",
    )
    assert_usage_error(
        cli(
            "prune",
            pretrained_digits_mlp,
            "--method",
            "hydra",
            "--k",
            "0.1",
            "--dataset",
            "fashion-mnist",
            "--out",
            tmp_path,
        ),
        "made for 1x8x8 images in 10 classes, but dataset 'fashion-mnist' gives 1x28x28",
    )
    assert_usage_error(
        cli("finetune", pruned, "--dataset", "fashion-mnist", "--out", tmp_path),
        "but dataset 'fashion-mnist' gives",
    )
    assert_usage_error(
        cli(
            "prune",
            pretrained_digits_mlp,
            "--method",
            "hydra",
            "--k",
            "0.1",
            "--arch",
            "conv4",
            "--out",
            tmp_path,
        ),
        "differs from the checkpoint's arch 'mlp'",
    )


def test_pretrain_prints_a_checkpoint_that_eval_reproduces(cli, tmp_path):
    r = cli(*"pretrain --arch mlp --dataset digits --epochs 2 --out".split(), tmp_path, "--json")
    assert r.code == 0, r.err
    record = json.loads(r.out)
    assert record["kind"] == "checkpoint" and record["path"].endswith("checkpoint.safetensors")
    assert record["metrics"]["test_acc1"] > 50
    ev = json.loads(cli("eval", record["path"], "--json").out)
    assert ev["weights"] == "dense" and ev["metrics"] == ev["recorded"]


def test_resume_a_run_directory_with_its_saved_input(cli, pretrained_digits_mlp, tmp_path):
    pruned = cli(
        "prune", pretrained_digits_mlp, "--method", "magnitude", "--k", "0.4", "--out", tmp_path
    ).out.strip()
    first = cli("finetune", pruned, "--epochs", "2", "--out", tmp_path)
    run_dir = first.out.strip().rsplit("/", 1)[0]
    again = cli("finetune", "--resume", run_dir)
    assert again.code == 0, again.err
    assert again.out == first.out and "reusing finished run" in again.err
    bad = cli("finetune", "--resume", tmp_path / "nowhere")
    assert bad.code == 2 and "not a run directory" in bad.err
    on_cpu = cli("finetune", "--resume", run_dir, "--device", "cpu")  # where it runs may change
    assert on_cpu.code == 0 and on_cpu.out == first.out, on_cpu.err
    changed = cli("finetune", "--resume", run_dir, "--lr", "5", "--epochs", "3")
    assert changed.code == 2
    assert "drop --epochs, --lr (only --device and --workers may change)" in changed.err
    other = cli("pretrain", "--resume", run_dir)
    assert other.code == 2 and "not a `ticketkit pretrain` run" in other.err
