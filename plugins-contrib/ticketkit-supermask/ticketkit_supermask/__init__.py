"""Stochastic supermasks (Zhou, Lan, Liu & Yosinski, "Deconstructing Lottery Tickets: Zeros,
Signs, and the Supermask", NeurIPS 2019), as a ticketkit method plugin.

Every weight of a random, frozen network has a score s. While training, each forward samples
m ~ Bernoulli(sigmoid(s)) and the gradient passes straight through the sample:
dL/ds = dL/dW_eff * W * sigmoid(s) (1 - sigmoid(s)). For evaluation and for the exported
ticket the mask is deterministic: the top-k scores of each layer (k = --k), so the ticket has
exactly the requested density.

This package uses only ticketkit's public plugin API and is the example of the README's
"write a plugin" section. Registration stays torch-free; the mask rule lives in `rule.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.errors import UsageError
from ticketkit.plugin import ScoreMethod


@dataclass(frozen=True)
class SupermaskOptions:
    score_scale: float = option(
        1.0, "multiplier of the initial scores U(-1/sqrt(fan_in), 1/sqrt(fan_in))"
    )


class Supermask(ScoreMethod):
    default_init = "signed-constant"

    def arch_options(self):
        return {"bias": False, "affine_bn": self.setup.learn_bn}

    def rule(self):
        from ticketkit_supermask.rule import BernoulliTopK

        if self.setup.scope != "layer" or self.setup.granularity != "unstructured":
            raise UsageError("supermask supports only --scope layer --granularity unstructured")
        return BernoulliTopK(self.setup.k)

    def prepare(self, model):
        import torch

        super().prepare(model)
        with torch.no_grad():
            for scores in self.sparsifier.scores():
                scores.mul_(self.options.score_scale)


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="supermask",
            summary="stochastic supermask: Bernoulli(sigmoid(s)) masks, top-k at export "
            "(Zhou et al. 2019)",
            factory=Supermask,
            options=SupermaskOptions,
            # the mlp on digits: 15% at the shared lr 0.1 and wd 1e-4, 92.5% with these
            defaults={"lr": 100.0, "weight_decay": 0.0},
        )
    )
