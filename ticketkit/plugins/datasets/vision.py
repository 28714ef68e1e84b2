"""Image classification datasets read through torchvision: MNIST, Fashion-MNIST, CIFAR-10/100.

MNIST-style idx files (plain or .gz) are read directly, so the Debian package
`dataset-fashion-mnist` (files straight under /usr/share/datasets/fashion-mnist) works with no
flag; torchvision's own layouts (`FashionMNIST/raw/...`) are found too. Downloads go through
torchvision. Normalisation constants are the usual per-channel training-set statistics.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import ClassVar

from ticketkit import hookimpl
from ticketkit.errors import UsageError
from ticketkit.plugin import DatasetSource
from ticketkit.plugins.datasets.folders import ImageFolder, ImageNet, TinyImageNet
from ticketkit.specs import DatasetSpec

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path):
    """An idx file (MNIST format, optionally gzipped) as a uint8 tensor."""
    import numpy as np
    import torch

    def broken(why: str) -> UsageError:
        return UsageError(f"{path} is not a readable idx file ({why}); replace it or pass --data")

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
        raise broken(str(exc) or type(exc).__name__) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise broken("no unsigned-byte idx header")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=min(4 + 4 * ndim, len(data)))
    if body.size != math.prod(dims):
        raise broken(f"{body.size} bytes of data for shape {tuple(dims)}: truncated?")
    return torch.from_numpy(body.copy()).view(*dims)


class IdxSource(DatasetSource):
    """MNIST and Fashion-MNIST: 28x28 grey images, 10 classes, no augmentation."""

    torchvision_name: ClassVar[str] = ""
    files = (
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
        "and t10k-labels-idx1-ubyte.gz, gzipped or not, directly or in DIR/raw"
    )

    def _find(self, root: Path, stem: str) -> Path | None:
        for folder in (root, root / "raw", root / self.torchvision_name / "raw"):
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    return folder / name
        return None

    def read(self, root: Path):
        from ticketkit.training.data import Split

        splits = []
        for part in ("train", "test"):
            images, labels = (self._find(root, stem) for stem in _IDX_FILES[part])
            if images is None or labels is None:
                return None
            x, y = read_idx(images), read_idx(labels)
            splits.append(Split(x.unsqueeze(1).contiguous(), y.long()))
        return splits[0], splits[1]

    def download(self, root: Path) -> None:
        import torchvision

        getattr(torchvision.datasets, self.torchvision_name)(str(root), download=True)


class FashionMNIST(IdxSource):
    name = "fashion-mnist"
    torchvision_name = "FashionMNIST"
    system_package = "dataset-fashion-mnist"
    mean = (0.2860,)
    std = (0.3530,)


class MNIST(IdxSource):
    name = "mnist"
    torchvision_name = "MNIST"
    mean = (0.1307,)
    std = (0.3081,)


class CIFAR10(DatasetSource):
    """CIFAR-10: 32x32 RGB, 10 classes, random crop (pad 4) and horizontal flip."""

    name = "cifar10"
    torchvision_name: ClassVar[str] = "CIFAR10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    augment = "crop-flip"
    files = "torchvision's extracted cifar-10-batches-py/ folder (data_batch_1..5, test_batch)"

    def read(self, root: Path):
        import torch
        import torchvision

        from ticketkit.training.data import Split

        cls = getattr(torchvision.datasets, self.torchvision_name)
        splits = []
        for train in (True, False):
            try:
                ds = cls(str(root), train=train, download=False)
            except RuntimeError:  # torchvision: "Dataset not found or corrupted"
                return None
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            splits.append(Split(x, torch.tensor(ds.targets, dtype=torch.long)))
        return splits[0], splits[1]

    def download(self, root: Path) -> None:
        import torchvision

        getattr(torchvision.datasets, self.torchvision_name)(str(root), download=True)


class CIFAR100(CIFAR10):
    name = "cifar100"
    torchvision_name = "CIFAR100"
    classes = 100
    files = "torchvision's extracted cifar-100-python/ folder (train, test, meta)"
    mean = (0.5071, 0.4866, 0.4409)
    std = (0.2673, 0.2564, 0.2762)


@hookimpl
def ticketkit_register_datasets(register):
    for source, summary in (
        (FashionMNIST, "Fashion-MNIST, 28x28 grey, 10 classes (Debian: dataset-fashion-mnist)"),
        (MNIST, "MNIST digits, 28x28 grey, 10 classes"),
        (CIFAR10, "CIFAR-10, 32x32 RGB, 10 classes, crop+flip augmentation"),
        (CIFAR100, "CIFAR-100, 32x32 RGB, 100 classes, crop+flip augmentation"),
        (ImageFolder, "class folders DIR/train/<class>, DIR/val/<class>; over 64px: streamed"),
        (TinyImageNet, "Tiny ImageNet (tiny-imagenet-200), 64x64 RGB, 200 classes, in memory"),
        (ImageNet, "ImageNet, DIR/train/<wnid>, DIR/val/<wnid>, 224x224 RGB, streamed"),
    ):
        register(DatasetSpec(name=source.name, summary=summary, factory=source))
