"""Random pruning at initialisation, then the weights train under the mask: the baseline every
pruning-at-init paper compares against (Synaptic-Flow's `Rand`; Frankle et al., "Pruning Neural
Networks at Initialization: Why are We Missing the Mark?", ICLR 2021, section 5).

Every weight gets an i.i.d. uniform score from a generator seeded by `--seed` and the top-k is
kept: over the whole network by default (`--scope global`, so each layer keeps about k of its
weights) or exactly k per layer. The reference draws N(0, 1) scores; any i.i.d. continuous
draw gives the same distribution of masks.
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.plugins.methods.at_init import AT_INIT_DEFAULTS, PruneAtInit


@dataclass(frozen=True)
class RandomOptions:
    iterations: int = option(1, "pruning iterations, keeping k^(i/n) after iteration i")


class RandomMask(PruneAtInit):
    def score(self, model, layers, state):
        import torch

        if not hasattr(self, "_rng"):
            self._rng = torch.Generator().manual_seed(self.setup.seed + 7919)
        return [
            torch.rand(layer.shape, generator=self._rng, dtype=torch.float64) for layer in layers
        ]


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="random",
            summary="random pruning at initialisation, then train (the baseline)",
            factory=RandomMask,
            options=RandomOptions,
            defaults=AT_INIT_DEFAULTS,
        )
    )
