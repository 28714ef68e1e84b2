"""The ticket bundle: a small, self-describing safetensors file (DESIGN §5).

Per prunable layer `L`:
  `L.mask`   uint8, mask bits packed 8 per byte, row-major, little-endian bit order;
  `L.sign`   uint8, packed sign bits (1 = positive) of the kept weights only, in mask order;
  `L.alpha`  float32 scale, a scalar or one per output channel          (sign layers);
  `L.values` float32 kept weights, in mask order                         (value layers);
  `L.sign` alone where the kept weights are +-|W0|, W0 regenerated from the ticket's `init`
  record (`weights: init-seed`, Peek-a-Boo's sign-trained tickets; artifacts/init_seed.py).
Everything else the network needs (biases, BatchNorm statistics, dense layers) is stored as
`state.<name>`. A layer is stored as signs exactly when its kept weights are +-alpha, which is
detected from the weights themselves, so the encoding is always lossless: a binary ticket costs
(1 + k) bits per weight, and `ticketkit eval` reproduces the recorded accuracy exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ticketkit.artifacts.bundle import KINDS, Bundle, Checkpoint, open_artifact
from ticketkit.artifacts.init_seed import DIGEST, LazyInit, digest, matches
from ticketkit.errors import UsageError
from ticketkit.masks.sparsifier import sparsifier_of


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8, 8 per byte, element i at bit i % 8 of byte i // 8."""
    return torch.from_numpy(np.packbits(bits.flatten().cpu().numpy(), bitorder="little"))


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    bits = np.unpackbits(packed.cpu().numpy(), count=n, bitorder="little")
    return torch.from_numpy(bits.astype(bool))


def _sign_scale(kept: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """The scale alpha if every kept weight is +-alpha (per layer, else per output channel)."""
    if kept.numel() == 0:
        return torch.zeros(())
    mags = kept.abs()
    if bool((mags == mags[0]).all()) and mags[0] > 0:
        return mags[0].clone()
    # One scale per output channel: kept weights are in row-major order, so channel by channel.
    counts = mask.flatten(1).sum(1)
    per_channel = torch.zeros(mask.shape[0], dtype=kept.dtype)
    for c, chunk in enumerate(mags.split(counts.tolist())):
        if chunk.numel():
            if not bool((chunk == chunk[0]).all()) or chunk[0] == 0:
                return None
            per_channel[c] = chunk[0]
    return per_channel


class Ticket(Bundle):
    """A loaded or freshly made ticket: parsed metadata plus raw tensors."""

    FORMAT = "ticketkit.ticket/1"

    # -- making ------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, **meta: Any) -> Ticket:
        """Read the masks and weights off a model with a sparsifier attached."""
        sparsifier = sparsifier_of(model)
        if sparsifier is None:
            raise ValueError("the model has no masks attached")
        model.eval()
        sparsifier.refresh(training=False)
        tensors: dict[str, torch.Tensor] = {}
        layers: dict[str, Any] = {}
        masked = set()
        init = LazyInit(meta, [layer.path for layer in sparsifier.layers])
        with torch.no_grad():
            for layer in sparsifier.layers:
                mask = layer.mask.detach().cpu() != 0
                weight = layer.module.weight.detach().float().cpu()  # the effective weight
                kept = weight[mask]
                tensors[f"{layer.path}.mask"] = pack_bits(mask)
                alpha = _sign_scale(kept, mask)
                w0 = None if alpha is not None else init.get(layer.path)
                kind = "sign" if alpha is not None else "values"
                if alpha is not None:
                    tensors[f"{layer.path}.sign"] = pack_bits(kept > 0)
                    tensors[f"{layer.path}.alpha"] = alpha.float().contiguous()
                elif w0 is not None and matches(kept, mask, w0):  # +-|W0|: init_seed.py
                    tensors[f"{layer.path}.sign"] = pack_bits(kept > 0)
                    kind = "init-seed"
                else:
                    tensors[f"{layer.path}.values"] = kept.contiguous()
                layers[layer.path] = {
                    "shape": list(layer.shape),
                    "kept": int(mask.sum()),
                    "weights": kind,
                    **({DIGEST: digest(kept.abs())} if kind == "init-seed" else {}),
                }
                masked.add(layer.path)
            for name, value in model.state_dict().items():
                owner = name.split(".parametrizations.")[0]
                if ".parametrizations." in name and owner in masked:
                    continue
                tensors[f"state.{name}"] = value.detach().cpu().contiguous()
        kinds = {v["weights"] for v in layers.values()}
        meta = {**meta, "layers": layers, "weights": kinds.pop() if len(kinds) == 1 else "mixed"}
        return cls(meta, tensors)

    def masks(self) -> dict[str, torch.Tensor]:
        """Layer path -> bool mask of the weight's shape."""
        out = {}
        for path, info in self.meta["layers"].items():
            shape = info["shape"]
            n = int(np.prod(shape))
            out[path] = unpack_bits(self.tensors[f"{path}.mask"], n).view(shape)
        return out

    def weights(self) -> dict[str, torch.Tensor]:
        """Layer path -> dense weight (zeros where pruned)."""
        out = {}
        init = LazyInit(self.meta, list(self.meta["layers"]))
        for path, mask in self.masks().items():
            kept = int(mask.sum())
            if kept != self.meta["layers"][path]["kept"]:
                raise UsageError(
                    f"ticket layer {path}: mask has {kept} bits set, "
                    f"metadata says {self.meta['layers'][path]['kept']}"
                )
            w = torch.zeros(mask.shape, dtype=torch.float32)
            if f"{path}.values" in self.tensors:
                w[mask] = self.tensors[f"{path}.values"].float()
            elif self.meta["layers"][path]["weights"] == "init-seed":
                w[mask] = self._init_seed_weights(path, mask, init)
            else:
                signs = unpack_bits(self.tensors[f"{path}.sign"], kept).float() * 2 - 1
                alpha = self.tensors[f"{path}.alpha"].float()
                if alpha.dim() == 1:  # per output channel, kept weights in row-major order
                    counts = mask.flatten(1).sum(1)
                    signs = signs * alpha.repeat_interleave(counts)
                    alpha = torch.ones(())
                w[mask] = signs * alpha
            out[path] = w
        return out

    def _init_seed_weights(self, path: str, mask: torch.Tensor, init: LazyInit) -> torch.Tensor:
        """Sign bits times |W0| regenerated from the init record, checked by its digest."""
        w0 = init.get(path)
        if w0 is None or w0.shape != mask.shape:
            raise UsageError(f"ticket layer {path}: stored as init-seed, but no usable init record")
        mags = w0[mask]
        if digest(mags) != self.meta["layers"][path].get(DIGEST):
            raise UsageError(
                f"ticket layer {path}: |W0| regenerated from init {self.meta['init']} differs "
                f"from the saved one (made with torch {self.meta.get('torch_version', '?')})"
            )
        signs = unpack_bits(self.tensors[f"{path}.sign"], int(mask.sum())).float() * 2 - 1
        return signs * mags

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        """Rebuild the architecture from the registry and load the ticket into it."""
        state = {name[6:]: t for name, t in self.tensors.items() if name.startswith("state.")}
        state.update({f"{path}.weight": w for path, w in self.weights().items()})
        return self._load_into(state, device)


def save_ticket(model: nn.Module, path: str | Path, **meta: Any) -> Path:
    """Write the ticket of a masked model (public API): one a method prepared, or one masked
    with `ticketkit.masks.attach_masks`. A model made by `build_model` knows its arch, options
    and input; `meta` adds to or overrides what is recorded (dataset, method, k, metrics...)."""
    from ticketkit.models import BUILT_AS

    sparsifier = sparsifier_of(model)
    if sparsifier is None:
        raise ValueError(
            "the model has no masks: attach them with ticketkit.masks.attach_masks(model)"
        )
    built = model.__dict__.get(BUILT_AS, {})
    missing = [key for key in ("arch", "arch_kwargs", "input") if key not in {**built, **meta}]
    if missing:
        raise ValueError(
            f"save_ticket needs {', '.join(missing)} for a model not made by "
            f"ticketkit.build_model (pass them as keywords)"
        )
    kept = sum(sparsifier.kept().values()) / sum(layer.numel for layer in sparsifier.layers)
    defaults = {
        "method": "manual",
        "method_options": {},
        "k": round(kept, 6),
        "scope": "layer",
        "granularity": "unstructured",
        "init": {},
        "dataset": "",
        "metrics": {},
        "config": {},
        "parent": "",
    }
    return Ticket.from_model(model, **{**defaults, **built, **meta}).save(Path(path))


def load_ticket(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Load a ticket file into a ready-to-run nn.Module (public API)."""
    return Ticket.read(path).build(device)


def read_artifact(path: str | Path) -> Bundle:
    """A checkpoint or a ticket, whichever the file is."""
    raw, _ = open_artifact(Path(path))
    found = raw.get("format")
    if found not in KINDS:
        raise UsageError(
            f"{path} is not a ticketkit ticket or checkpoint ({found or 'no format tag'})"
        )
    return (Ticket if found == Ticket.FORMAT else Checkpoint).read(path)
