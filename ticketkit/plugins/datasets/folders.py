"""Datasets of image files in class folders: `imagefolder` (torchvision's ImageFolder layout)
and `tiny-imagenet` (its own validation layout).

    DIR/train/<class>/*.png|jpg|...      (files may sit in sub-folders, e.g. <class>/images/)
    DIR/val/<class>/...  or  DIR/test/<class>/...
    tiny-imagenet-200: DIR/val/images/*.JPEG labelled by DIR/val/val_annotations.txt

For now every image is decoded into memory once, as uint8 tensors like the built-in datasets
(so batching, seeding, resuming and torchrun sharding are the same code): fine for folders of
up to a few hundred thousand small images, not for ImageNet, which needs streaming through
DataLoader workers (issue 18). All images are resized to the size of the first training image
(tiny-imagenet: 64x64); they are grey (1 channel) when that image is grey, else RGB. Classes
are the sorted folder names, as in torchvision; normalisation uses the training set's
per-channel mean and standard deviation. No augmentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ticketkit.errors import UsageError
from ticketkit.plugin import DatasetSource

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolder(DatasetSource):
    """Class folders under DIR/train and DIR/val (or DIR/test), decoded into memory."""

    name = "imagefolder"
    files = "train/<class>/<images> and val/<class>/<images> (or test/), as torchvision's"

    def read(self, root: Path) -> Any:
        train_dir = root / "train"
        test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
        if not train_dir.is_dir() or test_dir is None:
            return None
        classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
        if len(classes) < 2:
            raise UsageError(f"{train_dir} must hold one folder per class (found {len(classes)})")
        index = {name: i for i, name in enumerate(classes)}
        train = [(p, index[c]) for c in classes for p in _images(train_dir / c)]
        test = self._labelled(test_dir, index)
        for part, items in (("train", train), (test_dir.name, test)):
            if not items:
                raise UsageError(f"{root / part} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.classes = len(classes)  # type: ignore[misc]
        train_split = _decode(train, None)
        shape = tuple(train_split.images.shape[1:])
        test_split = _decode(test, shape)
        x = train_split.images.float() / 255
        self.mean = tuple(x.mean(dim=(0, 2, 3)).tolist())  # type: ignore[misc]
        self.std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())  # type: ignore[misc]
        return train_split, test_split

    def _labelled(self, folder: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
        unknown = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name not in index)
        if unknown:
            raise UsageError(f"{folder} has classes not in train/: {', '.join(unknown[:5])}")
        return [(p, i) for c, i in index.items() for p in _images(folder / c)]


class TinyImageNet(ImageFolder):
    """Tiny ImageNet (tiny-imagenet-200): 64x64 RGB, 200 classes, val labelled by a file."""

    name = "tiny-imagenet"
    classes = 200
    files = "the extracted tiny-imagenet-200/ (train/<wnid>/images, val/val_annotations.txt)"

    def _labelled(self, folder: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
        notes = folder / "val_annotations.txt"
        if not notes.is_file():
            return super()._labelled(folder, index)
        items = []
        for line in notes.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) >= 2 and fields[1] in index:
                items.append((folder / "images" / fields[0], index[fields[1]]))
        return items


def _decode(items: list[tuple[Path, int]], shape: tuple[int, ...] | None) -> Any:
    """The images as one uint8 tensor (N, C, H, W) at `shape` (default: the first image's)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from ticketkit.training.data import Split

    arrays = []
    for path, _ in items:
        try:
            with Image.open(path) as image:
                if shape is None:
                    grey = image.mode in ("L", "1", "I;16", "I")
                    shape = (1 if grey else 3, image.height, image.width)
                image = image.convert("L" if shape[0] == 1 else "RGB")
                if image.size != (shape[2], shape[1]):
                    image = image.resize((shape[2], shape[1]), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise UsageError(f"{path} is not a readable image ({exc})") from None
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    images = torch.from_numpy(np.stack(arrays))
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return Split(images, labels)
