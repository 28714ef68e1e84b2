"""`ticketkit pretrain`: train a dense network; print the checkpoint's path."""

from __future__ import annotations

from typing import Annotated

import typer

from ticketkit.commands import _common as c
from ticketkit.runs.config import PretrainConfig
from ticketkit.specs import parse_assignments


@c.show_defaults(PretrainConfig, width=1.0)  # every built-in arch's
def pretrain(
    arch: Annotated[
        str | None, typer.Option("--arch", help="architecture (see `ticketkit plugins`)")
    ] = None,
    dataset: c.Dataset = None,
    data: c.Data = None,
    subset: c.Subset = None,
    workers: c.Workers = None,
    width: Annotated[
        float | None, typer.Option("--width", help="width multiplier of the arch")
    ] = None,
    arch_option: c.ArchOptions = None,
    init: Annotated[
        str | None, typer.Option("--init", help="weight init (default: the arch's own)")
    ] = None,
    epochs: c.Epochs = None,
    batch_size: c.BatchSize = None,
    optimizer: c.Optimizer = None,
    optimizer_option: c.OptimizerOptions = None,
    role_optimizer: c.RoleOptimizers = None,
    lr: c.Lr = None,
    momentum: c.Momentum = None,
    weight_decay: c.WeightDecay = None,
    schedule: c.Schedule = None,
    lr_steps: c.LrSteps = None,
    lr_gamma: c.LrGamma = None,
    warmup: c.Warmup = None,
    seed: c.Seed = None,
    device: c.Device = None,
    amp: c.Amp = None,
    eval_every: c.EvalEvery = None,
    name: c.Name = None,
    out: c.Out = None,
    config: c.ConfigFile = None,
    resume: c.Resume = None,
    force: c.Force = False,
    json_out: c.Json = False,
) -> None:
    """Train a dense network of any registered arch; print the checkpoint's path."""
    from ticketkit import jobs
    from ticketkit.runs import config as configs

    arch_options = parse_assignments(arch_option, "--arch-option")
    if width is not None:
        arch_options["width"] = width
    # no preset: the shipped presets are prune recipes
    cfg = c.resolve_config(
        locals(), configs.PretrainConfig, "pretrain", parsed={"arch_options": arch_options}
    )
    result = jobs.pretrain(cfg, c.Progress(), force=force)
    c.emit(result.record(), json_out)
