"""Magnitude pruning at initialisation, then the weights train under the mask: the `Mag`
baseline of the pruning-at-init papers (Synaptic-Flow's `Mag`, Tanaka et al. 2020; Peek-a-Boo's
`--pruner Mag`, Chen et al. 2022; Frankle et al., "Pruning Neural Networks at Initialization: Why
are We Missing the Mark?", ICLR 2021).

Score |W0| of the random init, keep the top k (global scope by default, one iteration by default;
`-o iterations` repeats it with k^(i/n), which for a fixed score ranks the same weights). A
method of its own rather than an option of `magnitude`: that one prunes a trained checkpoint
(`source = "checkpoint"`, filter/channel granularity, nothing trains), this one starts from a
random network like snip, grasp and synflow and shares their prune loop (`at_init.py`). One-shot
global magnitude at init empties whole layers at tiny k (layer collapse), which SynFlow avoids.
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketkit import MethodSpec, option
from ticketkit.plugins.methods.at_init import AT_INIT_DEFAULTS, PruneAtInit, weight_names


@dataclass(frozen=True)
class MagnitudeInitOptions:
    iterations: int = option(1, "pruning iterations, keeping k^(i/n) after iteration i")


class MagnitudeInit(PruneAtInit):
    def score(self, model, layers, state):
        return [state[name].abs() for name in weight_names(model, layers)]


SPEC = MethodSpec(
    name="magnitude-init",
    summary="magnitude pruning at initialisation (keep the largest |W0|), then train "
    "(the Mag baseline)",
    factory=MagnitudeInit,
    options=MagnitudeInitOptions,
    defaults=AT_INIT_DEFAULTS,
)
