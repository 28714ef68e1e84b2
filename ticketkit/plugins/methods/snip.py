"""SNIP (Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection
Sensitivity", ICLR 2019), at initialisation, then the weights train under the mask.

Connection sensitivity, Eq. (6) of the paper: s_j = |g_j| / sum_k |g_k| with
g_j = dL(c * W)/dc_j at c = 1, i.e. |dL/dW_eff * W|. The normalisation does not change the
ranking and is left out. As the Synaptic-Flow reference (its "snip with mask pruner" version),
the saliencies of `-o prune-batches` batches are summed, the network is scored in eval mode, and
the top-k is global by default. Differences: scoring runs in float64, the kept count is exact
(the reference drops ties), and with `-o iterations` > 1 a pruned weight is never revived
(shared rules: `at_init`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.plugins.methods.at_init import AT_INIT_DEFAULTS, PruneAtInit


@dataclass(frozen=True)
class SnipOptions:
    prune_batches: int = option(1, "training batches (--batch-size each) the saliency sums over")
    iterations: int = option(1, "pruning iterations, keeping k^(i/n) after iteration i")


class Snip(PruneAtInit):
    def score(self, model, layers, state):
        import torch
        import torch.nn.functional as F

        from ticketkit.plugins.methods.at_init import weight_names

        device = torch.device(self.ctx.device)
        weights = [state[name].requires_grad_() for name in weight_names(model, layers)]
        saliency = [torch.zeros_like(w) for w in weights]
        for x, y in self.ctx.batches(self.options.prune_batches, seed=self.setup.seed):
            logits = torch.func.functional_call(model, state, (x.to(device, torch.float64),))
            grads = torch.autograd.grad(F.cross_entropy(logits, y.to(device)), weights)
            for s, g, w in zip(saliency, grads, weights, strict=True):
                s.add_((g * w).abs())
        return saliency


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="snip",
            summary="SNIP at initialisation: keep the largest |dL/dW * W|, then train "
            "(Lee et al. 2019)",
            factory=Snip,
            options=SnipOptions,
            defaults=AT_INIT_DEFAULTS,
        )
    )
