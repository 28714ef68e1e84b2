"""GraSP (Wang, Zhang & Grosse, "Picking Winning Tickets Before Training by Preserving Gradient
Flow", ICLR 2020), at initialisation, then the weights train under the mask.

Eq. (8) of the paper: S(-W) = -W * (H g), g = dL/dW, H the Hessian of the loss, logits divided
by a temperature T (`-o temperature`, 200); the paper *removes* the weights with the largest S.
ticketkit scores W * (H g) and keeps the largest, the same selection with the sign folded in
(the Synaptic-Flow reference's "grasp sign of score" convention, research notes 4.2). As the
reference: g is summed over the `-o prune-batches` batches first (no graph), then H g is the
sum over the batches of the gradient of g^T dL_b/dW (a Hessian-vector product by double
backward); scored in eval mode. Differences: float64 (Peek-a-Boo's GraSP fails on a float64
model fed float32 batches; here both are float64), the reference's division by |sum S| is left
out (it does not change the ranking), and the kept count is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.plugins.methods.at_init import AT_INIT_DEFAULTS, PruneAtInit


@dataclass(frozen=True)
class GraspOptions:
    prune_batches: int = option(1, "training batches (--batch-size each) g and Hg sum over")
    temperature: float = option(200.0, "the logits are divided by it before the loss")
    iterations: int = option(1, "pruning iterations, keeping k^(i/n) after iteration i")


class Grasp(PruneAtInit):
    def score(self, model, layers, state):
        import torch
        import torch.nn.functional as F

        from ticketkit.plugins.methods.at_init import weight_names

        device = torch.device(self.ctx.device)
        weights = [state[name].requires_grad_() for name in weight_names(model, layers)]
        batches = [
            (x.to(device, torch.float64), y.to(device))
            for x, y in self.ctx.batches(self.options.prune_batches, seed=self.setup.seed)
        ]

        def loss(x, y):
            logits = torch.func.functional_call(model, state, (x,))
            return F.cross_entropy(logits / self.options.temperature, y)

        g = [torch.zeros_like(w) for w in weights]
        for x, y in batches:
            for total, part in zip(g, torch.autograd.grad(loss(x, y), weights), strict=True):
                total.add_(part)
        hg = [torch.zeros_like(w) for w in weights]
        for x, y in batches:
            grads = torch.autograd.grad(loss(x, y), weights, create_graph=True)
            z = sum((gi * ai).sum() for gi, ai in zip(grads, g, strict=True))
            for total, part in zip(hg, torch.autograd.grad(z, weights), strict=True):
                total.add_(part)
        return [(w * h).detach() for w, h in zip(weights, hg, strict=True)]


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="grasp",
            summary="GraSP at initialisation: keep the largest W * (H g), then train "
            "(Wang et al. 2020)",
            factory=Grasp,
            options=GraspOptions,
            defaults=AT_INIT_DEFAULTS,
        )
    )
