"""Jobs: what each command does, as plain functions of a config (no CLI here).

A job builds what the config names from the registry, hands it to the training loop, writes its
artifact into the run directory and returns a `Result`. Re-running a finished job returns the
existing artifact (unless `force`); an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ticketkit.core import config as configs
from ticketkit.core.data import load_dataset
from ticketkit.core.model import arch_options, build_model, init_weights
from ticketkit.core.runs import Run
from ticketkit.core.sparsity import prunable_layers
from ticketkit.core.ticket import Ticket
from ticketkit.core.train import Reporter, Silent, evaluate, fit, resolve_device
from ticketkit.errors import UsageError
from ticketkit.plugin import Method, Setup, norm_parameters
from ticketkit.registry import get_initializer, get_method, require_phase


@dataclass
class Result:
    """What a command prints: the artifact path, or this record as JSON with --json."""

    kind: str
    path: Path
    method: str | None = None
    k: float | None = None
    parent: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    reused: bool = False

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "parent": self.parent,
            "method": self.method,
            "k": self.k,
            "metrics": self.metrics,
        }


def make_method(cfg: configs.PruneConfig, phase: str) -> Method:
    spec = get_method(cfg.method)  # type: ignore[arg-type]
    require_phase(spec, phase)
    options = spec.make_options(cfg.options)
    setup = Setup(
        k=cfg.k,
        scope=cfg.scope,
        granularity=cfg.granularity,
        learn_bn=cfg.learn_bn,  # type: ignore[arg-type]
        dense_first=cfg.dense_first,
        dense_last=cfg.dense_last,
        epochs=cfg.epochs,
        seed=cfg.seed,
    )
    return spec.load()(options, setup)


def prune(
    cfg: configs.PruneConfig, reporter: Reporter | None = None, force: bool = False
) -> Result:
    """Find a ticket in a randomly initialised network (edge-popup, biprop, ...)."""
    reporter = reporter or Silent()
    method = make_method(cfg, "prune")
    if method.source != "init":
        raise UsageError(f"method '{cfg.method}' prunes a trained checkpoint; pass one as input")
    init = cfg.init or method.default_init
    get_initializer(init)  # unknown names fail before any work
    cfg.init = init
    ds = load_dataset(cfg.dataset, cfg.data, cfg.subset)  # type: ignore[arg-type]
    arch_kwargs = arch_options(cfg.arch, cfg.arch_options, method.arch_options())  # type: ignore[arg-type]
    cfg.arch_options = arch_kwargs
    run = Run.for_config("prune", configs.as_dict(cfg), f"{cfg.arch}-{cfg.method}-k{cfg.k:g}")
    ticket_path = run.artifact("ticket.safetensors")
    if not force and ticket_path.exists() and run.matches(configs.to_yaml(cfg)):
        reporter.note(f"reusing finished run {run.root} (--force recomputes)")
        ticket = Ticket.read(ticket_path)
        return Result(
            "ticket", ticket_path, cfg.method, cfg.k, metrics=ticket.meta["metrics"], reused=True
        )
    run.claim(configs.to_yaml(cfg), force)
    if force:
        for stale in run.checkpoints.glob("*.safetensors"):
            stale.unlink()

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, ds.input, **arch_kwargs)  # type: ignore[arg-type]
    prunable = {
        p for p, _ in prunable_layers(model, dense_first=cfg.dense_first, dense_last=cfg.dense_last)
    }
    scale_k = cfg.k if cfg.init_scale == "scaled" else None
    init_weights(model, init, seed=cfg.seed, scale_k=scale_k, prunable=prunable)
    if cfg.learn_bn and not norm_parameters(model):
        raise UsageError(
            f"--learn-bn: arch '{cfg.arch}' as configured has no affine normalisation layers"
        )
    method.prepare(model)
    fit(model, method, ds, cfg, run, reporter, phase="prune")
    method.finish(model)
    return write_ticket(model, ds, cfg, run, reporter, method_name=cfg.method)  # type: ignore[arg-type]


def write_ticket(
    model: torch.nn.Module,
    ds: Any,
    cfg: Any,
    run: Run,
    reporter: Reporter,
    *,
    method_name: str,
    parent: str | None = None,
) -> Result:
    """Save the ticket, measuring its accuracy on the model rebuilt from the ticket itself."""
    device = resolve_device(cfg.device)
    model.cpu()
    ticket = Ticket.from_model(
        model,
        arch=cfg.arch,
        arch_kwargs=cfg.arch_options,
        input=vars(ds.input),
        method=method_name,
        method_options=cfg.options,
        k=cfg.k,
        scope=cfg.scope,
        granularity=cfg.granularity,
        init={"scheme": cfg.init, "scale": cfg.init_scale, "seed": cfg.seed},
        dataset=cfg.dataset,
        config=configs.as_dict(cfg),
        parent=parent or "",
    )
    reporter.note("evaluating the ticket as saved")
    metrics = evaluate(ticket.build(device), ds, device)
    ticket.meta["metrics"] = metrics
    path = ticket.save(run.artifact("ticket.safetensors"))
    run.log({"phase": "ticket", "epoch": cfg.epochs, **metrics})
    run.append_result(
        {
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "run": run.root.name,
            "arch": cfg.arch,
            "method": method_name,
            "k": cfg.k,
            "dataset": cfg.dataset,
            "epochs": cfg.epochs,
            "seed": cfg.seed,
            "test_acc1": f"{metrics['test_acc1']:.2f}",
            "test_acc5": f"{metrics['test_acc5']:.2f}",
            "path": str(path),
        }
    )
    reporter.note(f"ticket: top-1 {metrics['test_acc1']:.2f}%  top-5 {metrics['test_acc5']:.2f}%")
    return Result("ticket", path, method_name, cfg.k, parent=parent, metrics=metrics)
