"""Mask rules: how scores become masks, and how scores start.

A rule's `update(layers, training)` writes every layer's mask buffer; `relax_grad` is the
derivative the straight-through estimator uses (sign for top-k on |s|). Rules are the extension
point for new mask families: the supermask plugin adds one. `init_scores` gives scores their
method-specific starting values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from ticketkit.masks.layers import Layer, abs_grad
from ticketkit.masks.select import Job, Selector, kept_count, top_abs_many

GRANULARITIES = ("unstructured", "filter", "channel")
SCOPES = ("layer", "global")


class MaskRule:
    """Turns scores into masks. Subclass for new mask families (see the supermask plugin).

    `stochastic` rules are re-evaluated on every training forward; deterministic ones only when
    scores change. `relax_grad` is the derivative used by the straight-through estimator.
    `update` runs under `torch.no_grad()` (the sparsifier's refresh enters it).
    """

    stochastic = False
    relax_grad: Callable[[torch.Tensor], torch.Tensor] = staticmethod(abs_grad)

    def update(self, layers: list[Layer], training: bool) -> None:
        raise NotImplementedError


class TopK(MaskRule):
    """Keep the fraction k of weights with the largest |score|.

    scope "layer": each layer keeps N - floor((1-k) N). scope "global": one exact threshold
    over every layer's scores (ties by index). Granularities "filter"/"channel" rank whole
    output/input channels: at layer scope by the L2 norm of their |scores|, k of each layer's
    groups kept. At global scope N - floor((1-k) N) of all layers' N groups are kept, with one
    exact threshold (ties by index, in layer order), on the L2 norm divided by sqrt(number of
    elements in the group), i.e. the root mean square of the group's |scores|: the plain norm
    grows with the square root of the group's size (a layer with 9x the fan-in would look 3x as
    important at the same scores), the RMS compares the typical score of a group whatever its
    layer's shape.
    """

    def __init__(self, k: float, scope: str = "layer", granularity: str = "unstructured"):
        self.k = k
        self.scope = scope
        self.granularity = granularity
        self._selectors: dict[str, Selector] = {}

    def _selector(self, key: str) -> Selector:
        selector = self._selectors.get(key)
        if selector is None:
            selector = self._selectors[key] = Selector()
        return selector

    def update(self, layers: list[Layer], training: bool) -> None:
        if self.granularity != "unstructured" and self.scope == "global":
            self._global_structured(layers)
        elif self.granularity != "unstructured":
            for layer in layers:
                self._structured(layer)
        elif self.scope == "global":
            self._global(layers)
        else:
            jobs: list[Job] = []
            for layer in layers:
                param = layer.param
                # this runs every step: a buffer through nn.Module's attribute lookup is ~0.5 us
                buffers = param._buffers
                keep = kept_count(layer.numel, self.k)
                # binary layers with one alpha get it from the fused mask pass
                one = param.binary and param.alpha_mode == "layer"
                jobs.append(
                    (
                        self._selector(layer.path),
                        layer.scores,  # type: ignore[arg-type]
                        keep,
                        buffers["mask"],  # type: ignore[arg-type]
                        buffers["scratch"],  # type: ignore[arg-type]
                        layer.weight if one else None,
                        buffers["alpha"] if one else None,
                    )
                )
                if param.kept != keep:
                    param.kept = keep
            for layer, written in zip(layers, top_abs_many(jobs), strict=True):
                layer.alpha_set = written

    def _global(self, layers: list[Layer]) -> None:
        a = torch.cat([layer.scores.detach().abs().view(-1) for layer in layers])  # type: ignore[union-attr]
        mask = torch.empty_like(a)
        self._selector("*").select(a, kept_count(a.numel(), self.k), mask)
        for layer, part in zip(layers, mask.split([layer.numel for layer in layers]), strict=True):
            layer.mask.view(-1).copy_(part)
            layer.param.kept = None  # per-layer counts are free under global scope

    def _importance(self, layer: Layer) -> torch.Tensor:
        """The L2 norm of |scores| of each filter (output channel) or input channel."""
        s = layer.scores.detach().abs()  # type: ignore[union-attr]
        return s.transpose(0, self._dim).flatten(1).norm(dim=1)

    @property
    def _dim(self) -> int:
        return 0 if self.granularity == "filter" else 1

    def _write_groups(self, layer: Layer, groups: torch.Tensor) -> None:
        """Expand a 0/1 value per filter (channel) to the layer's mask."""
        shape = [1] * layer.mask.dim()
        shape[self._dim] = -1
        layer.mask.copy_(groups.view(shape).expand_as(layer.mask))
        layer.param.kept = None  # the ticket and alpha count the mask itself

    def _structured(self, layer: Layer) -> None:
        importance = self._importance(layer)
        keep = kept_count(importance.numel(), self.k)
        groups = torch.empty_like(importance)
        self._selector(layer.path).select(importance, keep, groups)
        self._write_groups(layer, groups)

    def _global_structured(self, layers: list[Layer]) -> None:
        """Filters (channels) of all layers ranked together by their RMS (see the class)."""
        rms = []
        for layer in layers:
            importance = self._importance(layer)
            rms.append(importance / math.sqrt(layer.numel // importance.numel()))
        a = torch.cat(rms)
        groups = torch.empty_like(a)
        self._selector("*").select(a, kept_count(a.numel(), self.k), groups)
        for layer, part in zip(layers, groups.split([r.numel() for r in rms]), strict=True):
            self._write_groups(layer, part)


class Fixed(MaskRule):
    """Masks that never change (fine-tuning, magnitude tickets): nothing to recompute."""

    def update(self, layers: list[Layer], training: bool) -> None:
        return None


@torch.no_grad()
def init_scores(layers: Iterable[Layer], how: str, generator: torch.Generator | None) -> None:
    """Initialise scores.

    "kaiming-uniform": U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as edge-popup (nn.Conv2d's default).
    "hydra": sqrt(6/fan_in) * W / max|W| per layer, so the first mask is the magnitude mask.
    "magnitude": |W| (then the mask stays the magnitude mask unless scores train).
    """
    for layer in layers:
        s, w = layer.scores, layer.weight
        assert s is not None
        if how == "kaiming-uniform":
            bound = 1.0 / math.sqrt(layer.fan_in)
            s.copy_(torch.rand(s.shape, generator=generator, dtype=s.dtype) * 2 * bound - bound)
        elif how == "hydra":
            peak = w.abs().max().clamp_min(torch.finfo(w.dtype).tiny)
            s.copy_(math.sqrt(6.0 / layer.fan_in) * w / peak)
        elif how == "magnitude":
            s.copy_(w.abs())
        else:
            raise ValueError(f"unknown score init '{how}'")
