"""Magnitude pruning of a trained network (one-shot; LWM in HYDRA, OMP in the LTH benchmark).

Keep the k largest |W|, per layer (`--scope layer`) or over the whole network (`--scope
global`, one exact threshold). Structured granularities keep the filters/channels with the
largest L2 norm, k per layer, or at global scope the largest norm per element over the
network (which may empty a layer). No training happens here: follow with `ticketkit finetune`.
"""

from __future__ import annotations

from ticketkit import MethodSpec, hookimpl
from ticketkit.plugin import ScoreMethod


class Magnitude(ScoreMethod):
    source = "checkpoint"
    score_init = "magnitude"
    trains = False


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="magnitude",
            summary="magnitude pruning of a trained network, layer-wise or global (one-shot)",
            factory=Magnitude,
            defaults={"epochs": 0},  # nothing trains: a given --epochs gets a note
        )
    )
    from ticketkit.plugins.methods.magnitude_init import SPEC  # the at-init twin

    register(SPEC)
