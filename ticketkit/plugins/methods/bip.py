"""BiP (Zhang et al., "Advancing Model Pruning via Bi-level Optimization", NeurIPS 2022).

Bi-level: min over masks m of l(m * theta*(m)), theta*(m) = argmin l(m * theta) + gamma/2 |theta|^2.
Each iteration takes two batches:
  1. lower level: one SGD step on the weights (and BatchNorm) under the current mask, learning
     rate alpha (`-o weight-lr`, paper 0.01), L2 gamma (`-o gamma`, the weight decay);
  2. upper level: one step on the scores, learning rate beta (`--lr`, paper 0.1), with the
     implicit gradient of the paper (bi-linear, Hessian-free):
         G = g_s - c * m * (dl/dz)^2,   z = m * theta,   c = `-o ig` (default 1/gamma)
     where g_s is the straight-through score gradient; then the top-k projection (the mask is the
     top-k of |s| over the whole network: of weights, or of filters/channels ranked by their
     norm per element under filter/channel granularity; `--scope layer` keeps k per layer).

Differences from the released code, deliberately (research notes, bip-hydra.md section 5.4):
the code multiplies the mask gradient by itself (g_s - lr2 * g_s^2, lr2 = 1e-4), steps BN in
both levels, reads the mask learning rate from the weight learning rate, and aliases scores with
weights; ticketkit implements the paper's formula and keeps the two learning rates separate.
Scores start as HYDRA's scaled copy of the weights (the first mask is the magnitude mask).
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.errors import UsageError
from ticketkit.plugin import ScoreMethod, norm_parameters


@dataclass(frozen=True)
class BiPOptions:
    weight_lr: float = option(
        0.01, "lower-level (weight) learning rate alpha; --lr is the score lr beta"
    )
    gamma: float = option(1e-4, "lower-level L2 coefficient gamma (the weight step's weight decay)")
    ig: float = option(
        -1.0, "implicit-gradient coefficient c; negative means the paper's 1/gamma, 0 turns it off"
    )


class BiP(ScoreMethod):
    source = "checkpoint"
    score_init = "hydra"
    default_scope = "global"

    def prepare(self, model):
        super().prepare(model)
        o = self.options
        if o.weight_lr <= 0 or o.gamma < 0:
            raise UsageError("bip needs weight-lr > 0 and gamma >= 0")
        coefficient = 1.0 / o.gamma if o.ig < 0 and o.gamma > 0 else max(o.ig, 0.0)
        for layer in self.sparsifier.layers:
            layer.param.ig = coefficient
        scores = {id(p) for p in self.sparsifier.scores()}
        self.lower = [p for p in model.parameters() if id(p) not in scores]
        self.upper = self.sparsifier.scores()
        self._turn = 0

    def optimizers(self, model, make):
        norms = {id(p) for p in norm_parameters(model)}
        weights = [p for p in self.lower if id(p) not in norms]
        bn = [p for p in self.lower if id(p) in norms]
        lower = [
            {"params": weights, "lr": self.options.weight_lr, "weight_decay": self.options.gamma}
        ]
        if bn:
            lower.append({"params": bn, "lr": self.options.weight_lr, "weight_decay": 0.0})
        return {"weights": make(lower), "scores": make([{"params": self.upper}])}

    def train_step(self, model, batch, optimizers):
        """Alternate: even batches step the weights (lower level), odd ones the scores."""
        lower_turn = self._turn % 2 == 0
        self._turn += 1
        for p in self.lower:
            p.requires_grad_(lower_turn)
        for p in self.upper:
            p.requires_grad_(not lower_turn)
        active = {"main": optimizers["weights" if lower_turn else "scores"]}
        return super().train_step(model, batch, active)

    def start_epoch(self, epoch, model):
        self._turn = 0


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="bip",
            summary="BiP: bi-level pruning, weight and score steps with the implicit gradient "
            "(Zhang et al. 2022)",
            factory=BiP,
            options=BiPOptions,
        )
    )
