"""Artifacts: the safetensors files commands pass to each other.

Two kinds share one envelope: a `Checkpoint` (dense weights, from `pretrain`) and a `Ticket`
(masks plus sign bits or kept values, from `prune`/`finetune`; `artifacts/ticket.py`). Both carry
string metadata (`format`, `arch`, `arch_kwargs`, `input`, `dataset`, `metrics`, `config`,
`parent`, versions, creation time) and a `payload_sha256` over every tensor, are written
atomically, and are verified on reading: format tag, checksum, and every shape against the
architecture rebuilt from the registry. Reading one kind where the other is expected names both.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ticketkit.errors import UsageError
from ticketkit.runs.directory import atomic_write
from ticketkit.training.data import InputSpec

JSON_KEYS = (
    "arch_kwargs",
    "input",
    "method_options",
    "init",
    "metrics",
    "layers",
    "config",
    "stopped",
)
KINDS = {"ticketkit.ticket/1": "ticket", "ticketkit.checkpoint/1": "dense checkpoint"}


def payload_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def open_artifact(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if path.is_dir():
        raise UsageError(f"{path} is a directory; pass the ticket or checkpoint file in it")
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
            return raw, {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}"
        ) from None


@dataclass
class Bundle:
    """Parsed metadata plus raw tensors of one artifact file."""

    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    FORMAT: ClassVar[str] = ""

    @classmethod
    def read(cls, path: str | Path) -> Any:
        """Open and verify a file of this kind; every problem is a one-line UsageError."""
        path = Path(path)
        raw, tensors = open_artifact(path)
        found = raw.get("format")
        if found != cls.FORMAT:
            what = KINDS.get(found or "", None)
            expected = KINDS[cls.FORMAT]
            if what:
                raise UsageError(f"{path} is a {what}, but a {expected} is needed here")
            raise UsageError(f"{path} is not a ticketkit {expected} ({found or 'no format tag'})")
        try:
            meta = {k: (json.loads(v) if k in JSON_KEYS else v) for k, v in raw.items()}
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: corrupt metadata ({exc})") from None
        if payload_sha256(tensors) != meta.get("payload_sha256"):
            raise UsageError(
                f"{path}: payload checksum mismatch (the file was modified or damaged)"
            )
        return cls(meta, tensors)

    def save(self, path: Path) -> Path:
        """Write atomically, with the format tag, versions, time and payload checksum."""
        import ticketkit

        self.meta = {
            **self.meta,
            "format": self.FORMAT,
            "ticketkit_version": ticketkit.__version__,
            "torch_version": torch.__version__.split("+")[0],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "payload_sha256": payload_sha256(self.tensors),
        }
        text = {
            k: (json.dumps(v, sort_keys=k != "layers") if k in JSON_KEYS else str(v))
            for k, v in self.meta.items()
        }
        return atomic_write(
            Path(path), lambda tmp: save_file(self.tensors, str(tmp), metadata=text)
        )

    @property
    def input(self) -> InputSpec:
        return InputSpec(**self.meta["input"])

    def _load_into(self, state: dict[str, torch.Tensor], device: torch.device | str) -> nn.Module:
        """Rebuild the declared arch and load `state` into it, naming any mismatch."""
        from ticketkit.models import build_model

        model = build_model(self.meta["arch"], self.input, **self.meta["arch_kwargs"])
        expected = model.state_dict()
        wrong = [n for n in state if n in expected and state[n].shape != expected[n].shape]
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        problems = []
        if wrong:
            n = wrong[0]
            problems.append(
                f"shape of {n} is {tuple(state[n].shape)}, arch has {tuple(expected[n].shape)}"
            )
        if missing:
            problems.append(f"arch has {missing[0]} but the file does not")
        if extra:
            problems.append(f"file has {extra[0]} but the arch does not")
        if problems:
            raise UsageError(
                f"{KINDS[self.FORMAT]} does not match its declared arch '{self.meta['arch']}': "
                + "; ".join(problems)
            )
        model.load_state_dict(state)
        return model.to(device).eval()


class Checkpoint(Bundle):
    """A dense trained network: its full state dict and how to rebuild it."""

    FORMAT = "ticketkit.checkpoint/1"

    @classmethod
    def from_model(cls, model: nn.Module, **meta: Any) -> Checkpoint:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        return cls(meta, state)

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        return self._load_into(dict(self.tensors), device)
