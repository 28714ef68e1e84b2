"""`ticketkit rewire`: sparse training from a random init, the masks updated while the weights
train by a method of phase "rewire" (static, SET, DSR, gradual magnitude pruning).

The job is `find-ticket`'s shape without levels: build the random network of `--arch` (or load
the dense checkpoint `cfg.input`, as `prune` does for its trained-network methods: the arch,
its options and the default dataset are the checkpoint's), let the method choose the initial
masks (`WeightMethod.choose_masks`; kept weights keep the checkpoint's values) and update them
in `after_step`, train every stage through the engine (checkpoints, resume bit for bit), and
write a ticket with values. Each epoch's per-layer densities and the fraction of the masks
that changed are in `metrics.jsonl` (the training loop's `MaskWatch`).
"""

from __future__ import annotations

import torch

from ticketkit.artifacts.bundle import Checkpoint
from ticketkit.artifacts.ticket import Ticket
from ticketkit.errors import UsageError
from ticketkit.jobs.common import Result, claim, dataset_for, finished_run, reused, write_ticket
from ticketkit.jobs.stages import ready, train_stages
from ticketkit.models import arch_options, build_model, init_weights
from ticketkit.plugin import Method, Setup
from ticketkit.plugins.methods.rewire import is_shortcut
from ticketkit.registry import get_initializer, get_method, require_phase
from ticketkit.runs import config as configs
from ticketkit.runs.directory import Run
from ticketkit.training.data import Dataset
from ticketkit.training.loop import Reporter, Silent

PHASE = "rewire"


def make_method(cfg: configs.RewireConfig, parent: Checkpoint | None = None) -> Method:
    """The method, its defaults (init, arch options) filled into `cfg` before hashing. With a
    checkpoint `--init` is only what `-o regrow=init` draws from."""
    spec = get_method(cfg.method)  # type: ignore[arg-type]
    require_phase(spec, PHASE)
    cls = spec.load()
    cfg.init = cfg.init or cls.default_init
    get_initializer(cfg.init)  # an unknown name fails before any work
    setup = Setup(
        k=cfg.k,  # type: ignore[arg-type]
        scope=cls.default_scope,
        dense_first=cfg.dense_first,
        dense_last=cfg.dense_last,
        epochs=cfg.epochs,
        seed=cfg.seed,
        init=cfg.init,
        density=cfg.density,
        dense_shortcuts=cfg.dense_shortcuts,
    )
    method = cls(spec.make_options(cfg.options), setup)
    # what the method forces on the arch, checked as `prune` checks it
    cfg.arch_options = arch_options(cfg.arch, cfg.arch_options, method.arch_options(), cfg.method)  # type: ignore[arg-type]
    if parent is not None and cfg.arch_options != parent.meta["arch_kwargs"]:
        raise UsageError(
            f"method '{cfg.method}' needs arch options {cfg.arch_options}, but the checkpoint's "
            f"network was built with {parent.meta['arch_kwargs']}"
        )
    return method


def _read_input(cfg: configs.RewireConfig) -> Checkpoint | None:
    """The dense checkpoint to start from, if any; its arch and options fill `cfg`."""
    if cfg.input is None:
        if cfg.arch is None:
            raise UsageError("no arch given: pass --arch (or a dense checkpoint to start from)")
        return None
    parent = Checkpoint.read(cfg.input)
    if cfg.arch is not None and cfg.arch != parent.meta["arch"]:
        raise UsageError(
            f"--arch {cfg.arch} differs from the checkpoint's arch '{parent.meta['arch']}'"
        )
    if cfg.arch_options and cfg.arch_options != parent.meta["arch_kwargs"]:
        raise UsageError(
            f"arch options {cfg.arch_options} differ from the checkpoint's "
            f"{parent.meta['arch_kwargs']}; its network is rebuilt as it was trained"
        )
    cfg.arch, cfg.arch_options = parent.meta["arch"], dict(parent.meta["arch_kwargs"])
    return parent


def rewire(
    cfg: configs.RewireConfig, reporter: Reporter | None = None, force: bool = False
) -> Result:
    """Train the network sparse from the first step to the last; the result is its ticket."""
    reporter = reporter or Silent()
    get_method(cfg.method)  # type: ignore[arg-type]  # an unknown method before a bad file
    parent = _read_input(cfg)
    method = make_method(cfg, parent)
    ds = dataset_for(cfg, parent)
    parent_id = parent.meta["payload_sha256"] if parent else None
    label = f"{cfg.arch}-{cfg.method}-k{cfg.k:g}"
    run = Run.for_config(PHASE, configs.as_dict(cfg), label, parent_id)
    config = configs.to_yaml(cfg)  # what the run is matched on, and writes when claimed
    done = finished_run(run, config, "ticket.safetensors", force, reporter)
    if done is not None:
        return reused("ticket", done, Ticket)
    torch.manual_seed(cfg.seed)
    model = parent.build("cpu").train() if parent else _random_network(cfg, ds)
    if cfg.dense_shortcuts and not any(
        is_shortcut(path, module) for path, module in model.named_modules()
    ):
        reporter.note(f"--dense-shortcuts: arch '{cfg.arch}' has no 1x1 shortcut convs")
    ready(method, model, ds, cfg)
    done = claim(run, config, force, "ticket.safetensors", reporter)
    if done is not None:  # finished by an identical command while this one set up
        return reused("ticket", done, Ticket)
    try:
        stopped = train_stages(model, method, ds, cfg, run, reporter, PHASE)
        method.finish(model)
        # per-layer counts are fixed (layer) unless ERK or the method moves weights (global)
        per_layer = cfg.density == "uniform" and method.setup.scope == "layer"
        meta = {
            "arch": cfg.arch,
            "arch_kwargs": cfg.arch_options,
            "method": cfg.method,
            "method_options": cfg.options,
            "k": cfg.k,
            "scope": "layer" if per_layer else "global",
            "granularity": "unstructured",
            "density": cfg.density,
            "command": PHASE,
            "init": {} if parent else {"scheme": cfg.init, "scale": "unscaled", "seed": cfg.seed},
            **({"stopped": stopped} if stopped else {}),
        }
        return write_ticket(model, ds, cfg, run, reporter, parent=cfg.input, meta=meta)
    finally:
        run.release()


def _random_network(cfg: configs.RewireConfig, ds: Dataset) -> torch.nn.Module:
    """The arch with every Conv/Linear weight drawn from `--init`, unscaled: the weights train
    (He init on the dense shape, as the DSR and RigL code)."""
    model = build_model(cfg.arch, ds.input, **cfg.arch_options)  # type: ignore[arg-type]
    init_weights(model, cfg.init, seed=cfg.seed)  # type: ignore[arg-type]
    return model
