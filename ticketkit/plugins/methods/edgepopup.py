"""edge-popup (Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?",
CVPR 2020): find a subnetwork of a random, frozen network by training one score per weight.

Forward: each layer keeps the top-k of |s| (layer-wise by default), W_eff = W * m.
Backward: straight through the mask, dL/ds = dL/dW_eff * W * sign(s).
Scores start U(-1/sqrt(fan_in), 1/sqrt(fan_in)); weights default to the scaled signed Kaiming
constant (the paper's best init); no biases, non-affine BatchNorm (affine and trained with
--learn-bn). First and last layers are pruned like the others (the paper's setting).
With the signed-constant init every kept weight is +-sigma, so the ticket stores signs only.
"""

from __future__ import annotations

from ticketkit import MethodSpec, hookimpl
from ticketkit.plugin import ScoreMethod


class EdgePopup(ScoreMethod):
    default_init = "signed-constant"

    def arch_options(self):
        return {"bias": False, "affine_bn": self.setup.learn_bn}


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="edgepopup",
            summary="edge-popup: top-k score masks on a random, frozen network "
            "(Ramanujan et al. 2020)",
            factory=EdgePopup,
        )
    )
