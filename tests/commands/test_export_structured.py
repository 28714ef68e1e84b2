"""`ticketkit export --format structured` (and `onnx --structured`): empty channels physically
removed through torch-pruning's DependencyGraph, the logits kept, the file loadable alone."""

import json

import pytest
import torch

from tests.commands.test_errors import assert_usage_error
from tests.commands.test_export import DIGITS, api_ticket, read_back, reference

pytest.importorskip("torch_pruning", reason="needs the extra: pip install '.[structured]'")


def structured_ticket(path, granularity):
    """A resnet20 ticket (no training: fast) where each block's inner channels are half dead.

    filter: half of each conv1's filters zeroed (by L2 norm, as `--granularity filter` ranks),
    with the block's BatchNorm shifted so far down that ReLU clips the zeroed channels' constant
    to 0: they are removable. The residual convs (conv2) lose half their filters too, but their
    channels are summed with the shortcut: they must stay. channel: half of each conv2's input
    channels zeroed: conv1's matching filters are then never read, whatever BatchNorm does."""
    from ticketkit import build_model, save_ticket
    from ticketkit.inputs import InputSpec
    from ticketkit.masks import attach_masks, masked_layers

    torch.manual_seed(0)
    model = build_model("resnet20", InputSpec(**DIGITS))
    with torch.no_grad():
        model.train()(torch.randn(64, 1, 8, 8))
        for name, module in model.named_modules():
            if granularity == "filter" and name.endswith(".bn1"):
                module.bias.fill_(-20.0)
    attach_masks(model)
    for layer in masked_layers(model):
        w = layer.weight.detach()
        mask = torch.ones_like(w)
        dim = 1 if granularity == "channel" else 0
        wanted = ".conv2" if granularity == "channel" else ".conv"
        if w.dim() == 4 and wanted in layer.path and layer.path != "conv1":
            norms = w.transpose(0, dim).flatten(1).norm(dim=1)
            dead = norms.argsort()[: w.shape[dim] // 2]
            mask.index_fill_(dim, dead, 0.0)
        layer.set_mask(mask)
    return save_ticket(model, path, dataset="digits")


@pytest.mark.parametrize(
    "granularity,args",
    [("filter", ["--format", "structured"]), ("channel", ["--format", "onnx", "--structured"])],
)
def test_dead_channels_are_removed_and_the_logits_kept(cli, tmp_path, granularity, args):
    if "onnx" in args:
        pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install '.[onnx]'")
    ticket = structured_ticket(tmp_path / "t.safetensors", granularity)
    out = tmp_path / ("small.onnx" if "onnx" in args else "small.pt2")
    r = cli("export", ticket, *args, "-o", out, "--json")
    assert r.code == 0, r.err
    record = json.loads(r.out)
    widths = {f"layer{s}.{b}.conv1": 4 * 2**s for s in (1, 2, 3) for b in range(3)}
    assert record["channels_removed"] == widths  # half of each block's 16/32/64 inner channels
    first = {"layer2.0.conv1", "layer3.0.conv1"}  # the blocks that double the width
    removed = sum(  # each inner channel: its conv1 filter, its conv2 column, BN's weight, bias
        n * (9 * (n if name in first else 2 * n) + 9 * 2 * n + 2) for name, n in widths.items()
    )
    assert record["params_before"] - record["params_total"] == removed
    assert record["max_abs_diff"] < 1e-4
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    fmt = "onnx" if "onnx" in args else "pt2"
    assert (read_back(fmt, out, ticket, x) - reference(ticket, x)).abs().max() < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, "t.safetensors"])
    if fmt == "pt2":  # the program's parameters are the reported ones (the shapes shrank)
        program = torch.export.load(str(out)).module()
        assert sum(p.numel() for p in program.parameters()) == record["params_total"]
    if granularity == "filter":
        assert "zero filters kept" in record["note"]  # the residual convs' dead filters


def test_a_ticket_with_no_empty_channel_exports_unchanged_with_a_note(cli, tmp_path):
    ticket = api_ticket("mlp", tmp_path / "t.safetensors", k=0.8, binary=True)  # no empty column
    out = tmp_path / "small.pt2"
    r = cli("export", ticket, "--format", "structured", "-o", out, "--json")
    assert r.code == 0, r.err
    record = json.loads(r.out)
    assert record["channels_removed"] == {}
    assert record["params_total"] == record["params_before"]
    assert "none can be removed" in record["note"] and "note: " in r.err
    assert record["max_abs_diff"] < 1e-4


def test_missing_extra_and_wrong_combinations_are_usage_errors(cli, tmp_path, monkeypatch):
    import importlib.util

    ticket = api_ticket("mlp", tmp_path / "t.safetensors")
    out = tmp_path / "m.pt2"
    assert_usage_error(
        cli("export", ticket, "--format", "pt2", "--structured", "-o", out), "--format structured"
    )
    real = importlib.util.find_spec
    missing = lambda name, *a: None if name == "torch_pruning" else real(name)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", missing)
    r = cli("export", ticket, "--format", "structured", "-o", out)
    assert_usage_error(r, "needs torch_pruning", "pip install 'ticketkit[structured]'")
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_eval_efficiency_adds_the_structured_export(cli, tmp_path, monkeypatch):
    """An mlp whose last hidden layer reads only half of the first's neurons: the other 150
    are removable (their weights, their biases, their unread columns)."""
    from ticketkit import build_model, save_ticket
    from ticketkit.artifacts import efficiency
    from ticketkit.inputs import InputSpec
    from ticketkit.masks import attach_masks, masked_layers

    monkeypatch.setattr(efficiency, "LATENCY_RUNS", 2)  # the timings' presence is tested here
    monkeypatch.setattr(efficiency, "WARMUP", 1)
    torch.manual_seed(0)
    model = build_model("mlp", InputSpec(**DIGITS))
    attach_masks(model)
    for layer in masked_layers(model):
        mask = torch.ones_like(layer.weight)
        if layer.path == "3":
            mask[:, 150:] = 0
        layer.set_mask(mask)
    ticket = save_ticket(model, tmp_path / "t.safetensors", dataset="digits")
    r = cli("eval", ticket, "--efficiency", "--json")
    assert r.code == 0, r.err
    eff = json.loads(r.out)["efficiency"]
    assert eff["params"]["total"] - eff["params"]["structured"] == 150 * (64 + 1 + 100)
    assert eff["latency_ms"]["structured_export"] > 0
    assert "150 empty channels removed" in eff["note"] and "eager" in eff["note"]
    assert "(structured)" in r.err


PLUGIN = """
from ticketkit import ExporterSpec, hookimpl

def write(model, x, ticket, tmp):
    import torch
    torch.save(model, tmp)
    with torch.no_grad():
        return torch.load(tmp, weights_only=False)(x)

@hookimpl
def ticketkit_register_exporters(register):
    register(ExporterSpec(name="pickle", summary="the whole module, pickled", factory=write))
"""


def test_a_third_party_exporter_is_a_format(tmp_path):
    from tests.conftest import run_subprocess
    from tests.test_registry import fake_distribution

    env = fake_distribution(tmp_path / "site", "tk-pickle", "tk_pickle", PLUGIN)
    ticket = api_ticket("mlp", tmp_path / "t.safetensors")
    r = run_subprocess("export", ticket, "--format", "pickle", "-o", tmp_path / "m.pkl", env=env)
    assert r.code == 0, r.err
    assert "pickle: " in r.err and (tmp_path / "m.pkl").stat().st_size > 0
    listed = run_subprocess("plugins", "--json", env=env)
    found = {(p["kind"], p["name"]) for p in json.loads(listed.out)}
    builtins = {("exporter", f) for f in ("dense", "onnx", "pt2", "structured")}
    assert {("exporter", "pickle")} | builtins <= found
