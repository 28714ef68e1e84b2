"""HYDRA (Sehwag et al., "HYDRA: Pruning Adversarially Robust Neural Networks", NeurIPS 2020),
with the natural (non-adversarial) objective.

Start from a trained network; every weight gets a score initialised proportional to it,
s = sqrt(6 / fan_in) * W / max|W| per layer, so the first mask is the magnitude mask. Train the
scores only (weights frozen, BatchNorm trainable) through the straight-through top-k, layer-wise
by default (the paper; BiP's variant is `--scope global`). The paper's recipe: 20 epochs of SGD
at lr 0.1 with cosine decay and weight decay 1e-4 on the scores, then `ticketkit finetune`
(100 epochs at lr 0.01).
"""

from __future__ import annotations

from ticketkit import MethodSpec, hookimpl
from ticketkit.plugin import ScoreMethod


class Hydra(ScoreMethod):
    source = "checkpoint"
    score_init = "hydra"
    train_bn = True


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="hydra",
            summary="HYDRA: train importance scores of a trained network, weights frozen "
            "(Sehwag et al. 2020)",
            factory=Hydra,
        )
    )
