"""`ticketkit finetune`: train a ticket's kept weights with its mask fixed."""

from __future__ import annotations

from typing import Annotated

import typer

from ticketkit.commands import _common as c
from ticketkit.runs.config import FinetuneConfig
from ticketkit.specs import parse_assignments


@c.show_defaults(FinetuneConfig)
def finetune(
    ticket: c.Input = None,
    k: Annotated[
        float | None, typer.Option("--k", help="must equal the ticket's k (a guard)")
    ] = None,
    dataset: c.Dataset = None,
    data: c.Data = None,
    subset: c.Subset = None,
    workers: c.Workers = None,
    epochs: c.Epochs = None,
    batch_size: c.BatchSize = None,
    optimizer: c.Optimizer = None,
    optimizer_option: c.OptimizerOptions = None,
    role_optimizer: c.RoleOptimizers = None,
    psg: c.Psg = None,
    psg_option: c.PsgOptions = None,
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
    """Fine-tune the kept weights of a ticket (mask fixed); print the new ticket's path."""
    from ticketkit import jobs
    from ticketkit.runs import config as configs

    # no preset: the shipped presets are prune recipes
    cfg = c.resolve_config(
        locals(),
        configs.FinetuneConfig,
        "finetune",
        parsed={"psg_options": parse_assignments(psg_option, "--psg-option")},
    )
    if cfg.k is not None:
        configs.check_k(cfg.k)
    cfg.input = c.read_input(ticket, "ticket", cfg.input)
    result = jobs.finetune(cfg, c.Progress(), force=force)
    c.show_layers(result)
    c.emit(result.record(), json_out)
