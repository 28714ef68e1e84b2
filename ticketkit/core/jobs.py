"""Jobs: what each command does, as plain functions of a config (no CLI here).

A job builds what the config names from the registry (or reads it from its input artifact),
hands it to the training loop, writes its artifact into the run directory and returns a
`Result`. Re-running a finished job returns the existing artifact (unless `force`); an
interrupted one resumes from its last checkpoint. Every artifact's recorded accuracy is measured
on the network rebuilt from the artifact itself, so `eval` reproduces it exactly.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ticketkit.core import config as configs
from ticketkit.core.artifacts import Bundle, Checkpoint
from ticketkit.core.data import Dataset, load_dataset, load_for
from ticketkit.core.model import arch_options, build_model, init_weights
from ticketkit.core.runs import Run
from ticketkit.core.sparsity import prunable_layers, sparsifier_of
from ticketkit.core.ticket import Ticket
from ticketkit.core.train import (
    OptimizerFactory,
    Reporter,
    Silent,
    bind,
    evaluate,
    fit,
    resolve_device,
)
from ticketkit.errors import UsageError
from ticketkit.masks import masked_layers
from ticketkit.plugin import Method, Setup, Stage, WeightMethod, norm_parameters
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


def _dataset_for(cfg: Any, parent: Bundle | None) -> Dataset:
    """The config's dataset (default: the parent's), checked against the parent's input shape."""
    if parent is None:
        return load_dataset(cfg.require_dataset(), cfg.data, cfg.subset)
    cfg.dataset = cfg.dataset or parent.meta["dataset"]
    return load_for(parent.input, cfg.dataset, cfg.data, cfg.subset)


def _finished(run: Run, config: str, artifact: str, force: bool, reporter: Reporter) -> Path | None:
    """The finished artifact if this exact run (`config`: its YAML) is done and not forced."""
    path = run.artifact(artifact)
    if not force and path.exists() and run.matches(config):
        reporter.note(f"reusing finished run {run.root} (--force recomputes)")
        return path
    return None


def _claim(run: Run, config: str, force: bool) -> None:
    """Take the run directory, once the model is built: a run that fails to set up (a width
    that leaves no channels, an option the method refuses) leaves no directory behind."""
    run.claim(config, force)
    if force:  # every stage's checkpoints and artifacts too
        for stale in (*run.checkpoints.rglob("*.safetensors"), *run.root.glob("stages/*/*")):
            stale.unlink()


def _finish(
    bundle: Bundle, ds: Dataset, cfg: Any, run: Run, reporter: Reporter, artifact: str, row: dict
) -> Path:
    """Measure the artifact as rebuilt from itself, save it, log it, add a results row (`row`:
    what only the caller knows, i.e. `command`; the rest comes from the config and the artifact)."""
    from ticketkit.core.results import result_row

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


def _reused(kind: str, path: Path, cls: type[Bundle]) -> Result:
    b = cls.read(path)
    k = float(b.meta["k"]) if "k" in b.meta else None
    return Result(
        kind,
        path,
        b.meta.get("method"),
        k,
        b.meta.get("parent") or None,
        b.meta["metrics"],
        b.meta.get("layers", {}),
        reused=True,
    )


def _ready(method: Method, model: torch.nn.Module, ds: Dataset, cfg: Any) -> None:
    """Bind the method's context, let it prepare the model, and build its optimizers once:
    all before the run directory is claimed, so a method or optimizer that cannot start
    leaves nothing behind."""
    bind(method, ds, cfg)
    method.prepare(model)
    if method.trains:
        method.optimizers(model, OptimizerFactory(cfg))


def _train(
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
        return _stopped(stages[0], record)
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
        stopped = _stopped(stage, record)
        _stage_artifact(model, ds, cfg, run, stage, stopped)
        info = {"stopped": stopped} if stopped else {}
        run.save_checkpoint(f"{stage.name}/end", model, {}, stage.epochs, info, method.state_dict())
    return stopped


def _stopped(stage: Stage, record: dict[str, Any]) -> dict[str, Any] | None:
    stopped = record.get("stopped")
    return {"stage": stage.name, **stopped} if stopped else None


def _stage_artifact(
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


class Finetune(WeightMethod):
    """Fine-tuning: the kept weights (and biases, BatchNorm) train under the ticket's masks."""

    def __init__(self, masks: dict[str, torch.Tensor], setup: Setup) -> None:
        super().__init__(None, setup)
        self._masks = masks

    def exclude(self, path: str, module: torch.nn.Module) -> bool:
        return path not in self._masks

    def choose_masks(self, model: torch.nn.Module) -> None:
        for layer in masked_layers(model):
            layer.set_mask(self._masks[layer.path])


# ---- pretrain ----------------------------------------------------------------------------------


def pretrain(
    cfg: configs.PretrainConfig, reporter: Reporter | None = None, force: bool = False
) -> Result:
    """Train a dense network of any registered arch; the artifact is a dense checkpoint."""
    reporter = reporter or Silent()
    ds = _dataset_for(cfg, None)
    if cfg.init is not None:
        get_initializer(cfg.init)
    cfg.arch_options = arch_options(cfg.arch, cfg.arch_options, {})  # type: ignore[arg-type]
    run = Run.for_config("pretrain", configs.as_dict(cfg), f"{cfg.arch}")
    config = configs.to_yaml(cfg)  # what the run is matched on, and writes when claimed
    done = _finished(run, config, "checkpoint.safetensors", force, reporter)
    if done is not None:
        return _reused("checkpoint", done, Checkpoint)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, ds.input, **cfg.arch_options)  # type: ignore[arg-type]
    if cfg.init is not None:
        init_weights(model, cfg.init, seed=cfg.seed)
    method = Method(None, Setup(k=1.0, epochs=cfg.epochs, seed=cfg.seed))
    _ready(method, model, ds, cfg)
    _claim(run, config, force)
    _train(model, method, ds, cfg, run, reporter, "pretrain")
    model.cpu()
    ckpt = Checkpoint.from_model(
        model,
        arch=cfg.arch,
        arch_kwargs=cfg.arch_options,
        input=vars(ds.input),
        dataset=cfg.dataset,
        config=configs.as_dict(cfg),
        parent="",
    )
    path = _finish(
        ckpt,
        ds,
        cfg,
        run,
        reporter,
        "checkpoint.safetensors",
        {"command": "pretrain"},
    )
    return Result("checkpoint", path, "dense", 1.0, None, ckpt.meta["metrics"])


# ---- prune -------------------------------------------------------------------------------------


def make_method(cfg: configs.PruneConfig, phase: str) -> Method:
    spec = get_method(cfg.method)  # type: ignore[arg-type]
    require_phase(spec, phase)
    cls = spec.load()
    options = spec.make_options(cfg.options)
    cfg.scope = cfg.scope or cls.default_scope
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
    return cls(options, setup)


def prune(
    cfg: configs.PruneConfig, reporter: Reporter | None = None, force: bool = False
) -> Result:
    """Find a ticket: in a random network, or in the dense checkpoint `cfg.input`."""
    reporter = reporter or Silent()
    method = make_method(cfg, "prune")
    parent = _prune_input(cfg, method)
    if not method.trains:
        if cfg.epochs:
            reporter.note(f"{cfg.method} is one-shot: --epochs is ignored (fine-tune afterwards)")
        cfg.epochs = 0
    ds = _dataset_for(cfg, parent)
    parent_id = parent.meta["payload_sha256"] if parent else None
    label = f"{cfg.arch}-{cfg.method}-k{cfg.k:g}"
    run = Run.for_config("prune", configs.as_dict(cfg), label, parent_id)
    config = configs.to_yaml(cfg)  # what the run is matched on, and writes when claimed
    done = _finished(run, config, "ticket.safetensors", force, reporter)
    if done is not None:
        return _reused("ticket", done, Ticket)
    torch.manual_seed(cfg.seed)
    model = parent.build("cpu").train() if parent else _random_network(cfg, ds)
    if cfg.learn_bn and not norm_parameters(model):
        raise UsageError(
            f"--learn-bn: arch '{cfg.arch}' as configured has no affine normalisation layers"
        )
    _ready(method, model, ds, cfg)
    _claim(run, config, force)
    init = {"scheme": cfg.init, "scale": cfg.init_scale, "seed": cfg.seed} if not parent else {}
    stopped = None
    if method.trains:
        stopped = _train(model, method, ds, cfg, run, reporter, "prune")
    method.finish(model)
    meta = {
        "arch": cfg.arch,
        "arch_kwargs": cfg.arch_options,
        "method": cfg.method,
        "method_options": cfg.options,
        "k": cfg.k,
        "scope": cfg.scope,
        "granularity": cfg.granularity,
        "command": "prune",
        "init": init,
        **({"stopped": stopped} if stopped else {}),
    }
    return _write_ticket(model, ds, cfg, run, reporter, parent=cfg.input, meta=meta)


def _prune_input(cfg: configs.PruneConfig, method: Method) -> Checkpoint | None:
    """Resolve what the method starts from, filling arch, arch options and init in `cfg`."""
    if method.source == "checkpoint":
        if cfg.input is None:
            raise UsageError(
                f"method '{cfg.method}' prunes a trained network: pass a dense checkpoint "
                f"(from `ticketkit pretrain`) as input"
            )
        parent = Checkpoint.read(cfg.input)
        if cfg.arch is not None and cfg.arch != parent.meta["arch"]:
            raise UsageError(
                f"--arch {cfg.arch} differs from the checkpoint's arch '{parent.meta['arch']}'"
            )
        cfg.arch, cfg.arch_options, cfg.init = parent.meta["arch"], parent.meta["arch_kwargs"], None
        return parent
    if cfg.input is not None:
        raise UsageError(f"method '{cfg.method}' starts from a random network; it takes no input")
    if cfg.arch is None:
        raise UsageError("no arch given: pass --arch")
    cfg.init = cfg.init or method.default_init
    get_initializer(cfg.init)  # unknown names fail before any work
    cfg.arch_options = arch_options(cfg.arch, cfg.arch_options, method.arch_options(), cfg.method)
    return None


def _random_network(cfg: configs.PruneConfig, ds: Dataset) -> torch.nn.Module:
    """The arch with its weights drawn from the configured init (scaled by k if asked)."""
    model = build_model(cfg.arch, ds.input, **cfg.arch_options)  # type: ignore[arg-type]
    layers = prunable_layers(model, dense_first=cfg.dense_first, dense_last=cfg.dense_last)
    scale_k = cfg.k if cfg.init_scale == "scaled" else None
    prunable = {path for path, _ in layers}
    init_weights(model, cfg.init, seed=cfg.seed, scale_k=scale_k, prunable=prunable)  # type: ignore[arg-type]
    return model


def _write_ticket(
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
    path = _finish(ticket, ds, cfg, run, reporter, "ticket.safetensors", row)
    return Result(
        "ticket",
        path,
        meta["method"],
        float(meta["k"]),
        parent,
        ticket.meta["metrics"],
        ticket.meta["layers"],
    )


# ---- finetune ----------------------------------------------------------------------------------


def finetune(
    cfg: configs.FinetuneConfig, reporter: Reporter | None = None, force: bool = False
) -> Result:
    """Train the kept weights of ticket `cfg.input` with its mask fixed (a values ticket)."""
    reporter = reporter or Silent()
    if cfg.input is None:
        raise UsageError("no ticket given to fine-tune")
    source = cfg.input
    parent = Ticket.read(source)
    k = float(parent.meta["k"])
    if cfg.k is not None and abs(cfg.k - k) > 1e-12:
        raise UsageError(
            f"--k {cfg.k:g} differs from the ticket's k = {k:g}; fine-tuning keeps the mask"
        )
    cfg.k = k
    ds = _dataset_for(cfg, parent)
    run = Run.for_config(
        "finetune",
        configs.as_dict(cfg),
        f"{parent.meta['arch']}-{parent.meta['method']}-k{k:g}",
        parent.meta["payload_sha256"],
    )
    config = configs.to_yaml(cfg)  # what the run is matched on, and writes when claimed
    done = _finished(run, config, "ticket.safetensors", force, reporter)
    if done is not None:
        return _reused("ticket", done, Ticket)
    torch.manual_seed(cfg.seed)
    model = parent.build("cpu").train()
    method = Finetune(parent.masks(), Setup(k=k, epochs=cfg.epochs, seed=cfg.seed))
    _ready(method, model, ds, cfg)
    _claim(run, config, force)
    _train(model, method, ds, cfg, run, reporter, "finetune")
    keep = ("arch", "arch_kwargs", "method", "method_options", "k", "scope", "granularity", "init")
    return _write_ticket(
        model,
        ds,
        cfg,
        run,
        reporter,
        parent=str(source),
        meta={**{key: parent.meta[key] for key in keep}, "command": "finetune"},
    )
