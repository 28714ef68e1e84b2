"""`ticketkit find-ticket`: a lottery ticket by iterative pruning, each level a stage of the run.

The method (IMP) declares one `Stage` per level; the engine trains them in order, writes every
level's ticket to `stages/<level>/ticket.safetensors` and resumes at the first unfinished level.
This job adds what a search over levels needs on top of `prune`: the run's ticket is the last
level's, and the result lists every level (kept count, fraction, accuracy, file), also written
to `summary.json` in the run directory (with `early_bird`: the declared epoch and the mask
distance per epoch of level 0, when the method was asked for it).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ticketkit.artifacts.ticket import Ticket
from ticketkit.jobs.common import Result, claim, dataset_for, finished_run, reused, write_ticket
from ticketkit.jobs.stages import ready, train_stages
from ticketkit.masks import masked_layers
from ticketkit.models import arch_options, build_model, init_weights
from ticketkit.plugin import Method, Setup
from ticketkit.plugins.methods import early_bird
from ticketkit.registry import get_initializer, get_method, require_phase
from ticketkit.runs import config as configs
from ticketkit.runs.directory import Run, atomic_text
from ticketkit.training.data import Dataset
from ticketkit.training.loop import Reporter, Silent

PHASE = "find-ticket"


@dataclass
class TicketSearch(Result):
    """The final ticket, and every level's: what `find-ticket --json` prints."""

    levels: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {**super().record(), "levels": self.levels}


def make_method(cfg: configs.FindTicketConfig) -> Method:
    """The method, its defaults filled into `cfg` (scope, init, arch options) before hashing."""
    spec = get_method(cfg.method)  # type: ignore[arg-type]
    require_phase(spec, PHASE)
    cls = spec.load()
    cfg.scope = cfg.scope or cls.default_scope
    cfg.init = cfg.init or cls.default_init
    get_initializer(cfg.init)  # an unknown name fails before any work
    setup = Setup(
        k=cfg.k if cfg.k is not None else 0.0,  # 0: no target; the method's levels end the run
        scope=cfg.scope,
        dense_first=cfg.dense_first,
        dense_last=cfg.dense_last,
        epochs=cfg.epochs,
        seed=cfg.seed,
        init=cfg.init,
    )
    method = cls(spec.make_options(cfg.options), setup)
    # what the method forces on the arch, checked as `prune` checks it
    cfg.arch_options = arch_options(cfg.arch, cfg.arch_options, method.arch_options(), cfg.method)  # type: ignore[arg-type]
    return method


def find_ticket(
    cfg: configs.FindTicketConfig, reporter: Reporter | None = None, force: bool = False
) -> TicketSearch:
    """Run the method's levels (resuming at the first unfinished one); the last is the ticket."""
    reporter = reporter or Silent()
    method = make_method(cfg)
    ds = dataset_for(cfg, None)
    label = f"{cfg.arch}-{cfg.method}" + (f"-k{cfg.k:g}" if cfg.k is not None else "")
    run = Run.for_config(PHASE, configs.as_dict(cfg), label)
    config = configs.to_yaml(cfg)  # what the run is matched on, and writes when claimed
    done = finished_run(run, config, "ticket.safetensors", force, reporter)
    if done is None:
        torch.manual_seed(cfg.seed)
        model = _random_network(cfg, ds)
        ready(method, model, ds, cfg)
        done = claim(run, config, force, "ticket.safetensors", reporter)
        if done is None:
            try:
                return _search(model, method, ds, cfg, run, reporter)
            finally:
                run.release()
    result = TicketSearch(**vars(reused("ticket", done, Ticket)), levels=levels_of(run))
    if not (run.root / "summary.json").exists():  # stopped between the ticket and the summary
        write_summary(cfg, run, result)
        write_plot(cfg, run, result.levels, reporter)
    return result


def _search(
    model: torch.nn.Module,
    method: Method,
    ds: Dataset,
    cfg: configs.FindTicketConfig,
    run: Run,
    reporter: Reporter,
) -> TicketSearch:
    stopped = train_stages(model, method, ds, cfg, run, reporter, PHASE)
    method.finish(model)
    kept = sum(int(layer.mask.sum()) for layer in masked_layers(model))
    total = sum(layer.numel for layer in masked_layers(model))
    meta = {
        "arch": cfg.arch,
        "arch_kwargs": cfg.arch_options,
        "method": cfg.method,
        "method_options": cfg.options,
        "k": cfg.k if cfg.k is not None else round(kept / total, 6),  # as asked, else as found
        "scope": cfg.scope,
        "granularity": getattr(method, "ticket_granularity", "unstructured"),  # slimming: filter
        "command": PHASE,
        "init": {"scheme": cfg.init, "scale": "unscaled", "seed": cfg.seed},
        **({"stopped": stopped} if stopped else {}),
    }
    result = write_ticket(model, ds, cfg, run, reporter, parent=None, meta=meta)
    search = TicketSearch(**vars(result), levels=levels_of(run))
    write_summary(cfg, run, search)
    write_plot(cfg, run, search.levels, reporter)
    return search


def write_plot(
    cfg: configs.FindTicketConfig, run: Run, levels: list[dict[str, Any]], reporter: Reporter
) -> None:
    """`summary.png` beside `summary.json`: the search at a glance; a line on stderr when it
    cannot be drawn (no matplotlib), never a failed search."""
    from ticketkit.runs.search_plot import write_search_plot

    title = f"{cfg.method} {cfg.arch} {cfg.dataset}"
    _, why = write_search_plot(levels, run.root / "summary.png", title)
    if why:
        reporter.note(why)


def write_summary(cfg: configs.FindTicketConfig, run: Run, result: TicketSearch) -> Path:
    """`summary.json`: the search's settings, its ticket and every level, for scripts and plots
    that should not have to open every ticket."""
    options = get_method(cfg.method).make_options(cfg.options)  # type: ignore[arg-type]
    summary = {
        "command": PHASE,
        "method": cfg.method,
        "method_options": dataclasses.asdict(options),
        "arch": cfg.arch,
        "dataset": cfg.dataset,
        "k": cfg.k,
        "scope": cfg.scope,
        "ticket": str(result.path),
        "metrics": result.metrics,
        "levels": result.levels,
    }
    if getattr(options, "early_bird", False):
        summary["early_bird"] = {
            "window": options.eb_window,
            "eps": options.eb_eps,
            **early_bird.curve(_metrics_lines(run), "0"),
        }
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    return atomic_text(run.root / "summary.json", text)


def _metrics_lines(run: Run) -> list[dict[str, Any]]:
    path = run.root / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def levels_of(run: Run) -> list[dict[str, Any]]:
    """Every level's ticket in the run: level, kept fraction, kept count, path and metrics,
    and `controls` ({name: the same record}) for a level whose controls were trained (stages
    named `<level>-<control>`)."""
    levels: dict[int | str, dict[str, Any]] = {}
    controls: dict[str, dict[str, dict[str, Any]]] = {}
    for path in (run.root / "stages").glob("*/ticket.safetensors"):
        ticket = Ticket.read(path)
        layers = ticket.meta["layers"].values()
        kept = sum(info["kept"] for info in layers)
        total = sum(_numel(info["shape"]) for info in layers)
        entry = {
            "k": round(kept / total, 6),
            "kept": kept,
            "path": str(path),
            "metrics": ticket.meta["metrics"],
        }
        name = path.parent.name
        level, _, control = name.partition("-")
        if control and level.isdigit():
            controls.setdefault(level, {})[control.replace("-", "_")] = entry
        else:
            key = int(name) if name.isdigit() else name
            levels[key] = {"level": key, **entry}
    for level, found in controls.items():
        if int(level) in levels:
            levels[int(level)]["controls"] = dict(sorted(found.items()))
    return sorted(
        levels.values(), key=lambda entry: (isinstance(entry["level"], str), entry["level"])
    )


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _random_network(cfg: configs.FindTicketConfig, ds: Dataset) -> torch.nn.Module:
    """The arch with every Conv/Linear weight drawn from `--init` (unscaled: these weights
    train, so the plain fan-in init the LTH references use)."""
    model = build_model(cfg.arch, ds.input, **cfg.arch_options)  # type: ignore[arg-type]
    init_weights(model, cfg.init, seed=cfg.seed)  # type: ignore[arg-type]
    return model
