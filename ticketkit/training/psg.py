"""`finetune --psg`: the predictive sign gradient (PSG) backward, as an *emulation*.

PSG comes from E2-Train (Wang et al., NeurIPS 2019) in the variant Peek-a-Boo trains with (Chen
et al., ICLR 2022; research notes pab-synflow-bop.md section 6): the weight gradient of each
conv/linear layer is computed from low-precision operands, the layer input quantised to
`msb-bits` (8) and the output gradient to `msb-bits-grad` (16), and entries under
`threshold * max|G|` of the layer are zeroed (relative, 1e-7 in Peek-a-Boo's CIFAR recipe);
`sign=true` takes sign(G) as E2-Train does (Peek-a-Boo does not). The forward pass and the
gradient sent to earlier layers stay full precision, as in Peek-a-Boo.

This emulates what low-precision hardware would compute; on a GPU or CPU it saves no time or
energy (the quantised operands are float tensors and the products run at full precision). It
exists to measure the accuracy such hardware would reach.

Quantiser (E2-Train's): step (M - lo) / 2^b with lo = -M (signed) or 0, deterministic rounding,
zeros kept exactly. Ranges: inputs, the batch mean of each sample's max |x|; output gradients,
the max over the tensor. Differences from the reference: the weight gradient comes straight
from the quantised operands (`torch.nn.grad.conv2d_weight`), not from a second "MSB" forward
whose backward is discarded; an input is quantised signed where it has negative entries (the
reference: only the first conv, which sees the normalised image); every masked Conv2d and
Linear gets PSG (the reference: convolutions only).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ticketkit.errors import UsageError
from ticketkit.specs import option, parse_options


@dataclass(frozen=True)
class PSGOptions:
    msb_bits: int = option(8, "bits of the layer inputs in the weight gradient")
    msb_bits_grad: int = option(16, "bits of the output gradients in the weight gradient")
    threshold: float = option(1e-7, "weight-gradient entries under threshold * max|G| are zeroed")
    sign: bool = option(False, "use sign(G) (E2-Train); Peek-a-Boo does not")


def psg_options(values: dict[str, Any]) -> PSGOptions:
    """`--psg-option` values checked and typed; bad names or ranges are UsageErrors."""
    opts = parse_options(PSGOptions, values, "--psg")
    for name in ("msb_bits", "msb_bits_grad"):
        if not 1 <= getattr(opts, name) <= 24:
            raise UsageError(f"--psg-option {name.replace('_', '-')} must be in 1..24")
    if opts.threshold < 0:
        raise UsageError("--psg-option threshold must be >= 0")
    return opts


def quantize(x: torch.Tensor, bits: int, bound: torch.Tensor, signed: bool) -> torch.Tensor:
    """E2-Train's uniform quantiser on [-bound, bound) (signed) or [0, bound); zeros stay 0."""
    if not bool(bound > 0):
        return x
    lo = -bound if signed else torch.zeros_like(bound)
    step = (bound - lo) / 2**bits
    q = ((x - lo) / step).clamp_(0, 2**bits - 1).round_()
    return (q * step + lo) * (x != 0)


def quantized_input(x: torch.Tensor, bits: int) -> torch.Tensor:
    bound = x.abs().flatten(1).amax(1).mean() if x.dim() > 1 else x.abs().max()
    return quantize(x, bits, bound, signed=bool((x < 0).any()))


def quantized_grad(g: torch.Tensor, bits: int) -> torch.Tensor:
    return quantize(g, bits, g.abs().max(), signed=True)


def finish(gw: torch.Tensor, opts: PSGOptions) -> torch.Tensor:
    """Zero the entries under threshold * max|G|; take the sign if asked."""
    if opts.threshold:
        gw = gw * (gw.abs() >= opts.threshold * gw.abs().max())
    return torch.sign(gw) if opts.sign else gw


class _PSGConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, module, opts):  # type: ignore[override]
        ctx.save_for_backward(x, w)
        ctx.module, ctx.opts, ctx.has_bias = module, opts, b is not None
        return module._conv_forward(x, w, b)

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        x, w = ctx.saved_tensors
        m, opts = ctx.module, ctx.opts
        args = (m.stride, m.padding, m.dilation, m.groups)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv2d_input(x.shape, w, gy, *args)
        if ctx.needs_input_grad[1]:
            xq, gq = quantized_input(x, opts.msb_bits), quantized_grad(gy, opts.msb_bits_grad)
            gw = finish(torch.nn.grad.conv2d_weight(xq, w.shape, gq, *args), opts)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None, None


class _PSGLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, opts):  # type: ignore[override]
        ctx.save_for_backward(x, w)
        ctx.opts, ctx.has_bias = opts, b is not None
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        x, w = ctx.saved_tensors
        opts = ctx.opts
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = gy @ w
        if ctx.needs_input_grad[1]:
            xq = quantized_input(x.reshape(-1, x.shape[-1]), opts.msb_bits)
            gq = quantized_grad(gy.reshape(-1, gy.shape[-1]), opts.msb_bits_grad)
            gw = finish(gq.t() @ xq, opts)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.reshape(-1, gy.shape[-1]).sum(0)
        return gx, gw, gb, None


def _conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return _PSGConv2d.apply(x, self.weight, self.bias, self, self._psg)


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _PSGLinear.apply(x, self.weight, self.bias, self._psg)


def attach_psg(modules: list[tuple[str, nn.Module]], opts: PSGOptions) -> None:
    """Give these layers the PSG backward (their forward is unchanged). Each must be a
    Conv2d (zero padding) or a Linear: others are a UsageError naming the layer."""
    for path, module in modules:
        if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
            forward = _conv_forward
        elif isinstance(module, nn.Linear):
            forward = _linear_forward
        else:
            raise UsageError(
                f"--psg: layer {path} is a {type(module).__name__}; PSG emulates the backward "
                f"of Conv2d (zero padding) and Linear layers only"
            )
        module._psg = opts  # type: ignore[assignment]
        module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]
