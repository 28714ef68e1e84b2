"""`ticketkit pretrain`: train a dense network of any registered arch."""

from __future__ import annotations

import torch

from ticketkit.artifacts.bundle import Checkpoint
from ticketkit.jobs.common import (
    Result,
    claim,
    dataset_for,
    finish,
    finished_run,
    reused,
)
from ticketkit.jobs.stages import ready, train_stages
from ticketkit.models import arch_options, build_model, init_weights
from ticketkit.plugin import Method, Setup
from ticketkit.registry import get_initializer
from ticketkit.runs import config as configs
from ticketkit.runs.directory import Run
from ticketkit.training.loop import (
    Reporter,
    Silent,
)


def pretrain(
    cfg: configs.PretrainConfig, reporter: Reporter | None = None, force: bool = False
) -> Result:
    """Train a dense network of any registered arch; the artifact is a dense checkpoint."""
    reporter = reporter or Silent()
    ds = dataset_for(cfg, None)
    if cfg.init is not None:
        get_initializer(cfg.init)
    cfg.arch_options = arch_options(cfg.arch, cfg.arch_options, {})  # type: ignore[arg-type]
    run = Run.for_config("pretrain", configs.as_dict(cfg), f"{cfg.arch}")
    config = configs.to_yaml(cfg)  # what the run is matched on, and writes when claimed
    done = finished_run(run, config, "checkpoint.safetensors", force, reporter)
    if done is not None:
        return reused("checkpoint", done, Checkpoint)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, ds.input, **cfg.arch_options)  # type: ignore[arg-type]
    if cfg.init is not None:
        init_weights(model, cfg.init, seed=cfg.seed)
    method = Method(None, Setup(k=1.0, epochs=cfg.epochs, seed=cfg.seed))
    ready(method, model, ds, cfg)
    done = claim(run, config, force, "checkpoint.safetensors", reporter)
    if done is not None:  # finished by an identical command while this one set up
        return reused("checkpoint", done, Checkpoint)
    try:
        train_stages(model, method, ds, cfg, run, reporter, "pretrain")
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
        path = finish(
            ckpt,
            ds,
            cfg,
            run,
            reporter,
            "checkpoint.safetensors",
            {"command": "pretrain"},
        )
        return Result("checkpoint", path, "dense", 1.0, None, ckpt.meta["metrics"])
    finally:
        run.release()
