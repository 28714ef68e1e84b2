"""Binary weights and binary activations (biprop, Diffenderfer & Kailkhura, ICLR 2021).

Weights: W_eff = alpha * sign(W) * m, with alpha the mean |W| of the kept weights, per layer
(the paper) or per output channel. That alpha is the least-squares optimal scale:
argmin_a ||m*W - a*m*sign(W)||^2 = sum(|W| m) / sum(m). No gradient flows through alpha.

Activations (MPT-1/1): y = sign(x) forward; backward multiplies by max(0, 2 - 2|x|), the
derivative of Bi-Real Net's piecewise-quadratic ApproxSign.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def scale_of(
    magnitudes: torch.Tensor, mask: torch.Tensor, alpha: torch.Tensor, kept: int | None = None
) -> torch.Tensor:
    """Set alpha = sum(|W| m) / sum(m) in place from |W|: a scalar, or one per output channel.

    `kept`, when the caller knows sum(m) already, saves a pass over the mask.
    """
    small = magnitudes.numel() <= 16384 and magnitudes.dtype in (torch.float32, torch.float64)
    if alpha.dim() == 0 and magnitudes.is_cpu and small:
        # numpy's dot costs ~1 us here, torch's dot and div ~8: this runs every step per layer
        total = np.dot(magnitudes.numpy().reshape(-1), mask.numpy().reshape(-1))
        count = kept if kept is not None else max(float(mask.sum()), 1.0)
        return alpha.fill_(float(total) / count)
    if alpha.dim() == 0:
        torch.dot(magnitudes.view(-1), mask.view(-1), out=alpha)
        return alpha.div_(kept if kept is not None else mask.sum().clamp_min(1))
    dims = tuple(range(1, magnitudes.dim()))
    kept_per_channel = mask.sum(dim=dims, keepdim=True).clamp_min(1)
    return torch.sum(magnitudes * mask, dim=dims, keepdim=True, out=alpha).div_(kept_per_channel)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * (2 - 2 * x.abs()).clamp_min_(0)


class SignActivation(nn.Module):
    """sign(x) with the Bi-Real clipped surrogate gradient; no learned scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SignSTE.apply(x)
