"""SynFlow (Tanaka, Kunin, Yamins & Ganguli, "Pruning neural networks without any data by
iteratively conserving synaptic flow", NeurIPS 2020), then the weights train under the mask.

Data-free. Synaptic saliency, Eq. (2) of the paper: S(W) = dR/dW * W, with
R = 1^T (prod_l |W^[l]|) 1, the sum of the outputs of the *linearised* network: every parameter
and buffer replaced by its absolute value (BatchNorm statistics too), an all-ones input of the
dataset's image shape (batch 1), eval mode. Iterated `-o iterations` times (100, the paper's
Algorithm 1) with the exponential schedule k_i = k^(i/n), so the scores re-balance as layers
thin out: this is what avoids layer collapse. Pruned weights score exactly 0.

As Peek-a-Boo's prune loop (research notes 4.3): the whole scoring runs in float64, which keeps
the path product of deep networks from under- or overflowing (the reference's HEAD scores in
float32; its issues #11 and #12 are that failure). Differences: the linearised network is a
float64 copy (`torch.func.functional_call`), so the model's own weights and signs are never
changed and need no restoring; the kept count is exact where the reference drops ties.
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.plugins.methods.at_init import AT_INIT_DEFAULTS, PruneAtInit


@dataclass(frozen=True)
class SynFlowOptions:
    iterations: int = option(100, "pruning iterations, keeping k^(i/n) after iteration i")


class SynFlow(PruneAtInit):
    linearised = True

    def score(self, model, layers, state):
        return synaptic_saliency(model, layers, state, self.ctx.input)


def synaptic_saliency(model, layers, state, spec):
    """|W * dR/dW| for the stored weights of `layers`, R the summed output of `model` run on
    `state` (its linearised float64 copy: `float64_state(..., absolute=True)`, in eval mode)
    on an all-ones input of `spec`'s image shape."""
    import torch

    from ticketkit.plugins.methods.at_init import weight_names

    weights = [state[name].requires_grad_() for name in weight_names(model, layers)]
    device = weights[0].device
    ones = torch.ones(1, spec.channels, spec.height, spec.width, dtype=torch.float64, device=device)
    r = torch.func.functional_call(model, state, (ones,)).sum()
    grads = torch.autograd.grad(r, weights)
    return [(g * w).detach().abs() for g, w in zip(grads, weights, strict=True)]


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="synflow",
            summary="SynFlow: iterative data-free pruning at initialisation, then train "
            "(Tanaka et al. 2020)",
            factory=SynFlow,
            options=SynFlowOptions,
            defaults=AT_INIT_DEFAULTS,
        )
    )
