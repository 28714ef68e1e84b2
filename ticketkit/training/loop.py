"""The one training loop every command uses; methods plug in through their hooks.

Read top to bottom: resolve the device, build the method's optimizers, resume if the run has a
checkpoint, then per epoch set the learning rate, let the method adjust (`start_epoch`), run
its `train_step` over the batches, evaluate, log a metrics line, and checkpoint atomically.
Progress goes to a `Reporter` (the CLI draws it with rich on stderr); the engine prints nothing.
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from functools import cache
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ticketkit.errors import JobError, UsageError
from ticketkit.masks.sparsifier import sparsifier_of
from ticketkit.plugin import Context, Method, Stage
from ticketkit.registry import get_optimizer
from ticketkit.training import distributed
from ticketkit.training.data import EVAL_BATCH, Dataset, Files, Loader, Split, take
from ticketkit.training.mask_watch import MaskWatch
from ticketkit.training.precision import Precision


class Reporter(Protocol):
    """Where progress goes. The CLI implements it with rich; tests may pass `Silent()`."""

    def start(self, description: str, total: int) -> None: ...
    def advance(self, **fields: Any) -> None: ...
    def stop(self) -> None: ...
    def note(self, message: str) -> None: ...


class Silent:
    def start(self, description: str, total: int) -> None: ...
    def advance(self, **fields: Any) -> None: ...
    def stop(self) -> None: ...
    def note(self, message: str) -> None: ...


def resolve_device(name: str) -> torch.device:
    """The device named: "auto" is cuda when present, else cpu; anything else must exist."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(
            f"--device '{name}' is not a device (try auto, cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return distributed.local_device(device)  # under torchrun, each rank's own GPU


@cache
def retain_freed_memory() -> bool:
    """Keep the memory one training step frees for the next (glibc); True if it was set.

    Each step frees and reallocates the same tensors (gradients, effective weights, optimizer
    temporaries). glibc hands free memory at the top of its heap back to the kernel once more
    than its trim threshold (by default twice the largest block freed so far) lies there,
    and the next step faults every page of it back in: measured up to ~90 minor faults per
    step of a biprop mlp, ~0.2 ms of a 2 ms step. Raised thresholds keep those pages, as
    PyTorch's caching allocator does on the GPU; blocks of 32 MiB and more still come and go.
    """
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):  # not glibc, or no such symbol
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 256 << 20))


def lr_factor(cfg: Any, epoch: int, epochs: int | None = None) -> float:
    """Per-epoch learning-rate multiplier (applied at the start of the epoch, as the references);
    `epochs` is the length of the stage (default: cfg.epochs)."""
    epochs = cfg.epochs if epochs is None else epochs
    if cfg.warmup and epoch < cfg.warmup:
        return (epoch + 1) / cfg.warmup
    if cfg.schedule == "cosine":
        span = max(epochs - cfg.warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup) / span))
    if cfg.schedule == "step":
        return cfg.lr_gamma ** sum(1 for s in cfg.lr_steps if epoch >= s)
    return 1.0


class OptimizerFactory:
    """Builds the configured optimizer (`make(groups)`), or one per role (`make.by_role`).

    Only `torch.optim.Optimizer`s are accepted: masks are refreshed after every step through
    torch's optimizer step hook, and another object's steps would leave them stale.
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.spec = get_optimizer(cfg.optimizer)
        self.options = self.spec.make_options(cfg.optimizer_options)

    def __call__(self, groups: list[dict], spec: Any = None, options: Any = None) -> Any:
        spec, options = spec or self.spec, options or self.options
        cfg = self.cfg
        try:
            opt = spec.load()(
                groups,
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                **vars(options),
            )
        except (ValueError, TypeError) as exc:  # torch's checks of lr, eps, betas, ...
            raise UsageError(f"optimizer '{spec.name}' refused its settings: {exc}") from None
        if not isinstance(opt, torch.optim.Optimizer):
            raise UsageError(
                f"optimizer '{spec.name}' built a {type(opt).__name__}, not a "
                f"torch.optim.Optimizer; ticketkit refreshes masks after each torch optimizer "
                f"step, so it trains with those only"
            )
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
        return opt

    def by_role(self, roles: dict[str, list]) -> dict[str, torch.optim.Optimizer]:
        """Each role to its optimizer: the one `--role-optimizer ROLE=NAME` names, else the
        configured one if its spec takes the role (`OptimizerSpec.roles`, empty: all), else
        SGD with the same settings. Keyed "main" for the configured one, else by name."""
        cfg = self.cfg
        takes = set(self.spec.roles or roles)
        chosen: dict[str, list[dict]] = {}
        for role, params in roles.items():
            name = str(cfg.role_optimizers.get(role) or (cfg.optimizer if role in takes else "sgd"))
            if name == cfg.optimizer and role not in takes:
                raise UsageError(
                    f"optimizer '{name}' trains only {', '.join(self.spec.roles)}, not {role}"
                )
            chosen.setdefault(name, []).append({"params": params, "role": role})
        out = {}
        for name, groups in chosen.items():
            if name == cfg.optimizer:
                out["main"] = self(groups)
            else:
                spec = get_optimizer(name)
                out[name] = self(groups, spec, spec.make_options({}))
        return out


def bind(method: Method, ds: Dataset, cfg: Any) -> None:
    """Give `method` its `Context` (before `prepare`): the input spec, the device, the steps
    per epoch and a way to draw scoring batches that are not training."""
    device = resolve_device(cfg.device)
    distributed.check_batch(cfg.batch_size)  # under torchrun, before the run is claimed
    loader = Loader(ds, ds.train, cfg.batch_size, train=False, device=device)

    def draw(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(seed))
        size = cfg.batch_size
        picked = take(ds.train, order[: n * size])
        batches = Loader(ds, picked, size, train=False, device=device).batches()
        return list(batches)[:n]

    method.ctx = Context(
        input=ds.input,
        device=str(device),
        steps_per_epoch=len(loader),
        epochs=cfg.epochs,
        draw=draw,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, ds: Dataset, device: torch.device, split: Split | Files | None = None
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and mean cross-entropy on the test split, in eval mode."""
    model.eval()
    loader = Loader(ds, split or ds.test, EVAL_BATCH, train=False, device=device)
    correct1 = correct5 = 0
    loss = 0.0
    for x, y in loader.batches():
        logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == y[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
    n = len(loader.split)
    return {
        "test_acc1": 100.0 * correct1 / n,
        "test_acc5": 100.0 * correct5 / n,
        "test_loss": loss / n,
    }


def checkpoint_tag(stage: Stage, kind: str) -> str:
    """ "last"/"best" for a one-stage run (as before stages), "<stage>/last" otherwise."""
    return kind if stage.name == "train" else f"{stage.name}/{kind}"


def fit(
    model: nn.Module,
    method: Method,
    ds: Dataset,
    cfg: Any,
    run: Any | None = None,
    reporter: Reporter | None = None,
    *,
    phase: str = "train",
    stage: Stage | None = None,
) -> dict[str, Any]:
    """Train `model` with `method` through one stage (default: one of cfg.epochs); returns
    the last metrics record, with "stopped" ({epoch, reason}) if the method ended it early."""
    reporter = reporter or Silent()
    retain_freed_memory()
    device = resolve_device(cfg.device)
    model.to(device)
    stage = stage or Stage("train", cfg.epochs)
    if getattr(method, "ctx", None) is None:
        bind(method, ds, cfg)
    ctx = method.ctx
    ctx.stage, ctx.epochs, ctx.epoch, ctx.step = stage.name, stage.epochs, 0, 0
    optimizers = method.optimizers(model, OptimizerFactory(cfg))
    precision = Precision(getattr(cfg, "amp", None), device, method)  # --amp
    start, best, stopped = 0, {"test_acc1": -1.0}, None
    last_tag, best_tag = checkpoint_tag(stage, "last"), checkpoint_tag(stage, "best")
    if run is not None:
        restored = run.load_checkpoint(last_tag, model, optimizers, method)
        if restored is not None:
            start, info = restored[0] + 1, restored[1]
            best, stopped = info.get("best", best), info.get("stopped")
            precision.load_state_dict(info.get("precision", {}))
            reporter.note(f"resuming {run.root} after epoch {start}")
        distributed.check_resumed(stage.name, start, str(run.root))
    sparsifier = sparsifier_of(model)
    if sparsifier is not None and type(method).train_step is Method.train_step:
        sparsifier.fold_weight_decay(optimizers.values())  # one backward a step: safe to fold
    loader = Loader(ds, ds.train, cfg.batch_size, train=True, seed=cfg.seed, device=device)
    ctx.steps_per_epoch, ctx.step = len(loader), start * len(loader)
    after_step = type(method).after_step is not Method.after_step  # no call a step if unused
    watch = MaskWatch(model)  # after the resume: changes count from the checkpoint's masks
    label = phase if stage.name == "train" else f"{phase} {stage.name}"
    record: dict[str, Any] = {"stopped": stopped} if stopped else {}
    for epoch in range(start, stage.epochs if stopped is None else start):
        ctx.epoch = epoch
        factor = lr_factor(cfg, epoch, stage.epochs)
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * factor
                group["epoch"] = epoch  # for optimizers with schedules of their own (Bop)
        method.start_epoch(epoch, model)
        model.train()
        reporter.start(f"{label} epoch {epoch + 1}/{stage.epochs}", len(loader))
        seen = 0
        sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss, correct: no syncs
        began = time.perf_counter()
        with distributed.replicated(model, device):
            for i, batch in enumerate(loader.batches(epoch)):
                loss, logits = precision.step(model, batch, optimizers)
                ctx.step += 1
                if after_step:
                    method.after_step(model, optimizers)
                n = batch[1].numel()
                seen += n
                sums[0] += loss.double() * n
                sums[1] += (logits.argmax(1) == batch[1]).sum()
                reporter.advance(images=n, **({"loss": float(loss)} if i % 20 == 0 else {}))
        reporter.stop()
        total_loss, correct, seen = distributed.reduce_sums(sums, seen)
        if not math.isfinite(total_loss):
            raise JobError(
                f"training diverged at epoch {epoch + 1} (loss is {total_loss}); lower --lr"
            )
        broken = _first_non_finite(model, optimizers)
        if broken is not None:
            raise JobError(
                f"training diverged at epoch {epoch + 1} ({broken} holds NaN or inf); lower --lr"
            )
        distributed.check_identical(model, epoch)
        record = {
            "phase": phase,
            **({"stage": stage.name} if stage.name != "train" else {}),
            "epoch": epoch + 1,
            "lr": cfg.lr * factor,
            "train_loss": total_loss / max(seen, 1),
            "train_acc1": 100.0 * correct / max(seen, 1),
            "seconds": round(time.perf_counter() - began, 3),
            **watch.stats(),
        }
        last = epoch + 1 == stage.epochs
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and not last:
            record.update(evaluate(model, ds, device))
        reason = method.end_epoch(model, record)
        if reason and not last:
            stopped = {"epoch": epoch + 1, "reason": str(reason)}
            record["stopped"] = stopped
        if run is not None:
            run.log(record)
            if record.get("test_acc1", -1.0) > best["test_acc1"]:
                best = {k: record[k] for k in ("epoch", "test_acc1", "test_acc5", "test_loss")}
                run.save_checkpoint(best_tag, model, {}, epoch, {"best": best})
            info = {"best": best, **({"stopped": stopped} if stopped else {})}
            if precision.scaler is not None:  # fp16's loss scale, for an identical resume
                info["precision"] = precision.state_dict()
            run.save_checkpoint(last_tag, model, optimizers, epoch, info, method.state_dict())
        reporter.note(_describe(record))
        if stopped:
            reporter.note(f"{method_name(method)} ended {label} at epoch {epoch + 1}: {reason}")
            break
    return record


def method_name(method: Method) -> str:
    return type(method).__name__


def _first_non_finite(model: nn.Module, optimizers: dict[str, Any]) -> str | None:
    """The name of the first trained tensor holding NaN or inf, else None.

    The loss does not always show it: scores that overflowed to NaN are never selected, so
    every mask empties, the logits are all zero and the loss sits at a finite log(classes).
    One check per epoch, one device sync.
    """
    trained = [p for opt in optimizers.values() for g in opt.param_groups for p in g["params"]]
    if not trained:
        return None
    finite = torch.stack([torch.isfinite(p).all() for p in trained]).tolist()
    if all(finite):
        return None
    first = trained[finite.index(False)]
    names = {id(p): name for name, p in model.named_parameters()}
    return names.get(id(first), "a trained tensor")


def _describe(record: dict[str, Any]) -> str:
    text = (
        f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} "
        f"acc {record['train_acc1']:.2f}%"
    )
    if "test_acc1" in record:
        text += f", test acc {record['test_acc1']:.2f}%"
    if record.get("mask_changed"):
        text += f", mask {100 * record['mask_changed']:.2f}% changed"
    return text + f" ({record['seconds']:.1f}s)"
