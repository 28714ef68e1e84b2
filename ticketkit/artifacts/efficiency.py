"""`ticketkit eval --efficiency`: what a ticket saves, measured rather than claimed.

Four numbers, each against the dense network: parameters (total and non-zero), bytes on disk
(the ticket file against the same weights as a float32 safetensors checkpoint, serialised here
to count them), FLOPs (the dense network's, and those of its kept weights only), and CPU
latency (the median of repeated forward passes at a fixed batch) of the masked model, as
methods run it during training, against the dense export. Unstructured sparsity saves bytes
and, on paper, FLOPs; on dense kernels it saves no time, and the latency column shows that
rather than a FLOP ratio dressed up as a speed-up. Where the ticket has channels that can be
removed exactly (structured.py), the structured network's parameters and latency are added: that
is where pruning can save time on dense kernels.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from typing import Any

import torch
from torch import nn

from ticketkit.artifacts.bundle import Bundle
from ticketkit.artifacts.export import fixed_batch, param_counts
from ticketkit.artifacts.ticket import Ticket

LATENCY_BATCH = 32
LATENCY_RUNS = 20
WARMUP = 3
NOTE = (
    "FLOPs count the multiply-adds (x2) of conv and linear layers only; kept FLOPs skip the "
    "pruned weights, which dense kernels still multiply: unstructured sparsity saves no time "
    "on them (compare the measured latencies), only bytes"
)


def efficiency(bundle: Bundle, path: str) -> dict[str, Any]:
    """The efficiency record of a ticket (or of a dense checkpoint, where nothing is masked)."""
    from pathlib import Path

    from safetensors.torch import save

    dense = bundle.build("cpu")
    total, nonzero = param_counts(dense)
    fp32 = {k: v.detach().float().contiguous() for k, v in dense.state_dict().items()}
    flops = layer_flops(dense, fixed_batch(bundle, 1))
    x = fixed_batch(bundle, LATENCY_BATCH)
    latency: dict[str, Any] = {"dense_export": median_ms(dense, x)}
    params: dict[str, Any] = {"total": total, "nonzero": nonzero}
    note = NOTE
    if isinstance(bundle, Ticket):
        latency["masked"] = median_ms(masked_model(bundle), x)
        small, why = structured_model(bundle)
        if small is not None:
            params["structured"] = sum(p.numel() for p in small.parameters())
            latency["structured_export"] = median_ms(small, x)
        note += f"; {why}"
    return {
        "params": params,
        "bytes": {"file": Path(path).stat().st_size, "dense_fp32": len(save(fp32))},
        "flops": {
            "dense": sum(v["dense"] for v in flops.values()),
            "kept": sum(v["kept"] for v in flops.values()),
            "per_image": True,
            "layers": flops,
        },
        "latency_ms": {
            **latency,
            "device": "cpu",
            "batch": LATENCY_BATCH,
            "runs": LATENCY_RUNS,
            "threads": torch.get_num_threads(),
        },
        "note": note,
    }


@torch.no_grad()
def layer_flops(model: nn.Module, x: torch.Tensor) -> dict[str, dict[str, int]]:
    """Per conv/linear layer, FLOPs for one image: every weight (dense) and non-zero weights
    only (kept). A weight is used once per output position (conv) or leading index (linear)."""
    found: dict[str, dict[str, int]] = {}
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

    def hook(name: str) -> Any:
        def count(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            w = module.weight
            # output positions (conv: N x spatial) or leading indices (linear) of one image
            channels = out.shape[-1] if isinstance(module, nn.Linear) else out.shape[1]
            uses = out.numel() // channels
            found[name] = {
                "dense": 2 * uses * w.numel(),
                "kept": 2 * uses * int(torch.count_nonzero(w)),
            }

        return count

    handles = [
        m.register_forward_hook(hook(name))
        for name, m in model.named_modules()
        if isinstance(m, kinds)
    ]
    try:
        model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return found


def structured_model(ticket: Ticket) -> tuple[nn.Module | None, str]:
    """The ticket with its empty channels removed, as `export --format structured` writes it
    (run here as the eager module, not the .pt2), or None and the reason there is none."""
    from ticketkit.artifacts import structured

    if importlib.util.find_spec("torch_pruning") is None:
        return None, f"structured export not measured: it needs {structured.HINT}"
    model = ticket.build("cpu")
    removal = structured.shrink(model, fixed_batch(ticket))
    if not removal.channels:
        return None, "no structured export: no channel of this ticket can be removed"
    gone = sum(removal.channels.values())
    return model.eval(), (
        f"structured = the network with its {gone} empty channels removed "
        "(`export --format structured`), timed as an eager PyTorch module"
    )


def masked_model(ticket: Ticket) -> nn.Module:
    """The ticket as methods run it: each masked layer's weight recomputed as W * m per
    forward through its parametrization."""
    from ticketkit.masks import attach_masks, masked_layers

    model = ticket.build("cpu")
    masks = ticket.masks()
    attach_masks(model, exclude=lambda path, module: path not in masks)
    for layer in masked_layers(model):
        layer.set_mask(masks[layer.path])
    return model.eval()


@torch.no_grad()
def median_ms(model: nn.Module, x: torch.Tensor) -> float:
    """Median wall time of one forward pass of `x`, in milliseconds, after a warm-up."""
    model.eval()
    for _ in range(WARMUP):
        model(x)
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
