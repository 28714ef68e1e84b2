"""What a dataset gives and an architecture is built for (torch-free, so plugin base classes
and the CLI can name these types without importing torch)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class InputSpec:
    """What an architecture is built for."""

    channels: int
    height: int
    width: int
    classes: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> InputSpec:
        return cls(**json.loads(text))

    def __str__(self) -> str:
        return f"{self.channels}x{self.height}x{self.width} images in {self.classes} classes"


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return self.labels.numel()
