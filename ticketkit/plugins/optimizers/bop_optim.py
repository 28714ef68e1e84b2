"""The `torch.optim.Optimizer` behind the `bop` optimizer plugin (rule and references in
`ticketkit.plugins.optimizers.bop`, which stays free of torch so registering it is instant)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch  # noqa: TID253 (implementation module, imported only when training)


class Bop(torch.optim.Optimizer):
    """m <- (1 - ar) m + ar g; w <- -w where |m| > tau and sign(m) == sign(w)."""

    def __init__(
        self,
        params: Iterable[Any],
        ar: float = 1e-3,
        tau: float = 1e-6,
        ar_decay_ratio: float = 1.0,
        ar_decay_every: int = 0,
        lr: float = 0.0,
    ) -> None:
        if not 0 < ar <= 1:
            raise ValueError(f"ar must be in (0, 1], got {ar}")
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        if not 0 < ar_decay_ratio <= 1 or ar_decay_every < 0:
            raise ValueError("ar-decay-ratio must be in (0, 1] and ar-decay-every >= 0")
        defaults = {
            "ar": ar,
            "tau": tau,
            "ar_decay_ratio": ar_decay_ratio,
            "ar_decay_every": ar_decay_every,
            "lr": lr,
        }
        super().__init__(params, defaults)

    @staticmethod
    def rate(group: dict[str, Any]) -> float:
        """The group's adaptivity rate at its current epoch (`group["epoch"]`, 0-based)."""
        every = group["ar_decay_every"]
        if not every:
            return group["ar"]
        return group["ar"] * group["ar_decay_ratio"] ** (int(group.get("epoch", 0)) // every)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            ar, tau = self.rate(group), group["tau"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "m" not in state:
                    state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["m"]
                m.mul_(1 - ar).add_(p.grad, alpha=ar)
                flip = (m.abs() > tau) & (torch.sign(m) == torch.sign(p))
                p.mul_(1 - 2 * flip.to(p.dtype))
        return loss
