"""Bop, the binary optimizer (Helwegen et al., "Latent Weights Do Not Exist: Rethinking
Binarized Neural Network Optimization", NeurIPS 2019), as Peek-a-Boo uses it (Chen et al.,
ICLR 2022): only the *signs* of the kept weights are learned, their magnitudes stay at their
initial values, so a trained ticket is its mask, its sign bits and the init.

Per weight w with gradient g (Algorithm 1 of the Bop paper; `ar` is the adaptivity rate gamma,
`tau` the threshold):

    m <- (1 - ar) m + ar g                        m starts at 0
    w <- -w   where |m| > tau and sign(m) == sign(w)

A flip keeps |w| (Peek-a-Boo; the paper's weights are +-1 anyway). Pruned weights get a zero
gradient, so their m stays 0 and they never flip. `ar` is decayed stepwise by epoch:
ar_e = ar * ar-decay-ratio ^ floor(e / ar-decay-every) for the 0-based epoch e (Peek-a-Boo's
CIFAR recipe, 0.15 every 45 epochs: ar changes after epochs 45, 90, 135). The epoch comes from
the param group's `epoch`, which the training loop writes at the start of every epoch; the rate
is recomputed from it each step, so a resumed run needs no extra state. Outside the loop
(`epoch` absent) no decay applies.

Register role: Bop takes the masked layers' weights only (`OptimizerSpec(roles=("weights",))`);
every other trainable parameter (biases, BatchNorm, unmasked layers) goes to SGD with the
command's --lr, --momentum and --weight-decay, as Peek-a-Boo trains them. Bop itself ignores
--lr, --momentum and --weight-decay.

Differences from Peek-a-Boo's `bop.py` (research notes 5.3): its first step sets
m = (1 + ar) g instead of ar g (so at step one nearly every weight flips to -sign(g)); ticketkit
starts m at 0 as the paper and larq do. Its flip test is |m| >= tau; ticketkit uses the paper's
strict |m| > tau.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ticketkit import OptimizerSpec, hookimpl, option


@dataclass(frozen=True)
class BopOptions:
    ar: float = option(1e-3, "adaptivity rate gamma of the gradient's moving average")
    tau: float = option(1e-6, "flip threshold on |m|")
    ar_decay_ratio: float = option(0.15, "ar is multiplied by this every ar-decay-every epochs")
    ar_decay_every: int = option(45, "epochs between ar decays (0: never decay)")


def bop(
    groups: Any,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    ar: float = 1e-3,
    tau: float = 1e-6,
    ar_decay_ratio: float = 0.15,
    ar_decay_every: int = 45,
) -> Any:
    """The factory `OptimizerSpec` calls; `lr` is kept in the groups (the loop schedules it)
    but unused, as are momentum and weight decay."""
    from ticketkit.plugins.optimizers.bop_optim import Bop

    return Bop(
        groups,
        ar=ar,
        tau=tau,
        ar_decay_ratio=ar_decay_ratio,
        ar_decay_every=ar_decay_every,
        lr=lr,
    )


@hookimpl
def ticketkit_register_optimizers(register):
    register(
        OptimizerSpec(
            name="bop",
            summary="Bop: flip the signs of the masked weights, magnitudes kept (Helwegen et "
            "al. 2019; Peek-a-Boo); the other parameters train with SGD",
            factory=bop,
            options=BopOptions,
            roles=("weights",),
        )
    )
