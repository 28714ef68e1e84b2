"""The supermask's mask rule: sampled while training, top-k when evaluating."""

from __future__ import annotations

import torch  # noqa: TID253 (implementation module, imported only when training)

from ticketkit import MaskRule, Selector, kept_count


def sigmoid_grad(s: torch.Tensor) -> torch.Tensor:
    """d sigmoid(s) / ds, the straight-through path of a Bernoulli(sigmoid(s)) sample."""
    p = torch.sigmoid(s)
    return p.mul_(1 - p)


class BernoulliTopK(MaskRule):
    """Training: m ~ Bernoulli(sigmoid(s)), resampled every forward. Eval: top-k of s per layer."""

    stochastic = True
    relax_grad = staticmethod(sigmoid_grad)

    def __init__(self, k: float) -> None:
        self.k = k
        self._selectors: dict[str, Selector] = {}

    @torch.no_grad()
    def update(self, layers, training: bool) -> None:
        for layer in layers:
            scores = layer.scores.detach()
            if training:
                torch.bernoulli(torch.sigmoid(scores), out=layer.mask)
            else:
                selector = self._selectors.setdefault(layer.path, Selector())
                selector.select(scores.reshape(-1), kept_count(layer.numel, self.k), layer.mask)
