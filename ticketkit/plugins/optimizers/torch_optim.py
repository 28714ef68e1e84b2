"""torch's SGD, Adam and AdamW, exposed by name.

Weight decay applies to every trainable tensor, scores included (as in edge-popup and biprop
with SGD). Adam here honours weight decay; the references' Adam silently ignored it, so their
recipes use `weight_decay: 0` with Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketkit import OptimizerSpec, hookimpl, option


@dataclass(frozen=True)
class SGDOptions:
    nesterov: bool = option(False, "Nesterov momentum")


@dataclass(frozen=True)
class AdamOptions:
    beta1: float = option(0.9, "first-moment decay")
    beta2: float = option(0.999, "second-moment decay")
    eps: float = option(1e-8, "denominator epsilon")


def sgd(groups, *, lr, momentum, weight_decay, nesterov=False):
    import torch

    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=nesterov and momentum > 0,
    )


def adam(groups, *, lr, momentum, weight_decay, beta1=0.9, beta2=0.999, eps=1e-8):
    import torch

    return torch.optim.Adam(groups, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


def adamw(groups, *, lr, momentum, weight_decay, beta1=0.9, beta2=0.999, eps=1e-8):
    import torch

    return torch.optim.AdamW(
        groups, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay
    )


@hookimpl
def ticketkit_register_optimizers(register):
    register(
        OptimizerSpec(
            name="sgd",
            summary="SGD with momentum (torch.optim.SGD)",
            factory=sgd,
            options=SGDOptions,
        )
    )
    register(
        OptimizerSpec(
            name="adam",
            summary="Adam (torch.optim.Adam); --momentum unused",
            factory=adam,
            options=AdamOptions,
        )
    )
    register(
        OptimizerSpec(
            name="adamw",
            summary="AdamW, decoupled weight decay (torch.optim.AdamW)",
            factory=adamw,
            options=AdamOptions,
        )
    )
