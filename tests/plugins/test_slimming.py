"""Network slimming (find-ticket --method slimming) on a small BN conv net on digits (conv2 with
BatchNorm, width 0.25): the kept channel count follows K = C - floor((1-k) C), the pruned
channels' filters and BatchNorm affines are zero in the ticket, the L1 term shrinks the scales,
Early-Bird ends dense training on the channel mask, a killed run resumes bit for bit, and
networks it cannot slim are one `Error:` line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ticketkit import jobs, testing
from ticketkit.artifacts.ticket import Ticket
from ticketkit.errors import UsageError
from ticketkit.plugins.methods.early_bird import hamming
from ticketkit.plugins.methods.slimming_groups import channel_units
from ticketkit.runs.config import FindTicketConfig, resolve
from ticketkit.runs.directory import Run

# conv2 -A binary_act=true: conv(16)-BN, conv(16)-pool-BN, fc(64)-BN1d, fc(64)-BN1d, fc(10)
GROUPS = {"1": "0", "5": "3", "9": "8", "12": "11"}  # BatchNorm path -> the layer feeding it
CHANNELS = 16 + 16 + 64 + 64


def config(
    out: Path, epochs: int = 2, k: float = 0.5, arch: str = "conv2", **options
) -> FindTicketConfig:
    arch_options = {"binary_act": True, "width": 0.25} if arch == "conv2" else {"width": 0.5}
    values = {
        "method": "slimming",
        "arch": arch,
        "arch_options": arch_options,
        "dataset": "digits",
        "k": k,
        "epochs": epochs,
        "eval_every": 0,
        "out": str(out),
        "options": options,
    }
    return resolve(FindTicketConfig, values)


def gammas(ticket: Ticket) -> torch.Tensor:
    return torch.cat([ticket.tensors[f"state.{bn}.weight"].abs() for bn in GROUPS])


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    return jobs.find_ticket(config(tmp_path_factory.mktemp("slim"), l1=1e-2))


def test_the_kept_channel_count_follows_the_formula(search):
    ticket = Ticket.read(search.path)
    masks = ticket.masks()
    kept = 0
    for bn, layer in GROUPS.items():
        rows = masks[layer].flatten(1).any(1)
        assert rows.shape == ticket.tensors[f"state.{bn}.weight"].shape
        kept += int(rows.sum())
    assert kept == CHANNELS - math.floor(0.5 * CHANNELS)
    assert masks["14"].all()  # the classifier feeds no BatchNorm: dense
    assert ticket.meta["granularity"] == "filter" and float(ticket.meta["k"]) == 0.5
    assert [level["level"] for level in search.levels] == [0, 1]
    assert search.levels[0]["kept"] > search.levels[1]["kept"] == ticket_kept(ticket)


def ticket_kept(ticket: Ticket) -> int:
    return sum(info["kept"] for info in ticket.meta["layers"].values())


def test_pruned_channels_are_zero_whole_and_kept_ones_are_the_largest_scales(search):
    ticket = Ticket.read(search.path)
    dense = Ticket.read(search.levels[0]["path"])  # stage 0: the scales thresholded
    masks, weights = ticket.masks(), ticket.weights()
    keep = []
    for bn, layer in GROUPS.items():
        rows = masks[layer].flatten(1).any(1)
        keep.append(rows)
        pruned = ~rows
        assert not weights[layer][pruned].any(), layer  # the whole filter
        assert not ticket.tensors[f"state.{bn}.weight"][pruned].any(), bn
        assert not ticket.tensors[f"state.{bn}.bias"][pruned].any(), bn
        assert ticket.tensors[f"state.{bn}.weight"][rows].all(), bn  # kept ones fine-tuned
    keep_all = torch.cat(keep)
    scales = gammas(dense)
    assert scales[keep_all].min() >= scales[~keep_all].max()  # one global threshold


def test_the_l1_term_shrinks_the_scales(search, tmp_path):
    plain = jobs.find_ticket(config(tmp_path, l1=0.0))
    shrunk = gammas(Ticket.read(search.levels[0]["path"])).mean()
    assert shrunk < 0.9 * gammas(Ticket.read(plain.levels[0]["path"])).mean()


def test_early_bird_ends_dense_training_on_the_channel_mask(tmp_path):
    cfg = config(tmp_path, 6, l1=1e-2, early_bird=True, eb_window=2, eb_eps=0.2)
    result = jobs.find_ticket(cfg)
    found = json.loads((result.path.parent / "summary.json").read_text())["early_bird"]
    assert found["window"] == 2 and 2 <= found["epoch"] < 6
    assert found["distances"][-1] <= 0.2 and len(found["distances"]) == found["epoch"]
    stopped = Ticket.read(result.levels[0]["path"]).meta["stopped"]
    assert stopped["stage"] == "0" and "channel mask" in stopped["reason"]
    assert [level["level"] for level in result.levels] == [0, 1]
    # the declared channel mask is within eps of the one the full dense run ends with
    full = jobs.find_ticket(config(tmp_path / "full", 6, l1=1e-2))
    declared, final = (kept_channels(Ticket.read(r.path)) for r in (result, full))
    assert hamming(declared, final) <= 0.2, hamming(declared, final)


def kept_channels(ticket: Ticket) -> torch.Tensor:
    masks = ticket.masks()
    return torch.cat([masks[layer].flatten(1).any(1) for layer in GROUPS.values()])


def test_a_killed_run_resumes_to_the_same_ticket(tmp_path):
    testing.check_resumes_exactly("slimming", tmp_path)  # the contract's MLP with BatchNorm


def test_a_run_killed_while_fine_tuning_resumes_there_bit_for_bit(search, tmp_path):
    original = Run.save_checkpoint

    def save(self, tag, *args, **kwargs):
        path = original(self, tag, *args, **kwargs)
        if tag == "1/last":
            raise KeyboardInterrupt
        return path

    Run.save_checkpoint = save  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            jobs.find_ticket(config(tmp_path, l1=1e-2))
    finally:
        Run.save_checkpoint = original  # type: ignore[method-assign]
    resumed = jobs.find_ticket(config(tmp_path, l1=1e-2))
    a, b = Ticket.read(search.path), Ticket.read(resumed.path)
    assert a.meta["payload_sha256"] == b.meta["payload_sha256"]
    assert a.meta["metrics"] == b.meta["metrics"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "mlp"], "this network has none"),
        (["--arch", "mlp", "-A", "binary_act=true", "-A", "affine_bn=false"], "affine_bn"),
        (["--arch", "mlp", "-A", "binary_act=true", "--k", "1"], "keeps every one"),
        (["--arch", "vgg11-bn", "--rate", "0.2"], "rate"),
        (["--arch", "vgg11-bn", "--scope", "layer"], "--scope global only"),
    ],
)
def test_what_it_cannot_slim_is_one_error_line(cli, tmp_path, args, message):
    base = ["find-ticket", "--method", "slimming", "--dataset", "digits", "--k", "0.5"]
    r = cli(*base, "--epochs", "1", *args, "--out", tmp_path)
    assert r.code == 2, r.err
    assert r.err.startswith("Error:") and len(r.err.strip().splitlines()) == 1, r.err
    assert message in r.err


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """resnet20 (width 0.5: 8/16/32 channels) slimmed to a fifth of its channel units."""
    cfg = config(tmp_path_factory.mktemp("resnet"), 1, 0.2, "resnet20", l1=1e-2)
    cfg.subset = 300
    return Ticket.read(jobs.find_ticket(cfg).path)


def pruned_channels(ticket: Ticket) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """The groups of the ticket's network and, per flat channel, whether it was pruned: its
    filter keeps no weight and its BatchNorm scale and shift are 0."""
    groups, _ = channel_units(ticket.build())
    masks, pruned = ticket.masks(), []
    for bn, layer in groups:
        empty = ~masks[layer].flatten(1).any(1)
        zero = (ticket.tensors[f"state.{bn}.weight"] == 0) & (
            ticket.tensors[f"state.{bn}.bias"] == 0
        )
        assert torch.equal(empty, zero), bn  # a filter goes with its scale and shift
        pruned.append(empty)
    return groups, torch.cat(pruned)


def test_resnet_channels_joined_by_a_residual_addition_are_pruned_together(resnet):
    groups, pruned = pruned_channels(resnet)
    _, units = channel_units(resnet.build())
    assert len(units) == 3 * (8 + 16 + 32) + 32  # inner channels + the residual stream
    for unit in units:
        assert pruned[unit].all() or not pruned[unit].any(), unit
    joined = [unit for unit in units if len(unit) > 1]
    assert {len(unit) for unit in joined} == {10, 6, 3}  # option A carries c to c+4, c+12
    assert any(pruned[unit].all() for unit in joined)  # the test prunes residual channels
    decided = [bool(pruned[unit[0]]) for unit in units]
    assert decided.count(False) == len(units) - math.floor(0.8 * len(units))


def test_the_masked_resnet_computes_what_physically_zero_channels_compute(resnet):
    """The ticket's network against the same network with the pruned channels' filters and
    BatchNorms given random values back and their outputs zeroed by hooks: the logits are
    equal, and every pruned residual channel is zero at every block's output."""
    groups, pruned = pruned_channels(resnet)
    masked, physical = resnet.build().eval(), resnet.build().eval()
    gen = torch.Generator().manual_seed(0)
    start = 0
    for bn, layer in groups:
        module = physical.get_submodule(bn)
        off = pruned[start : start + module.num_features]
        start += module.num_features
        with torch.no_grad():
            for tensor in (module.weight, module.bias, physical.get_submodule(layer).weight):
                tensor[off] = torch.randn(tensor[off].shape, generator=gen)

        def zero(_m, _args, out, off=off):
            return out * (~off).view(1, -1, 1, 1).to(out.dtype)

        module.register_forward_hook(zero)
    stream: list[torch.Tensor] = []
    for name, block in masked.named_modules():
        if name.count(".") == 1 and name.startswith("layer"):
            block.register_forward_hook(lambda _m, _a, out: stream.append(out))
    x = torch.randn(64, 1, 8, 8, generator=gen)
    with torch.no_grad():
        assert torch.equal(masked(x), physical(x))
    # the residual stream after each block: the pruned units' channels carry exact zeros
    assert len(stream) == 9 and all(out.abs().sum() > 0 for out in stream)
    where = [(bn, c) for bn, _ in groups for c in range(masked.get_submodule(bn).num_features)]
    _, units = channel_units(masked)
    checked = 0
    for unit in units:
        if len(unit) > 1 and pruned[unit].all():
            for bn, channel in (where[i] for i in unit):
                if bn.endswith(".bn2"):  # a block's last BatchNorm: it writes the stream
                    stage, block = int(bn[5]), int(bn.split(".")[1])
                    assert not stream[3 * (stage - 1) + block][:, channel].any(), (bn, channel)
                    checked += 1
    assert checked


def test_what_the_channel_analysis_cannot_follow_is_refused():
    from torch import nn

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return torch.cat([y, y], 1)

    class Unnormalised(Concat):
        def __init__(self):
            super().__init__()
            self.other = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.other(x)  # a channel no scale controls

    with pytest.raises(UsageError, match="concatenate"):
        channel_units(Concat())
    with pytest.raises(UsageError, match="no BatchNorm scale controls"):
        channel_units(Unnormalised())
