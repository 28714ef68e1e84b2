"""`ticketkit prune`: find a ticket in a random network or in a dense checkpoint."""

from __future__ import annotations

import torch

from ticketkit.artifacts.bundle import Checkpoint
from ticketkit.artifacts.ticket import Ticket
from ticketkit.errors import UsageError
from ticketkit.jobs.common import (
    Result,
    claim,
    dataset_for,
    finished_run,
    reused,
    write_ticket,
)
from ticketkit.jobs.stages import ready, train_stages
from ticketkit.masks.channels import hold_empty_channels, zero_empty_channels
from ticketkit.masks.sparsifier import prunable_layers
from ticketkit.models import arch_options, build_model, init_weights
from ticketkit.plugin import Method, Setup, norm_parameters
from ticketkit.registry import get_initializer, get_method, require_phase
from ticketkit.runs import config as configs
from ticketkit.runs.directory import Run
from ticketkit.training.data import Dataset
from ticketkit.training.loop import (
    Reporter,
    Silent,
)

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
    ds = dataset_for(cfg, parent)
    parent_id = parent.meta["payload_sha256"] if parent else None
    label = f"{cfg.arch}-{cfg.method}-k{cfg.k:g}"
    run = Run.for_config("prune", configs.as_dict(cfg), label, parent_id)
    config = configs.to_yaml(cfg)  # what the run is matched on, and writes when claimed
    done = finished_run(run, config, "ticket.safetensors", force, reporter)
    if done is not None:
        return reused("ticket", done, Ticket)
    torch.manual_seed(cfg.seed)
    model = parent.build("cpu").train() if parent else _random_network(cfg, ds)
    if cfg.learn_bn and not norm_parameters(model):
        raise UsageError(
            f"--learn-bn: arch '{cfg.arch}' as configured has no affine normalisation layers"
            + _option_adding_norms(cfg, ds)
        )
    resuming = not force and any(run.checkpoints.rglob("last.safetensors"))
    ready(method, model, ds, cfg, resuming)
    # a filter ticket's empty filters take their BatchNorm channel with them (masks/channels.py)
    empty = hold_empty_channels(model, example(ds)) if cfg.granularity == "filter" else []
    done = claim(run, config, force, "ticket.safetensors", reporter)
    if done is not None:  # finished by an identical command while this one set up
        return reused("ticket", done, Ticket)
    try:
        init = {"scheme": cfg.init, "scale": cfg.init_scale, "seed": cfg.seed} if not parent else {}
        stopped = None
        if method.trains:
            stopped = train_stages(model, method, ds, cfg, run, reporter, "prune")
        method.finish(model)
        zero_empty_channels(model, empty)
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
        return write_ticket(model, ds, cfg, run, reporter, parent=cfg.input, meta=meta)
    finally:
        run.release()


def example(ds: Dataset) -> torch.Tensor:
    """Two blank inputs of the dataset's shape: enough to see which module feeds which."""
    spec = ds.input
    return torch.zeros(2, spec.channels, spec.height, spec.width)


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


def _option_adding_norms(cfg: configs.PruneConfig, ds: Dataset) -> str:
    """ "; --binary-act adds them" when turning on one of the arch's switched-off boolean
    options gives the network affine normalisation layers (the conv nets and the mlp have
    BatchNorm only in their binary-activation variant), else "". Found by building the
    variants rather than from a list, so a plugin arch gets the same hint."""
    for key, value in cfg.arch_options.items():
        if value is not False:
            continue
        try:
            variant = build_model(cfg.arch, ds.input, **{**cfg.arch_options, key: True})  # type: ignore[arg-type]
        except UsageError:
            continue
        if norm_parameters(variant):
            flag = "--binary-act" if key == "binary_act" else f"-A {key}=true"
            return f"; {flag} adds them"
    return ""


def _random_network(cfg: configs.PruneConfig, ds: Dataset) -> torch.nn.Module:
    """The arch with its weights drawn from the configured init (scaled by k if asked)."""
    model = build_model(cfg.arch, ds.input, **cfg.arch_options)  # type: ignore[arg-type]
    layers = prunable_layers(model, dense_first=cfg.dense_first, dense_last=cfg.dense_last)
    scale_k = cfg.k if cfg.init_scale == "scaled" else None
    prunable = {path for path, _ in layers}
    init_weights(model, cfg.init, seed=cfg.seed, scale_k=scale_k, prunable=prunable)  # type: ignore[arg-type]
    return model
