"""`ticketkit rewire`: dynamic sparse training. The network of `--arch` (a random init, or the
dense checkpoint given as argument) is sparse from its first step to its last, weights and
masks trained together; the method (static, set, dsr, gmp, ...) chooses the initial masks and
updates them while training. stdout: the ticket's path (or one JSON record); stderr: progress
and the ticket's per-layer table.

The checkpoint is an argument (a path, or `-` for stdin), `input:` in a config file, or, when
no `--arch` is given, piped on stdin (DESIGN.md's chaining); with `--arch` and no argument the
command starts from a random init and never reads stdin.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ticketkit.commands import _common as c
from ticketkit.runs.config import RewireConfig
from ticketkit.specs import parse_assignments


@c.show_defaults(RewireConfig, width=1.0)
def rewire(
    checkpoint: Annotated[
        str | None,
        typer.Argument(
            help="dense checkpoint to start from (a path, or '-' for stdin); default: --arch "
            "at a random init",
            show_default=False,
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option("--method", "-m", help="sparse training method: static, set, gmp, ..."),
    ] = None,
    arch: Annotated[
        str | None, typer.Option("--arch", help="architecture (see `ticketkit plugins`)")
    ] = None,
    k: Annotated[
        float | None,
        typer.Option("--k", help="fraction of prunable weights kept, 0 < k <= 1 (the budget)"),
    ] = None,
    density: Annotated[
        str | None,
        typer.Option("--density", help="initial per-layer densities: uniform, or erk (RigL's)"),
    ] = None,
    dataset: c.Dataset = None,
    data: c.Data = None,
    subset: c.Subset = None,
    workers: c.Workers = None,
    init: Annotated[
        str | None,
        typer.Option("--init", help="weight init: kaiming-normal, ... (default: the method's)"),
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
    dense_shortcuts: Annotated[
        bool | None,
        typer.Option(
            "--dense-shortcuts/--prune-shortcuts",
            help="leave 1x1 shortcut convs (resnet downsample, wrn shortcut) unpruned",
        ),
    ] = None,
    option: c.Options = None,
    arch_option: c.ArchOptions = None,
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
    """Train a network sparse from the first step (masks rewired by the method), from a random
    init or a dense checkpoint; print its ticket's path."""
    from ticketkit import jobs
    from ticketkit.runs import config as configs

    arch_options = parse_assignments(arch_option, "--arch-option")
    if width is not None:
        arch_options["width"] = width
    cfg = c.resolve_config(
        locals(),
        configs.RewireConfig,
        "rewire",
        parsed={"options": parse_assignments(option, "--option"), "arch_options": arch_options},
        method_defaults=True,
    )
    if checkpoint is not None:
        cfg.input = c.read_input(checkpoint, "dense checkpoint")
    elif cfg.input is None and cfg.arch is None and not sys.stdin.isatty():
        # no network named: a piped one (`ticketkit pretrain ... | ticketkit rewire ...`); with
        # --arch, stdin is never read, so a script with a closed stdin still runs
        cfg.input = c.read_input(None, "dense checkpoint to start from (nor --arch)")
    result = jobs.rewire(cfg, c.Progress(), force=force)
    c.show_layers(result)
    c.emit(result.record(), json_out)
