"""`ticketkit export` (dense, onnx, pt2) and `ticketkit eval --efficiency`: every exported file
gives the ticket's logits when read back by its own consumer, without ticketkit's help."""

import json
import subprocess
import sys

import pytest
import torch

from tests.commands.test_errors import assert_usage_error

DIGITS = dict(channels=1, height=8, width=8, classes=10)


def api_ticket(arch, path, k=0.3, binary=False):
    """A ticket of `arch` made through the Python API (no training: fast), with BatchNorm
    statistics moved off their defaults and a magnitude mask of about k kept."""
    from ticketkit import build_model, save_ticket
    from ticketkit.inputs import InputSpec
    from ticketkit.masks import attach_masks, masked_layers

    torch.manual_seed(0)
    model = build_model(arch, InputSpec(**DIGITS))
    with torch.no_grad():
        model.train()(torch.randn(64, 1, 8, 8))  # BN running statistics
    attach_masks(model, binary=binary)
    for layer in masked_layers(model):
        w = layer.weight.detach().abs()
        layer.set_mask(w >= w.flatten().quantile(1 - k))
    return save_ticket(model, path, dataset="digits")


@pytest.fixture(scope="module")
def mlp_ticket(tmp_path_factory, pretrained_digits_mlp):
    """A magnitude ticket pruned from a short pretrain on digits, as a user makes one."""
    from ticketkit import jobs
    from ticketkit.runs import config

    out = tmp_path_factory.mktemp("runs")
    cfg = config.resolve(
        config.PruneConfig,
        {"input": str(pretrained_digits_mlp), "method": "magnitude", "k": 0.2, "out": str(out)},
    )
    return jobs.prune(cfg).path


@pytest.fixture(scope="module")
def resnet_ticket(tmp_path_factory):
    """A binary (sign + alpha) resnet20 ticket: convolutions, BatchNorm, residual additions."""
    return api_ticket("resnet20", tmp_path_factory.mktemp("t") / "resnet.safetensors", binary=True)


def reference(ticket, x):
    from ticketkit import load_ticket

    with torch.no_grad():
        return load_ticket(ticket)(x)


def read_back(fmt, path, ticket, x):
    """The written file's logits, each through its consumer's own loader."""
    if fmt == "dense":
        from safetensors.torch import load_file

        from ticketkit import build_model
        from ticketkit.artifacts.ticket import Ticket

        t = Ticket.read(ticket)
        model = build_model(t.meta["arch"], t.input, **t.meta["arch_kwargs"])
        model.load_state_dict(load_file(str(path)))  # strict: every name the arch's own
        with torch.no_grad():
            return model.eval()(x)
    if fmt == "pt2":
        with torch.no_grad():
            return torch.export.load(str(path)).module()(x)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("fmt", ["dense", "onnx", "pt2"])
@pytest.mark.parametrize("which", ["mlp_ticket", "resnet_ticket"])
def test_each_format_round_trips_to_the_tickets_logits(cli, tmp_path, request, fmt, which):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install '.[onnx]'")
    ticket = request.getfixturevalue(which)
    path = tmp_path / f"model.{fmt}"
    r = cli("export", ticket, "--format", fmt, "-o", path, "--json")
    assert r.code == 0, r.err
    record = json.loads(r.out)
    assert set(record) == {
        "kind",
        "format",
        "path",
        "bytes",
        "params_total",
        "params_nonzero",
        "max_abs_diff",
    }
    assert record["format"] == fmt and record["path"] == str(path)
    assert record["bytes"] == path.stat().st_size > 0
    assert 0 < record["params_nonzero"] < record["params_total"]
    assert record["max_abs_diff"] < 1e-5
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))  # another batch size
    diff = (read_back(fmt, path, ticket, x) - reference(ticket, x)).abs().max()
    assert diff < 1e-5
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_plain_output_is_the_path_and_input_can_be_piped(cli, tmp_path, mlp_ticket):
    r = cli("export", "-o", tmp_path / "m.safetensors", stdin=f"{mlp_ticket}\n")
    assert r.code == 0, r.err
    assert r.out == f"{tmp_path / 'm.safetensors'}\n"
    assert "max |logit difference|" in r.err


def test_timm_dense_export_loads_without_ticketkit(cli, tmp_path):
    ticket = api_ticket("timm:mobilenetv3_small_050", tmp_path / "timm.safetensors", k=0.5)
    out = tmp_path / "timm.safetensors.dense"
    assert cli("export", ticket, "-o", out).code == 0
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.save({"x": x, "logits": reference(ticket, x)}, tmp_path / "expected.pt")
    script = f"""
import sys, timm, torch
from safetensors.torch import load_file
model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10, in_chans=1)
model.load_state_dict(load_file({str(out)!r}))
expected = torch.load({str(tmp_path / "expected.pt")!r})
with torch.no_grad():
    diff = (model.eval()(expected["x"]) - expected["logits"]).abs().max().item()
assert not any(m.split(".")[0] == "ticketkit" for m in sys.modules), "ticketkit was imported"
print(diff)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) < 1e-5


def test_bad_input_is_one_error_line_and_nothing_written(cli, tmp_path, mlp_ticket):
    out = tmp_path / "m.x"
    assert_usage_error(
        cli("export", mlp_ticket, "--format", "pt3", "-o", out),
        "unknown export format 'pt3'; did you mean 'pt2'?",
    )
    assert_usage_error(
        cli("export", mlp_ticket, "-o", tmp_path / "nowhere" / "m.x"),
        "directory",
        "does not exist",
    )
    assert_usage_error(cli("export", mlp_ticket, "-o", tmp_path), "is a directory")
    from ticketkit.artifacts.ticket import Ticket

    parent = Ticket.read(mlp_ticket).meta["parent"]  # the dense checkpoint it was pruned from
    assert_usage_error(cli("export", parent, "-o", out), "is a dense checkpoint")
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_extra_names_the_install_line(cli, tmp_path, mlp_ticket, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name)
    )
    r = cli("export", mlp_ticket, "--format", "onnx", "-o", tmp_path / "m.onnx")
    assert_usage_error(r, "onnxruntime", "pip install 'ticketkit[onnx]'")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_no_partial_file(tmp_path, mlp_ticket, monkeypatch):
    from ticketkit.artifacts import export
    from ticketkit.artifacts.ticket import Ticket

    def half_written(model, x, ticket, tmp):
        tmp.write_bytes(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_dense", half_written)  # what the dense ExporterSpec loads
    with pytest.raises(RuntimeError, match="disk full"):
        export.export(Ticket.read(mlp_ticket), "dense", tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_eval_efficiency_reports_params_bytes_flops_and_latency(cli, mlp_ticket):
    r = cli("eval", mlp_ticket, "--efficiency", "--json")
    assert r.code == 0, r.err
    eff = json.loads(r.out)["efficiency"]
    assert set(eff) == {"params", "bytes", "flops", "latency_ms", "note"}
    assert 0 < eff["params"]["nonzero"] < eff["params"]["total"]
    assert 0 < eff["bytes"]["file"] < eff["bytes"]["dense_fp32"]
    flops = eff["flops"]
    assert 0 < flops["kept"] < flops["dense"]
    # each of the mlp's weights is used once per image: FLOPs are 2 x the (kept) weights
    layers = json.loads(r.out)["layers"]
    assert flops["dense"] == 2 * sum(i["shape"][0] * i["shape"][1] for i in layers.values())
    assert flops["kept"] == 2 * sum(i["kept"] for i in layers.values())
    lat = eff["latency_ms"]
    assert lat["masked"] > 0 and lat["dense_export"] > 0 and lat["device"] == "cpu"
    assert "saves no time" in eff["note"]
    assert "efficiency" in r.err and "masked" in r.err
