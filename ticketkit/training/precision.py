"""Mixed precision for training (`--amp bf16|fp16`): autocast around each training step.

bfloat16 keeps float32's exponent range, so its gradients need no scaling: it runs under
autocast on CPU and CUDA with any method's `train_step`. float16 gradients underflow without
loss scaling, and the scaled backward must be ours: fp16 therefore needs a method that trains
with the default `Method.train_step` (the loop then runs that step with a GradScaler, on CPU
or CUDA); other methods are refused with the reason rather than trained unscaled. Evaluation,
scores' selection after each optimizer step and the saved artifacts stay float32.

The scaler's state (its scale and growth count) goes into the training checkpoint: a run
resumed from the initial scale would, where that scale overflowed, skip its first steps again
and not give the uninterrupted run's ticket.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ticketkit.errors import UsageError
from ticketkit.plugin import Method

AMP_MODES = ("bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check(amp: str | None, method: Method | None = None) -> None:
    """Refuse an --amp value or a method it cannot train, before any work."""
    if amp is None:
        return
    if amp not in AMP_MODES:
        raise UsageError(f"--amp must be one of {', '.join(AMP_MODES)}; got '{amp}'")
    if amp == "fp16" and method is not None and type(method).train_step is not Method.train_step:
        raise UsageError(
            f"--amp fp16: method {type(method).__name__} trains with its own train_step, "
            f"which ticketkit cannot loss-scale; use --amp bf16"
        )


class Precision:
    """Runs one training step at the configured precision (`step`); a plain call without
    --amp, so the default path costs nothing."""

    def __init__(self, amp: str | None, device: torch.device, method: Method) -> None:
        check(amp, method)
        self.amp, self.device, self.method = amp, device, method
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def state_dict(self) -> dict[str, Any]:
        """The loss scaler's state (JSON-safe numbers), empty without fp16."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)

    def autocast(self) -> Any:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.amp])

    def step(
        self,
        model: nn.Module,
        batch: tuple[torch.Tensor, torch.Tensor],
        optimizers: dict[str, torch.optim.Optimizer],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.amp is None:
            return self.method.train_step(model, batch, optimizers)
        if self.scaler is None:
            with self.autocast():
                return self.method.train_step(model, batch, optimizers)
        return self._scaled_step(model, batch, optimizers)

    def _scaled_step(
        self,
        model: nn.Module,
        batch: tuple[torch.Tensor, torch.Tensor],
        optimizers: dict[str, torch.optim.Optimizer],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`Method.train_step` with float16 autocast and loss scaling: a step whose
        gradients overflowed is skipped (no optimizer step, so masks stay) and the scale
        lowered."""
        assert self.scaler is not None
        x, y = batch
        with self.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            extra = self.method.loss_term(model)
            if extra is not None:
                loss = loss + extra
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for opt in optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        return loss.detach(), logits.detach().float()
