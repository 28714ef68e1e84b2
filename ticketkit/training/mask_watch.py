"""Each epoch's mask statistics for the metrics line (and so TensorBoard): the weights kept,
each layer's density, and the fraction of mask entries that changed since the last epoch.

Why: a score method's subnetwork churns early and settles late (edge-popup and biprop users
watch this to choose epochs), and a rewire method's per-layer densities drift where its
regrowth is not per layer (DSR, RigL with ERK). The seeds log the same to TensorBoard.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ticketkit.masks import masked_layers


class MaskWatch:
    """Remembers the masks at the last look; `stats()` compares and remembers again."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = masked_layers(model)
        self.last = [layer.mask.detach().bool().clone() for layer in self.layers]

    def stats(self) -> dict[str, Any]:
        """{"kept": count, "density": {layer: fraction}, "mask_changed": fraction}; {} for a
        model without masks. One host transfer for all layers."""
        if not self.layers:
            return {}
        kept, changed = [], []
        for layer, last in zip(self.layers, self.last, strict=True):
            now = layer.mask.detach().bool()
            kept.append(now.count_nonzero())
            changed.append((now != last).count_nonzero())
            last.copy_(now)
        counts = torch.stack([torch.stack(kept), torch.stack(changed)]).tolist()
        total = sum(layer.numel for layer in self.layers)
        return {
            "kept": sum(counts[0]),
            "density": {
                layer.path: round(n / layer.numel, 6)
                for layer, n in zip(self.layers, counts[0], strict=True)
            },
            "mask_changed": round(sum(counts[1]) / total, 6),
        }
