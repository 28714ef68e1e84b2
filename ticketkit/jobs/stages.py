"""Training a method through its stages: ready before the run directory is claimed, then every
stage in order, resumed at the first unfinished one, each with its own artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ticketkit.artifacts.bundle import Checkpoint
from ticketkit.artifacts.ticket import Ticket
from ticketkit.masks.sparsifier import sparsifier_of
from ticketkit.plugin import Method, Stage
from ticketkit.runs import config as configs
from ticketkit.runs.directory import Run
from ticketkit.training.data import Dataset
from ticketkit.training.loop import (
    OptimizerFactory,
    Reporter,
    bind,
    evaluate,
    fit,
    resolve_device,
)
from ticketkit.training.precision import check as check_amp


def ready(
    method: Method, model: torch.nn.Module, ds: Dataset, cfg: Any, resuming: bool = False
) -> None:
    """Bind the method's context, let it prepare the model, and build its optimizers once:
    all before the run directory is claimed, so a method or optimizer that cannot start
    leaves nothing behind. `resuming`: a checkpoint will replace what `prepare` sets."""
    bind(method, ds, cfg)
    method.ctx.resuming = resuming
    check_amp(getattr(cfg, "amp", None), method)  # fp16: its step
    method.prepare(model)
    if getattr(cfg, "psg", False):  # after the masks: the masked layers' backward becomes PSG's
        from ticketkit.masks import masked_layers
        from ticketkit.training.psg import attach_psg, psg_options

        layers = [(layer.path, layer.module) for layer in masked_layers(model)]
        attach_psg(layers, psg_options(cfg.psg_options))
    if method.trains:
        method.optimizers(model, OptimizerFactory(cfg))


def train_stages(
    model: torch.nn.Module,
    method: Method,
    ds: Dataset,
    cfg: Any,
    run: Run,
    reporter: Reporter,
    phase: str,
) -> dict[str, Any] | None:
    """Train every stage of the method, resuming at the first unfinished one; returns where
    the method stopped the last stage early ({stage, epoch, reason}), if it did.

    A stage of a several-stage run is finished once its end state (model and method, no
    optimizer: the next stage starts fresh ones) is saved as `checkpoints/<stage>/end`, right
    after its artifact `stages/<stage>/ticket.safetensors`; a resumed run loads the end state
    of the last finished stage and redoes none of them.
    """
    stages = method.stages()
    if len(stages) == 1:
        record = fit(model, method, ds, cfg, run, reporter, phase=phase, stage=stages[0])
        return stopped_at(stages[0], record)
    finished = 0
    while finished < len(stages) and run.has_checkpoint(f"{stages[finished].name}/end"):
        finished += 1
    if finished:
        run.load_checkpoint(f"{stages[finished - 1].name}/end", model, {}, method)
        reporter.note(f"stages done: {', '.join(s.name for s in stages[:finished])}")
    stopped = None
    for stage in stages[finished:]:
        method.begin_stage(stage, model)
        record = fit(model, method, ds, cfg, run, reporter, phase=phase, stage=stage)
        method.end_stage(stage, model)
        stopped = stopped_at(stage, record)
        stage_artifact(model, ds, cfg, run, stage, stopped)
        info = {"stopped": stopped} if stopped else {}
        run.save_checkpoint(f"{stage.name}/end", model, {}, stage.epochs, info, method.state_dict())
    return stopped


def stopped_at(stage: Stage, record: dict[str, Any]) -> dict[str, Any] | None:
    stopped = record.get("stopped")
    return {"stage": stage.name, **stopped} if stopped else None


def stage_artifact(
    model: torch.nn.Module,
    ds: Dataset,
    cfg: Any,
    run: Run,
    stage: Stage,
    stopped: dict[str, Any] | None,
) -> Path:
    """A stage's own artifact: a ticket of the masked model, measured as rebuilt from itself
    (or a dense checkpoint when the model has no masks)."""
    device = resolve_device(cfg.device)
    meta = {
        "arch": cfg.arch,
        "arch_kwargs": cfg.arch_options,
        "input": vars(ds.input),
        "dataset": cfg.dataset,
        "method": getattr(cfg, "method", None) or "dense",
        "k": getattr(cfg, "k", 1.0),
        "stage": stage.name,
        "config": configs.as_dict(cfg),
        **({"stopped": stopped} if stopped else {}),
    }
    training = model.training
    kind = Ticket if sparsifier_of(model) is not None else Checkpoint
    bundle = kind.from_model(model, **meta)
    bundle.meta["metrics"] = evaluate(bundle.build(device), ds, device)  # type: ignore[attr-defined]
    model.train(training)
    path = run.root / "stages" / stage.name / f"{kind.__name__.lower()}.safetensors"
    return bundle.save(path)
