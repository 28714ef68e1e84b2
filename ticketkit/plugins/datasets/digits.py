"""The scikit-learn digits set: 1,797 8x8 grey images of handwritten digits, bundled with
scikit-learn (no download). A fixed 80/20 split (seed 0); pixel values 0..16 become 0..255.
"""

from __future__ import annotations

from pathlib import Path

from ticketkit import hookimpl
from ticketkit.errors import UsageError
from ticketkit.plugin import DatasetSource
from ticketkit.specs import DatasetSpec


class Digits(DatasetSource):
    name = "digits"
    mean = (0.3057,)
    std = (0.3774,)
    needs_files = False

    def read(self, root: Path):
        import torch

        from ticketkit.training.data import Split

        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise UsageError(
                "dataset 'digits' needs scikit-learn: pip install 'ticketkit[digits]'"
            ) from None
        bunch = load_digits()
        images = torch.from_numpy(bunch.images).mul(255 / 16).round().clamp(0, 255).to(torch.uint8)
        labels = torch.from_numpy(bunch.target).long()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        cut = int(0.8 * len(labels))
        images = images.unsqueeze(1)
        train, test = order[:cut], order[cut:]
        return Split(images[train], labels[train]), Split(images[test], labels[test])


@hookimpl
def ticketkit_register_datasets(register):
    register(
        DatasetSpec(
            name="digits",
            summary="scikit-learn digits, 8x8 grey, 10 classes (bundled)",
            factory=Digits,
        )
    )
