"""ticketkit: find lottery tickets (sparse, optionally binarized subnetworks) of PyTorch models.

The public API. Importing `ticketkit` does not import torch; the model-level functions load it
on first use.

    from ticketkit import load_ticket
    model = load_ticket("runs/.../ticket.safetensors")   # a ready nn.Module

Plugin authors need `hookimpl`, the spec classes, the base classes in `ticketkit.plugin`
(`Method`, `ScoreMethod`, `WeightMethod`, `DatasetSource`, `Setup`, `Stage`, `Context`), the
mask API in `ticketkit.masks` and, for new mask families, `MaskRule`, `TopK`, `Layer`,
`Selector` and `kept_count`. docs/plugins.md lists every one: they are the stable plugin API.
"""

from __future__ import annotations

from typing import Any

from ticketkit.hookspecs import hookimpl
from ticketkit.specs import (
    ArchSpec,
    DatasetSpec,
    ExporterSpec,
    InitializerSpec,
    MethodSpec,
    NoOptions,
    OptimizerSpec,
    option,
)

__version__ = "0.1.0"

_LAZY = {
    "build_model": "ticketkit.models",
    "load_ticket": "ticketkit.artifacts.ticket",
    "save_ticket": "ticketkit.artifacts.ticket",
    "Ticket": "ticketkit.artifacts.ticket",
    "InputSpec": "ticketkit.inputs",
    "Method": "ticketkit.plugin",
    "ScoreMethod": "ticketkit.plugin",
    "WeightMethod": "ticketkit.plugin",
    "Setup": "ticketkit.plugin",
    "Stage": "ticketkit.plugin",
    "Context": "ticketkit.plugin",
    "DatasetSource": "ticketkit.plugin",
    "attach_masks": "ticketkit.masks",
    "masked_layers": "ticketkit.masks",
    "clear_optimizer_state": "ticketkit.masks",
    "MaskRule": "ticketkit.masks.rules",
    "TopK": "ticketkit.masks.rules",
    "Layer": "ticketkit.masks.layers",
    "Selector": "ticketkit.masks.select",
    "kept_count": "ticketkit.masks.select",
}

__all__ = [
    "ArchSpec",
    "DatasetSpec",
    "ExporterSpec",
    "InitializerSpec",
    "MethodSpec",
    "NoOptions",
    "OptimizerSpec",
    "hookimpl",
    "option",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ticketkit' has no attribute '{name}'")


def __dir__() -> list[str]:
    """The public names, the lazy ones included (`dir(ticketkit)`, tab completion)."""
    return sorted({*globals(), *__all__})
