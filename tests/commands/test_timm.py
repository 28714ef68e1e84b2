"""timm models go through pretrain -> prune -> finetune -> eval like built-in archs."""

import json

import pytest


@pytest.mark.parametrize("arch", ["timm:resnet18", "timm:mobilenetv3_small_100"])
def test_timm_model_end_to_end(cli, tmp_path, arch):
    dense = cli(
        "pretrain", "--arch", arch, "--dataset", "digits", "--epochs", "1", "--out", tmp_path
    )
    assert dense.code == 0, dense.err
    pruned = cli(
        *"prune --method hydra --k 0.5 --epochs 1 --out".split(), tmp_path, stdin=dense.out
    )
    assert pruned.code == 0, pruned.err
    tuned = cli("finetune", "--epochs", "1", "--out", tmp_path, stdin=pruned.out)
    assert tuned.code == 0, tuned.err
    ev = cli("eval", "--json", stdin=tuned.out)
    assert ev.code == 0, ev.err
    record = json.loads(ev.out)
    assert record["metrics"] == record["recorded"] and record["method"] == "hydra"
    assert arch.replace(":", "-") in record["path"]  # run directories stay portable
    assert len(record["layers"]) > 10 and all(
        i["weights"] == "values" for i in record["layers"].values()
    )
