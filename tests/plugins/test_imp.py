"""IMP (find-ticket --method imp) on the digits MLP, one epoch a level: the kept counts follow
the issue's formula to the weight, masks are nested, survivors restart where --rewind says, and
a run killed in a level resumes there, redoing none of the finished levels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ticketkit import jobs
from ticketkit.artifacts.ticket import Ticket
from ticketkit.errors import UsageError
from ticketkit.masks import masked_layers
from ticketkit.plugins.methods.imp import Imp, kept_schedule, parse_rewind
from ticketkit.runs.config import FindTicketConfig, resolve
from ticketkit.runs.directory import Run


def config(
    out: Path, epochs: int = 1, k: float | None = 0.5, scope: str = "global", **options
) -> FindTicketConfig:
    values = {
        "method": "imp",
        "scope": scope,
        "arch": "mlp",
        "dataset": "digits",
        "epochs": epochs,
        "eval_every": 0,
        "out": str(out),
        "options": options,
        **({"k": k} if k is not None else {}),
    }
    return resolve(FindTicketConfig, values)


def snapshot(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        layer.path: (layer.weight.detach().clone(), layer.mask.detach().bool().clone())
        for layer in masked_layers(model)
    }


class Spy:
    """Records each level's starting network (after begin_stage) and level 0's weights after
    every epoch, through the method's own hooks."""

    def __init__(self) -> None:
        self.starts: dict[int, dict] = {}
        self.after_epoch: dict[int, dict] = {}

    def run(self, cfg: FindTicketConfig):
        begin, end = Imp.begin_stage, Imp.end_epoch

        def spied_begin(method, stage, model):
            begin(method, stage, model)
            self.starts[int(stage.name)] = snapshot(model)

        def spied_end(method, model, metrics):
            if method.ctx.stage == "0":
                self.after_epoch[method.ctx.epoch + 1] = snapshot(model)
            return end(method, model, metrics)

        Imp.begin_stage, Imp.end_epoch = spied_begin, spied_end  # type: ignore[method-assign]
        try:
            return jobs.find_ticket(cfg)
        finally:
            Imp.begin_stage, Imp.end_epoch = begin, end  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """Global scope, k = 0.5, rate 0.2, rewind 0: levels 0-4 (the last one clamped at K)."""
    spy = Spy()
    result = spy.run(config(tmp_path_factory.mktemp("imp")))
    return result, spy


def expected_counts(total: int, rate: float, target: int, levels: int = 0) -> list[int]:
    """r_i = max(r_{i-1} - floor(rate * r_{i-1}), K), until r_i = K or `levels` levels."""
    counts = [total]
    while counts[-1] != target and (not levels or len(counts) <= levels):
        counts.append(max(counts[-1] - math.floor(rate * counts[-1]), target))
    return counts


def test_global_kept_counts_follow_the_formula_to_the_weight(search):
    result, _ = search
    total = 64 * 300 + 300 * 100 + 100 * 10
    target = total - math.floor(0.5 * total)
    counts = expected_counts(total, 0.2, target)
    assert len(counts) == 5  # 1, 0.8, 0.64, 0.512, then clamped at 0.5
    assert [level["kept"] for level in result.levels] == counts
    assert [level["level"] for level in result.levels] == [0, 1, 2, 3, 4]
    final = Ticket.read(result.path)
    assert sum(info["kept"] for info in final.meta["layers"].values()) == target
    last = Ticket.read(result.levels[-1]["path"])  # the run's ticket is the last level's
    assert final.meta["payload_sha256"] == last.meta["payload_sha256"]
    assert final.meta["metrics"] == result.levels[-1]["metrics"] == result.metrics


def test_masks_are_nested(search):
    result, _ = search
    masks = [Ticket.read(level["path"]).masks() for level in result.levels]
    for previous, current in zip(masks, masks[1:]):
        for path, mask in current.items():
            assert not (mask & ~previous[path]).any(), f"{path} regrew a pruned weight"
            assert mask.sum() <= previous[path].sum()


def test_rewind_0_restarts_every_level_from_the_init(search):
    _, spy = search
    init = spy.starts[0]
    assert sorted(spy.starts) == [0, 1, 2, 3, 4]
    for level in range(1, 5):
        for path, (weight, mask) in spy.starts[level].items():
            assert torch.equal(weight[mask], init[path][0][mask]), (level, path)
            assert mask.sum() < mask.numel()


def test_summary_json_lists_every_level(search):
    result, _ = search
    summary = json.loads((result.path.parent / "summary.json").read_text())
    assert summary["levels"] == result.levels
    assert summary["ticket"] == str(result.path)
    assert summary["method_options"] == {
        "rate": 0.2,
        "levels": 0,
        "rounds": 0,
        "rewind": "0",
        "reinit": "none",
        "early_bird": False,
        "eb_window": 5,
        "eb_eps": 0.1,
        "controls": False,
    }


def test_rewind_1ep_restarts_from_the_weights_after_epoch_1(tmp_path):
    spy = Spy()
    spy.run(config(tmp_path, epochs=2, k=None, levels=2, rewind="1ep"))
    assert sorted(spy.starts) == [0, 1, 2]
    after_1, after_2 = spy.after_epoch[1], spy.after_epoch[2]
    for level in (1, 2):
        for path, (weight, mask) in spy.starts[level].items():
            assert torch.equal(weight[mask], after_1[path][0][mask]), (level, path)
            assert not torch.equal(weight[mask], after_2[path][0][mask])


def test_layer_scope_prunes_rate_of_every_layer(tmp_path):
    result = jobs.find_ticket(config(tmp_path, k=None, scope="layer", levels=3, rate=0.3))
    sizes = {"1": 64 * 300, "3": 300 * 100, "5": 100 * 10}
    per_layer = [Ticket.read(level["path"]).meta["layers"] for level in result.levels]
    assert len(per_layer) == 4
    for path, n in sizes.items():
        assert [layers[path]["kept"] for layers in per_layer] == expected_counts(n, 0.3, 0, 3)


def test_rounds_1_is_one_shot_pruning_from_the_init(tmp_path):
    spy = Spy()
    result = spy.run(config(tmp_path, k=0.1, rounds=1))
    total = 64 * 300 + 300 * 100 + 100 * 10
    assert [level["kept"] for level in result.levels] == [total, total - math.floor(0.9 * total)]
    for path, (weight, mask) in spy.starts[1].items():  # straight to K, rewound to the init
        assert torch.equal(weight[mask], spy.starts[0][path][0][mask]), path


def test_rounds_n_lands_on_k_in_n_nested_levels(tmp_path):
    result = jobs.find_ticket(config(tmp_path, k=0.1, scope="layer", rounds=3))
    sizes = {"1": 64 * 300, "3": 300 * 100, "5": 100 * 10}
    per_layer = [Ticket.read(level["path"]).meta["layers"] for level in result.levels]
    for path, n in sizes.items():
        counts = [layers[path]["kept"] for layers in per_layer]
        assert counts == [n - math.floor((1 - 0.1 ** (i / 3)) * n) for i in range(4)], path
        assert counts[-1] == n - math.floor(0.9 * n)
    masks = [Ticket.read(level["path"]).masks() for level in result.levels]
    for previous, current in zip(masks, masks[1:]):
        assert all(not (current[p] & ~previous[p]).any() for p in current)


def test_random_reinit_draws_new_weights_each_level(tmp_path):
    spy = Spy()
    spy.run(config(tmp_path, k=None, levels=1, reinit="random"))
    init = spy.starts[0]
    for path, (weight, mask) in spy.starts[1].items():
        assert (weight[mask] != init[path][0][mask]).float().mean() > 0.99, path
        fan_in = weight.shape[1]
        assert abs(float(weight.std()) / math.sqrt(2 / fan_in) - 1) < 0.1  # kaiming-normal


def test_a_run_killed_in_level_2_resumes_there_and_ends_with_the_same_ticket(search, tmp_path):
    full, _ = search
    original = Run.save_checkpoint

    def save(self, tag, *args, **kwargs):
        path = original(self, tag, *args, **kwargs)
        if tag == "2/last":
            raise KeyboardInterrupt
        return path

    Run.save_checkpoint = save  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            jobs.find_ticket(config(tmp_path))
    finally:
        Run.save_checkpoint = original  # type: ignore[method-assign]
    root = next(tmp_path.glob("find-ticket-*"))
    done = [*root.glob("stages/[01]/*"), *root.glob("checkpoints/[01]/end.safetensors")]
    assert len(done) == 4 and not (root / "stages" / "2").exists()
    mtimes = {path: path.stat().st_mtime_ns for path in done}
    resumed = jobs.find_ticket(config(tmp_path))
    assert {path: path.stat().st_mtime_ns for path in done} == mtimes  # levels 0-1 untouched
    lines = [json.loads(line) for line in (root / "metrics.jsonl").open()]
    trained = [line["stage"] for line in lines if line["phase"] == "find-ticket"]
    assert trained == ["0", "1", "2", "3", "4"]  # level 2's one epoch was saved, then killed
    a, b = Ticket.read(full.path), Ticket.read(resumed.path)
    assert a.meta["payload_sha256"] == b.meta["payload_sha256"]
    assert [level["metrics"] for level in resumed.levels] == [
        level["metrics"] for level in full.levels
    ]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mlp", "conv2"])
def test_fashion_mnist_five_levels_follow_the_formula_and_nest(tmp_path, fashion, arch):
    """The issue's acceptance run, shrunk: 5 levels at rate 0.2 on Fashion-MNIST (a 1000-image
    subset, one epoch a level; conv2 at width 0.25)."""
    values = {
        "method": "imp",
        "arch": arch,
        "dataset": "fashion-mnist",
        "subset": 1000,
        "epochs": 1,
        "eval_every": 0,
        "out": str(tmp_path),
        "options": {"levels": 4, "rate": 0.2},
        **({"arch_options": {"width": 0.25}} if arch == "conv2" else {}),
    }
    result = jobs.find_ticket(resolve(FindTicketConfig, values))
    tickets = [Ticket.read(level["path"]) for level in result.levels]
    assert len(tickets) == 5 and [level["level"] for level in result.levels] == list(range(5))
    total = sum(_numel(info["shape"]) for info in tickets[0].meta["layers"].values())
    kept = [sum(info["kept"] for info in t.meta["layers"].values()) for t in tickets]
    assert kept == expected_counts(total, 0.2, 0, 4) == [level["kept"] for level in result.levels]
    masks = [t.masks() for t in tickets]
    assert [sum(int(m.sum()) for m in level.values()) for level in masks] == kept
    for previous, current in zip(masks, masks[1:]):
        assert all(not (current[p] & ~previous[p]).any() for p in current)
    assert tickets[-1].meta["metrics"]["test_acc1"] > 25  # one epoch from the init: above chance


def _numel(shape: list[int]) -> int:
    return math.prod(shape)


def test_kept_schedule():
    assert kept_schedule([100], 0.5, 0.2, "global", 0) == [[100], [50], [25], [20]]
    assert kept_schedule([100], 0.5, 0.0, "global", 2) == [[100], [50], [25]]
    assert kept_schedule([100], 0.5, 0.2, "global", 2) == [[100], [50], [25]]  # --levels first
    # layer scope: each layer to its own K, the finished ones stay
    assert kept_schedule([10, 100], 0.5, 0.5, "layer", 0) == [[10, 100], [5, 50]]
    assert kept_schedule([4, 100], 0.5, 0.2, "layer", 0)[-1] == [1, 20]
    # floor(rate * r) = 0 would never end: one weight goes instead
    assert kept_schedule([3], 0.2, 0.34, "global", 0) == [[3], [2]]
    # --rounds: level i keeps the count of k^(i/R), the last one exactly K
    assert kept_schedule([100], 0.2, 0.2, "global", 0, 1) == [[100], [20]]
    assert kept_schedule([100], 0.2, 0.2, "global", 0, 3) == [[100], [59], [35], [20]]
    assert kept_schedule([10, 100], 0.2, 0.5, "layer", 0, 3)[1:] == [[8, 80], [7, 63], [5, 50]]
    # at least one weight a level while any is left to prune; a level with none is refused
    assert kept_schedule([100], 0.2, 0.97, "global", 0, 2) == [[100], [99], [97]]
    assert kept_schedule([100], 0.2, 0.97, "global", 0, 5)[-2:] == [[97], [97]]


@pytest.mark.parametrize(
    "text, parsed", [("0", (0, "it")), ("2ep", (2, "ep")), ("50it", (50, "it"))]
)
def test_parse_rewind(text, parsed):
    assert parse_rewind(text) == parsed


@pytest.mark.parametrize("text", ["3", "1e", "ep", "-1ep", "1.5ep", ""])
def test_parse_rewind_refuses(text):
    with pytest.raises(UsageError, match="--rewind must be"):
        parse_rewind(text)
