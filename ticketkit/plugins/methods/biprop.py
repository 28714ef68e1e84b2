"""biprop (Diffenderfer & Kailkhura, "Multi-Prize Lottery Ticket Hypothesis", ICLR 2021):
a binarized subnetwork of a random network, MPT-1/32 (binary weights) or, with binary-act
architectures, MPT-1/1 (binary weights and activations).

Forward: m = top-k of |s|; W_eff = alpha * sign(W) * m, alpha = sum(|W| m) / sum(m) per layer
(least-squares optimal; `-o alpha=channel` for one per output channel).
Backward, as the corrected reference (commit ce6a364): dL/ds = dL/dW_eff * W * sign(s), no
gradient through alpha. The reference divides by int(kN) instead of the kept count; we divide
by the kept count (they differ by at most one weight).

Global scope at sparsity >= 50% ramps the sparsity cubically from 50% to the target over
`ramp_epochs` (the reference's 10), shortened to epochs-1 for short runs so the last epoch
always trains at the target k. Weights default to scaled Kaiming normal, as the MPT configs.
The ticket stores mask bits, sign bits of the kept weights and alpha: (1 + k) bits per weight.
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.plugin import ScoreMethod


@dataclass(frozen=True)
class BipropOptions:
    alpha: str = option(
        "layer", "binary scale per layer (paper) or per output channel", ("layer", "channel")
    )
    ramp_epochs: int = option(
        10, "global scope, sparsity >= 50%: epochs of the cubic sparsity ramp"
    )


class Biprop(ScoreMethod):
    binary = True
    default_init = "kaiming-normal"

    def arch_options(self):
        return {"bias": False, "affine_bn": self.setup.learn_bn}

    def alpha(self) -> str:
        return self.options.alpha

    def keep_at(self, epoch: int) -> float:
        """Kept fraction for an epoch: the target, or the cubic ramp of global scope."""
        k, s = self.setup.k, self.setup
        ramp = min(self.options.ramp_epochs, s.epochs - 1)
        if s.scope != "global" or k > 0.5 or epoch >= ramp:
            return k
        sparsity = (1 - k) + (0.5 - (1 - k)) * (1 - epoch / ramp) ** 3
        return 1 - sparsity

    def start_epoch(self, epoch, model):
        rule = self.sparsifier.rule
        rule.k = self.keep_at(epoch)
        self.sparsifier.invalidate()


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="biprop",
            summary="biprop: binarized top-k subnetwork of a random network, MPT-1/32 and 1/1 "
            "(Diffenderfer & Kailkhura 2021)",
            factory=Biprop,
            options=BipropOptions,
        )
    )
