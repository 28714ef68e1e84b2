"""What every job shares: the `Result` a command prints, finding and claiming the run
directory, measuring and saving the artifact as rebuilt from itself, and the results row."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ticketkit.artifacts.bundle import Bundle
from ticketkit.artifacts.ticket import Ticket
from ticketkit.runs import config as configs
from ticketkit.runs.directory import Run
from ticketkit.training import distributed
from ticketkit.training.data import Dataset, load_dataset, load_for
from ticketkit.training.loop import (
    Reporter,
    Silent,
    evaluate,
    resolve_device,
)


@dataclass
class Result:
    """What a command prints: the artifact path, or this record as JSON with --json."""

    kind: str
    path: Path
    method: str | None = None
    k: float | None = None
    parent: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, Any] = field(default_factory=dict)
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


# ---- shared steps ------------------------------------------------------------------------------


def dataset_for(cfg: Any, parent: Bundle | None) -> Dataset:
    """The config's dataset (default: the parent's), checked against the parent's input shape."""
    workers = getattr(cfg, "workers", 0)  # DataLoader processes of a streamed set
    if parent is None:
        return load_dataset(cfg.require_dataset(), cfg.data, cfg.subset, workers)
    cfg.dataset = cfg.dataset or parent.meta["dataset"]
    return load_for(parent.input, cfg.dataset, cfg.data, cfg.subset, workers)


def finished_run(
    run: Run, config: str, artifact: str, force: bool, reporter: Reporter
) -> Path | None:
    """The finished artifact if this exact run (`config`: its YAML) is done and not forced."""
    path = run.artifact(artifact)
    if not force and path.exists() and run.matches(config):
        reporter.note(f"reusing finished run {run.root} (--force recomputes)")
        return path
    return None


def claim(
    run: Run,
    config: str,
    force: bool,
    artifact: str | None = None,
    reporter: Reporter | None = None,
) -> Path | None:
    """Take the run directory, once the model is built: a run that fails to set up (a width
    that leaves no channels, an option the method refuses) leaves no directory behind.

    The directory stays locked until the job calls `run.release()` (in a `finally`), so an
    identical command started meanwhile is refused with the holder's name. That command may
    also arrive just after this one finished: with `artifact`, the finished artifact found
    once the lock is held is returned (and the lock given back) instead of training again.
    Under torchrun rank 0 alone claims; every rank gets its answer (`distributed.on_main`).
    """
    return distributed.on_main(lambda: _claim(run, config, force, artifact, reporter))


def _claim(
    run: Run, config: str, force: bool, artifact: str | None, reporter: Reporter | None
) -> Path | None:
    run.claim(config, force)
    if artifact is not None:
        done = finished_run(run, config, artifact, force, reporter or Silent())
        if done is not None:
            run.release()
            return done
    if force:  # every stage's checkpoints and artifacts too
        for stale in (*run.checkpoints.rglob("*.safetensors"), *run.root.glob("stages/*/*")):
            stale.unlink()
    return None


def finish(
    bundle: Bundle, ds: Dataset, cfg: Any, run: Run, reporter: Reporter, artifact: str, row: dict
) -> Path:
    """Measure the artifact as rebuilt from itself, save it, log it, add a results row (`row`:
    what only the caller knows, i.e. `command`; the rest comes from the config and the artifact)."""
    from ticketkit.runs.results import result_row

    device = resolve_device(cfg.device)
    reporter.note("evaluating the artifact as saved")
    metrics = evaluate(bundle.build(device), ds, device)  # type: ignore[attr-defined]
    bundle.meta["metrics"] = metrics
    path = bundle.save(run.artifact(artifact))
    run.log({"phase": "final", "epoch": cfg.epochs, **metrics})
    finished = datetime.datetime.now()
    run.append_result(result_row(cfg, bundle.meta, run, path, finished=finished, **row))
    reporter.note(f"top-1 {metrics['test_acc1']:.2f}%  top-5 {metrics['test_acc5']:.2f}%")
    return path


def reused(kind: str, path: Path, cls: type[Bundle]) -> Result:
    """The record of a finished artifact, as the job that made it printed it (and as `eval`
    describes it): a dense checkpoint, which records no method or k, is method "dense", k 1."""
    b = cls.read(path)
    return Result(
        kind,
        path,
        b.meta.get("method") or "dense",
        float(b.meta.get("k", 1.0)),
        b.meta.get("parent") or None,
        b.meta["metrics"],
        b.meta.get("layers", {}),
        reused=True,
    )


def write_ticket(
    model: torch.nn.Module,
    ds: Dataset,
    cfg: Any,
    run: Run,
    reporter: Reporter,
    *,
    parent: str | None,
    meta: dict[str, Any],
) -> Result:
    model.cpu()
    ticket = Ticket.from_model(
        model,
        input=vars(ds.input),
        dataset=cfg.dataset,
        config=configs.as_dict(cfg),
        parent=parent or "",
        **meta,
    )
    row = {"command": meta["command"]}
    path = finish(ticket, ds, cfg, run, reporter, "ticket.safetensors", row)
    return Result(
        "ticket",
        path,
        meta["method"],
        float(meta["k"]),
        parent,
        ticket.meta["metrics"],
        ticket.meta["layers"],
    )
