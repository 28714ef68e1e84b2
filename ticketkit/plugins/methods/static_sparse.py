"""Static sparse training: a fixed random mask, drawn once at initialisation, and the weights
trained under it for the whole run. The baseline of every dynamic-sparse-training paper (the
"static sparse" rows of Mostafa & Wang, ICML 2019, "Parameter Efficient Training of Deep
Convolutional Neural Networks by Dynamic Sparse Reparameterization"; Evci et al. 2020).

As the DSR code's run without rewiring flags (research notes A.1, A.2): a uniformly random mask
with an exact count per layer. Differences: the count is `N_l - floor((1-k) N_l)` (the code's
`int((1-s) M + 0.1)`), `--density erk` is offered (RigL's static ERK baseline), and the pruned
weights are stored as 0 rather than kept at their initial values behind the mask.
"""

from __future__ import annotations

from ticketkit import MethodSpec, NoOptions, hookimpl
from ticketkit.plugins.methods.rewire import RewireMethod


class StaticSparse(RewireMethod):
    """Masks are chosen by `RewireMethod.choose_masks` and never updated."""

    def active(self) -> bool:
        return False

    def period(self, epoch: int | None = None) -> int:
        return 1  # no `-o every`: nothing is ever updated


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="static",
            summary="static sparse training: a fixed random mask (the baseline)",
            factory=StaticSparse,
            options=NoOptions,
            phase="rewire",
        )
    )
