"""`ticketkit finetune`: train a ticket's kept weights with its masks fixed."""

from __future__ import annotations

import torch

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
from ticketkit.jobs.prune import example
from ticketkit.jobs.stages import ready, train_stages
from ticketkit.masks import masked_layers
from ticketkit.masks.channels import hold_empty_channels, zero_empty_channels
from ticketkit.plugin import Setup, WeightMethod
from ticketkit.runs import config as configs
from ticketkit.runs.directory import Run
from ticketkit.training.loop import (
    Reporter,
    Silent,
)


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
    ds = dataset_for(cfg, parent)
    run = Run.for_config(
        "finetune",
        configs.as_dict(cfg),
        f"{parent.meta['arch']}-{parent.meta['method']}-k{k:g}",
        parent.meta["payload_sha256"],
    )
    config = configs.to_yaml(cfg)  # what the run is matched on, and writes when claimed
    done = finished_run(run, config, "ticket.safetensors", force, reporter)
    if done is not None:
        return reused("ticket", done, Ticket)
    torch.manual_seed(cfg.seed)
    model = parent.build("cpu").train()
    method = Finetune(parent.masks(), Setup(k=k, epochs=cfg.epochs, seed=cfg.seed))
    ready(method, model, ds, cfg)  # with --psg, the masked layers' backward becomes PSG's
    # the parent's empty filters keep their BatchNorm channels at 0 (masks/channels.py)
    filters = parent.meta.get("granularity") == "filter"
    empty = hold_empty_channels(model, example(ds)) if filters else []
    done = claim(run, config, force, "ticket.safetensors", reporter)
    if done is not None:  # finished by an identical command while this one set up
        return reused("ticket", done, Ticket)
    try:
        train_stages(model, method, ds, cfg, run, reporter, "finetune")
        zero_empty_channels(model, empty)
        keep = (
            "arch",
            "arch_kwargs",
            "method",
            "method_options",
            "k",
            "scope",
            "granularity",
            "init",
        )
        return write_ticket(
            model,
            ds,
            cfg,
            run,
            reporter,
            parent=str(source),
            meta={**{key: parent.meta[key] for key in keep}, "command": "finetune"},
        )
    finally:
        run.release()
