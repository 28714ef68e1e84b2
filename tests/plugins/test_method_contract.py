"""The method contract, as a third party meets it: the suite's test plugin (SNIP, a stateful
two-stage method, an early stop) uses only the public names of docs/plugins.md, and every
registered method resumes to the same ticket bit for bit."""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ticketkit import jobs, testing
from ticketkit.artifacts.ticket import Ticket
from ticketkit.registry import get_method, names

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = Path(__file__).parent / "contract_plugin" / "ticketkit_contract_test" / "__init__.py"


def documented_names() -> dict[str, set[str]]:
    """docs/plugins.md's table of public names: | `module` | `a`, `b` ... |."""
    table: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "plugins.md").read_text().splitlines():
        row = re.match(r"\| `(ticketkit[\w.]*)` \| (.*) \|$", line)
        if row:
            table.setdefault(row.group(1), set()).update(re.findall(r"`(\w+)`", row.group(2)))
    return table


def test_the_test_plugin_imports_only_documented_names():
    public = documented_names()
    used = []
    for node in ast.walk(ast.parse(PLUGIN.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("ticketkit"):
            used += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("ticketkit") for a in node.names)
    assert used, "the plugin imports nothing from ticketkit?"
    for module, name in used:
        assert name in public.get(module, set()), f"{module}.{name} is not in docs/plugins.md"


def test_every_documented_name_exists():
    import importlib

    for module, found in documented_names().items():
        for name in found:
            assert hasattr(importlib.import_module(module), name), f"{module}.{name}"


def test_snip_masks_are_the_top_k_of_g_times_w(tmp_path):
    from ticketkit import InputSpec, Setup, build_model
    from ticketkit.masks import masked_layers
    from ticketkit.training.data import load_dataset
    from ticketkit.training.loop import bind

    spec = get_method("snip-test")
    method = spec.load()(spec.make_options({"batches": 3}), Setup(k=0.1, seed=0))
    bind(method, load_dataset("digits"), testing.prune_config("snip-test", tmp_path))
    torch.manual_seed(0)
    model = build_model("mlp", InputSpec(1, 8, 8, 10))
    plain = copy.deepcopy(model)
    method.prepare(model)
    # independently: |dL/dW * W| summed over the same batches, in float64, one global top-k
    plain.double()
    weights = [m.weight for m in plain.modules() if isinstance(m, torch.nn.Linear)]
    saliency = [torch.zeros_like(w) for w in weights]
    for x, y in method.ctx.batches(3, seed=0):
        grads = torch.autograd.grad(F.cross_entropy(plain(x.double()), y), weights)
        for s, g, w in zip(saliency, grads, weights):
            s += (g * w).abs()
    flat = torch.cat([s.flatten() for s in saliency])
    keep = flat.numel() - int(0.9 * flat.numel())
    threshold = flat.sort(descending=True).values[keep - 1]
    masks = torch.cat([layer.mask.flatten() for layer in masked_layers(model)])
    assert int(masks.sum()) == keep
    assert bool((flat[masks.bool()] >= threshold * (1 - 1e-5)).all())
    assert (masks.bool() == (flat >= threshold)).float().mean() > 0.999  # ties at the edge only


def test_snip_trains_resumes_and_evaluates(tmp_path, cli):
    testing.check_method("snip-test", tmp_path)
    ticket = next((tmp_path / "full").rglob("ticket.safetensors"))
    r = cli("eval", ticket, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["metrics"] == Ticket.read(ticket).meta["metrics"]


@pytest.mark.parametrize("method", names("methods"))
def test_every_method_resumes_to_the_same_ticket(method, tmp_path, pretrained_digits_mlp):
    checkpoint = pretrained_digits_mlp if get_method(method).load().source == "checkpoint" else None
    testing.check_resumes_exactly(method, tmp_path, checkpoint)


def test_a_method_that_stops_at_the_end_of_an_epoch_ends_training_there(tmp_path):
    result = jobs.prune(testing.prune_config("early-stop-test", tmp_path, epochs=3))
    lines = [json.loads(line) for line in (result.path.parent / "metrics.jsonl").open()]
    epochs = [line for line in lines if line["phase"] == "prune"]
    stopped = {"epoch": 1, "reason": "the mask converged"}
    assert len(epochs) == 1 and epochs[0]["stopped"] == stopped
    assert Ticket.read(result.path).meta["stopped"] == {"stage": "train", **stopped}
    again = jobs.prune(testing.prune_config("early-stop-test", tmp_path, epochs=3), force=True)
    assert (
        Ticket.read(again.path).meta["payload_sha256"]
        == Ticket.read(result.path).meta["payload_sha256"]
    )


def test_stages_keep_their_artifacts_and_resume_at_the_first_unfinished(tmp_path):
    from ticketkit.runs.directory import Run

    full = jobs.prune(testing.prune_config("stateful-test", tmp_path / "full", epochs=4))
    stages = full.path.parent / "stages"
    assert sorted(p.name for p in stages.iterdir()) == ["dense", "sparse"]
    dense, sparse = (Ticket.read(stages / n / "ticket.safetensors") for n in ("dense", "sparse"))
    assert dense.meta["stage"] == "dense" and "test_acc1" in dense.meta["metrics"]
    kept = [sum(t.meta["layers"][p]["kept"] for p in t.meta["layers"]) for t in (dense, sparse)]
    assert kept[1] < kept[0]  # the second stage pruned
    lines = [json.loads(line) for line in (full.path.parent / "metrics.jsonl").open()]
    assert [(x.get("stage"), x["epoch"]) for x in lines if x["phase"] == "prune"] == [
        ("dense", 1),
        ("dense", 2),
        ("sparse", 1),
        ("sparse", 2),
    ]
    assert [x["steps_seen"] for x in lines if x["phase"] == "prune"] == [23, 46, 69, 92]

    original = Run.save_checkpoint

    def interrupt_in_the_second_stage(self, tag, *args, **kwargs):
        path = original(self, tag, *args, **kwargs)
        if tag == "sparse/last":
            raise KeyboardInterrupt
        return path

    cfg = testing.prune_config("stateful-test", tmp_path / "cut", epochs=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Run, "save_checkpoint", interrupt_in_the_second_stage)
        with pytest.raises(KeyboardInterrupt):
            jobs.prune(cfg)
    cut = next((tmp_path / "cut").glob("prune-*")) / "stages" / "dense" / "ticket.safetensors"
    before = cut.stat().st_mtime_ns
    resumed = jobs.prune(testing.prune_config("stateful-test", tmp_path / "cut", epochs=4))
    assert cut.stat().st_mtime_ns == before  # the finished stage was not redone
    a, b = Ticket.read(full.path), Ticket.read(resumed.path)
    assert a.meta["payload_sha256"] == b.meta["payload_sha256"]
