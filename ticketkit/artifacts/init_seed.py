"""`weights: init-seed` layers (DESIGN §5): kept weights that are +-|W0|, the init's own values.

A ticket whose magnitudes never trained (Peek-a-Boo, Chen et al. ICLR 2022: a mask chosen at
initialisation, then only the signs learned with Bop, W = m * s * |W0|; or any prune-at-init
ticket before training) needs neither its values nor a scale: the init record (`scheme`,
`scale`, `seed`, as `prune` writes it and `finetune` carries it) regenerates W0 exactly, since
`ticketkit.models.init_weights` draws from one seeded CPU generator. Such a layer stores its mask
and sign bits only, (1 + k) bits per weight instead of 1 + 32 k.

The case is detected from the weights (every kept |w| equals the regenerated |W0|), never from
the optimizer's name, so the encoding stays lossless whatever produced the weights. Each layer
also records a short digest of the kept magnitudes: a different torch whose generator draws
other numbers is then a clear error on loading, not a silently different network. Peek-a-Boo's
reference saves the full state dict instead; it has no compact format.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

DIGEST = "magnitudes_sha256"


def regenerate(meta: dict[str, Any], paths: list[str]) -> dict[str, torch.Tensor] | None:
    """|W0| of the layers `paths`, drawn again from `meta`'s init record, or None when the
    ticket records no init (it was pruned from a trained checkpoint, or saved by hand).

    The network is rebuilt from `arch`, `arch_kwargs` and `input` and re-initialised as `prune`
    did: `scale_k = k` for a scaled init, applied to the masked layers (the init scales only
    prunable layers, and a layer's scale changes neither its own draws nor anyone else's). The
    global RNG is left as it was: building the arch draws its default init from it.
    """
    init = meta.get("init") or {}
    if not init.get("scheme") or init.get("seed") is None:
        return None
    from ticketkit.models import build_model, init_weights
    from ticketkit.training.data import InputSpec

    with torch.random.fork_rng(devices=[]):
        model = build_model(meta["arch"], InputSpec(**meta["input"]), **meta["arch_kwargs"])
        scale_k = float(meta["k"]) if init.get("scale") == "scaled" else None
        init_weights(
            model, init["scheme"], seed=int(init["seed"]), scale_k=scale_k, prunable=set(paths)
        )
    modules = dict(model.named_modules())
    return {path: modules[path].weight.detach().float().abs() for path in paths}


def digest(magnitudes: torch.Tensor) -> str:
    """A short sha256 of kept magnitudes (float32, mask order)."""
    data = magnitudes.detach().float().contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def matches(kept: torch.Tensor, mask: torch.Tensor, w0: torch.Tensor | None) -> bool:
    """Whether every kept weight is +-|W0| (kept: the kept weights, in mask order)."""
    return w0 is not None and w0.shape == mask.shape and torch.equal(kept.abs(), w0[mask])


class LazyInit:
    """Regenerates |W0| at most once per ticket, and only if a layer needs it."""

    def __init__(self, meta: dict[str, Any], paths: list[str]) -> None:
        self._meta, self._paths = meta, paths
        self._done = False
        self._mags: dict[str, torch.Tensor] | None = None

    def get(self, path: str) -> torch.Tensor | None:
        if not self._done:
            self._mags, self._done = regenerate(self._meta, self._paths), True
        return None if self._mags is None else self._mags.get(path)
