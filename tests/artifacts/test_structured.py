"""Filter tickets made by `prune --granularity filter` export `structured` at their real size:
every empty filter is gone (its BatchNorm channel went with it, masks/channels.py), the file
loads with `torch.export.load` alone, and its logits are the masked model's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ticketkit import jobs
from ticketkit.artifacts.efficiency import masked_model
from ticketkit.artifacts.ticket import Ticket
from ticketkit.masks.channels import empty_filters
from ticketkit.runs.config import PretrainConfig, PruneConfig, resolve

pytest.importorskip("torch_pruning", reason="needs the extra: pip install '.[structured]'")

WIDTH = {"resnet20": 0.25, "vgg11-bn": 0.125}  # narrow: the same layers, seconds to train

LOADER = """
import json, sys, torch
program = torch.export.load(sys.argv[1]).module()
data = torch.load(sys.argv[2])
with torch.no_grad():
    diff = (program(data["x"]) - data["logits"]).abs().max().item()
assert not any(m.split(".")[0] == "ticketkit" for m in sys.modules), "ticketkit was imported"
shapes = {k: list(v.shape) for k, v in program.state_dict().items()}
print(json.dumps({"diff": diff, "shapes": shapes}))
"""


def small_fashion(root, fashion, train: int = 512, test: int = 256):
    """The first images of Fashion-MNIST's splits as idx files under `root` (for `--data`):
    real images, and a test split whose evaluation takes a blink instead of 10,000 images."""
    import gzip
    import math
    import struct

    root.mkdir()
    for name, n in [
        ("train-images-idx3-ubyte", train),
        ("train-labels-idx1-ubyte", train),
        ("t10k-images-idx3-ubyte", test),
        ("t10k-labels-idx1-ubyte", test),
    ]:
        raw = gzip.open(fashion / f"{name}.gz").read()
        ndim = raw[3]
        dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        start, size = 4 + 4 * ndim, n * math.prod(dims[1:])
        header = raw[:4] + struct.pack(f">{ndim}I", n, *dims[1:])
        (root / name).write_bytes(header + raw[start : start + size])
    return root


def pretrain(root, arch, dataset, data=None):
    """A one-epoch dense checkpoint of the narrow `arch`."""
    subset = {"data": str(data)} if data else {"subset": 256}
    cfg = {"arch": arch, "arch_options": {"width": WIDTH[arch]}, "dataset": dataset}
    cfg.update({"epochs": 1, "eval_every": 0, "out": str(root), **subset})
    return jobs.pretrain(resolve(PretrainConfig, cfg)).path


@pytest.fixture(scope="module")
def digits_resnet(tmp_path_factory):
    return pretrain(tmp_path_factory.mktemp("dense"), "resnet20", "digits")


def prune(root, checkpoint, dataset, method="magnitude", data=None, **extra):
    """A filter ticket at k = 0.5 pruned by `method` from `checkpoint`."""
    cfg = {"method": method, "k": 0.5, "granularity": "filter", "dataset": dataset}
    subset = {"data": str(data)} if data else {"subset": 256}
    cfg.update({"input": str(checkpoint), "out": str(root), **subset, **extra})
    return jobs.prune(resolve(PruneConfig, cfg)).path


def run_alone(program, x, logits, tmp_path) -> dict:
    """The program's logits and parameter shapes, from a Python that never imports ticketkit."""
    torch.save({"x": x, "logits": logits}, tmp_path / "expected.pt")
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, str(program), str(tmp_path / "expected.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def assert_empty_channels_zero(ticket: Ticket) -> None:
    state = {name[6:]: t for name, t in ticket.tensors.items() if name.startswith("state.")}
    for path, mask in ticket.masks().items():
        dead = empty_filters(mask)
        assert int(dead.sum()) == mask.shape[0] // 2, path  # k = 0.5 per layer
        bn = path.replace("conv", "bn")
        for name in ("weight", "bias", "running_mean"):
            assert bool((state[f"{bn}.{name}"][dead] == 0).all()), (bn, name)
            assert bool((state[f"{bn}.{name}"][~dead] != 0).any()), (bn, name)


def test_batchnorm_channels_of_empty_filters_are_zero_in_the_ticket(tmp_path, digits_resnet):
    """On digits, fast: the convention is in the ticket's own parameters, after pruning and
    after fine-tuning (where BatchNorm trains: the hooks keep the channels at 0 meanwhile)."""
    from ticketkit.runs.config import FinetuneConfig

    path = prune(tmp_path, digits_resnet, "digits")
    assert_empty_channels_zero(Ticket.read(path))
    cfg = {"input": str(path), "dataset": "digits", "epochs": 1, "subset": 256}
    cfg.update({"batch_size": 64, "out": str(tmp_path)})
    tuned_path = jobs.finetune(resolve(FinetuneConfig, cfg)).path
    tuned = Ticket.read(tuned_path)
    assert_empty_channels_zero(tuned)
    assert last_test_acc(tuned_path) == tuned.meta["metrics"]["test_acc1"]


def last_test_acc(ticket_path) -> float:
    """The training model's test accuracy at its last epoch (metrics.jsonl of the run)."""
    lines = (ticket_path.parent / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "test_acc1" in line][-1]["test_acc1"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet20", "vgg11-bn"])
def test_filter_ticket_exports_half_the_filters_with_the_masked_models_logits(
    cli, tmp_path, fashion, arch
):
    """The issue's acceptance check, on a narrow network and a 512-image pretrain."""
    from ticketkit.training.data import Loader, load_dataset

    data = small_fashion(tmp_path / "fashion", fashion)
    checkpoint = pretrain(tmp_path / "runs", arch, "fashion-mnist", data)
    path = prune(tmp_path / "runs", checkpoint, "fashion-mnist", data=data)
    out = tmp_path / "small.pt2"
    r = cli("export", path, "--format", "structured", "-o", out, "--json")
    assert r.code == 0, r.err
    record = json.loads(r.out)
    ticket = Ticket.read(path)
    ds = load_dataset("fashion-mnist", str(data))
    x, _ = next(iter(Loader(ds, ds.test, 256, train=False).batches()))
    x = x.contiguous()
    with torch.no_grad():
        logits = masked_model(ticket)(x)
    alone = run_alone(out, x, logits, tmp_path)
    assert alone["diff"] <= 1e-4
    names = {p.replace("parametrizations.", "") for p in alone["shapes"]}
    for layer, mask in ticket.masks().items():
        filters = mask.shape[0]
        kept = filters - int(empty_filters(mask).sum())
        assert kept == filters // 2  # magnitude at k = 0.5, per layer
        assert alone["shapes"][f"{layer}.weight"][0] == kept, (layer, names)
        assert record["channels_removed"][layer] == filters - kept
    assert "zero filters kept" not in (record.get("note") or "")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["hydra", "biprop"])
def test_a_trained_filter_ticket_is_the_network_it_trained_as(tmp_path, digits_resnet, method):
    """Score methods move their masks while training; the hooks keep empty filters' channels
    at 0 throughout, so the last epoch's accuracy, the ticket's own and its structured export's
    are one number. biprop: a random network with non-affine BatchNorm (running mean zeroed)."""
    from ticketkit.artifacts.export import export
    from ticketkit.training.data import Loader, load_dataset

    if method == "biprop":
        cfg = {"method": "biprop", "arch": "resnet20", "arch_options": {"width": 0.25}}
        cfg.update({"k": 0.5, "granularity": "filter", "dataset": "digits", "epochs": 1})
        cfg.update({"subset": 256, "batch_size": 64})
        path = jobs.prune(resolve(PruneConfig, {**cfg, "out": str(tmp_path)})).path
    else:
        path = prune(tmp_path, digits_resnet, "digits", method, epochs=1, batch_size=64)
    ticket = Ticket.read(path)
    assert last_test_acc(path) == ticket.meta["metrics"]["test_acc1"]
    result = export(ticket, "structured", tmp_path / "small.pt2")
    assert result.max_abs_diff <= 1e-4
    empty = {p: int(empty_filters(m).sum()) for p, m in ticket.masks().items()}
    assert result.channels_removed == {p: n for p, n in empty.items() if n}
    program = torch.export.load(str(tmp_path / "small.pt2")).module()  # no .eval() on it
    ds = load_dataset("digits")
    with torch.no_grad():
        hits = sum(
            int((program(x).argmax(1) == y).sum())
            for x, y in Loader(ds, ds.test, 500, train=False).batches()
        )
    assert 100.0 * hits / len(ds.test) == ticket.meta["metrics"]["test_acc1"]
