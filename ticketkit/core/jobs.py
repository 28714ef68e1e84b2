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
from ticketkit.core.rules import Fixed
from ticketkit.core.runs import Run
from ticketkit.core.sparsity import Sparsifier, prunable_layers
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
    if force:
        for stale in run.checkpoints.glob("*.safetensors"):
            stale.unlink()


def _finish(
    bundle: Bundle, ds: Dataset, cfg: Any, run: Run, reporter: Reporter, artifact: str, row: dict
) -> Path:
    """Measure the artifact as rebuilt from itself, save it, log it, add a results row."""
    device = resolve_device(cfg.device)
    reporter.note("evaluating the artifact as saved")
    metrics = evaluate(bundle.build(device), ds, device)  # type: ignore[attr-defined]
    bundle.meta["metrics"] = metrics
    path = bundle.save(run.artifact(artifact))
    run.log({"phase": "final", "epoch": cfg.epochs, **metrics})
    run.append_result(
        {
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "run": run.root.name,
            **row,
            "dataset": cfg.dataset,
            "epochs": cfg.epochs,
            "seed": cfg.seed,
            "test_acc1": f"{metrics['test_acc1']:.2f}",
            "test_acc5": f"{metrics['test_acc5']:.2f}",
            "path": str(path),
        }
    )
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
    _claim(run, config, force)
    fit(
        model,
        Method(None, Setup(k=1.0, epochs=cfg.epochs, seed=cfg.seed)),
        ds,
        cfg,
        run,
        reporter,
        phase="pretrain",
    )
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
        {"arch": cfg.arch, "method": "dense", "k": 1.0},
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
    method.prepare(model)
    _claim(run, config, force)
    if method.trains:
        fit(model, method, ds, cfg, run, reporter, phase="prune")
    method.finish(model)
    init = {"scheme": cfg.init, "scale": cfg.init_scale, "seed": cfg.seed} if not parent else {}
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
    cfg.arch_options = arch_options(cfg.arch, cfg.arch_options, method.arch_options())
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
    row = {key: meta[key] for key in ("arch", "method", "k", "command")}
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
    masks = parent.masks()
    sparsifier = Sparsifier.attach(
        model, Fixed(), scores=False, exclude=lambda path, _: path not in masks
    )
    with torch.no_grad():
        for layer in sparsifier.layers:
            layer.mask.copy_(masks[layer.path])
    for p in model.parameters():
        p.requires_grad_(True)
    _claim(run, config, force)
    fit(
        model,
        Method(None, Setup(k=k, epochs=cfg.epochs, seed=cfg.seed)),
        ds,
        cfg,
        run,
        reporter,
        phase="finetune",
    )
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
