"""`ticketkit prune`: find a ticket and print its path.

Methods that start from a random network (edgepopup, biprop) take no input; methods that prune
a trained network (magnitude, hydra, bip) take a dense checkpoint as argument or on stdin.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ticketkit.commands import _common as c
from ticketkit.runs.config import PruneConfig
from ticketkit.specs import parse_assignments


@c.show_defaults(PruneConfig, width=1.0, binary_act=False)  # every built-in arch's
def prune(
    checkpoint: c.Input = None,
    method: Annotated[
        str | None,
        typer.Option("--method", "-m", help="pruning method (see `ticketkit plugins`)"),
    ] = None,
    arch: Annotated[
        str | None, typer.Option("--arch", help="architecture (see `ticketkit plugins`)")
    ] = None,
    k: Annotated[
        float | None, typer.Option("--k", help="fraction of weights kept, 0 < k <= 1")
    ] = None,
    dataset: c.Dataset = None,
    data: c.Data = None,
    subset: c.Subset = None,
    workers: c.Workers = None,
    scope: Annotated[
        str | None, typer.Option("--scope", help="layer: k per layer; global: one threshold")
    ] = None,
    granularity: Annotated[
        str | None, typer.Option("--granularity", help="unstructured, filter or channel")
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="weight init: kaiming-normal, signed-constant, ... (default: the method's)",
        ),
    ] = None,
    init_scale: Annotated[
        str | None, typer.Option("--init-scale", help="scaled (fan_in * k) or unscaled")
    ] = None,
    learn_bn: Annotated[
        bool | None,
        typer.Option(
            "--learn-bn/--no-learn-bn", help="affine BatchNorm, trained with the scores (+BN)"
        ),
    ] = None,
    binary_act: Annotated[
        bool | None,
        typer.Option("--binary-act/--no-binary-act", help="binary activations (MPT-1/1)"),
    ] = None,
    width: Annotated[
        float | None, typer.Option("--width", help="width multiplier of the arch")
    ] = None,
    dense_first: Annotated[
        bool | None,
        typer.Option("--dense-first/--prune-first", help="leave the first layer unpruned"),
    ] = None,
    dense_last: Annotated[
        bool | None,
        typer.Option("--dense-last/--prune-last", help="leave the last layer unpruned"),
    ] = None,
    option: c.Options = None,
    arch_option: c.ArchOptions = None,
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
    preset: c.Preset = None,
    resume: c.Resume = None,
    force: c.Force = False,
    json_out: c.Json = False,
) -> None:
    """Find a ticket (in a random network, or in a dense checkpoint); print its path."""
    from ticketkit import jobs, registry
    from ticketkit.runs import config as configs

    arch_options = parse_assignments(arch_option, "--arch-option")
    arch_options.update(
        {
            key: value
            for key, value in (("width", width), ("binary_act", binary_act))
            if value is not None
        }
    )
    cfg = c.resolve_config(
        locals(),
        configs.PruneConfig,
        "prune",
        parsed={
            "options": parse_assignments(option, "--option"),
            "arch_options": arch_options,
            "psg_options": parse_assignments(psg_option, "--psg-option"),
        },
        preset=preset,
        method_defaults=True,
    )
    if registry.get_method(cfg.method).load().source == "checkpoint":  # type: ignore[arg-type]
        cfg.input = c.read_input(checkpoint, "dense checkpoint", cfg.input)
    elif checkpoint is not None:
        cfg.input = checkpoint  # the job explains why this method takes no input
    result = jobs.prune(cfg, c.Progress(), force=force)
    c.show_layers(result)
    c.emit(result.record(), json_out)
