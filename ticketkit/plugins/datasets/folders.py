"""Datasets of image files in class folders: `imagefolder` (torchvision's ImageFolder layout),
`tiny-imagenet` (its own validation layout) and `imagenet`.

    DIR/train/<class>/*.png|jpg|...      (files may sit in sub-folders, e.g. <class>/images/)
    DIR/val/<class>/...  or  DIR/test/<class>/...
    tiny-imagenet-200: DIR/val/images/*.JPEG labelled by DIR/val/val_annotations.txt
    imagenet, Kaggle's layout: DIR/val/*.JPEG labelled by LOC_val_solution.csv above DIR

Small images are decoded into memory once, as uint8 tensors like the built-in datasets (so
batching, seeding, resuming and torchrun sharding are the same code): every image at the size
of the first training image (tiny-imagenet: 64x64), grey (1 channel) when that image is grey,
else RGB, normalised by the training set's per-channel mean and standard deviation, with no
augmentation. Folders of photos do not fit in memory, so the rule is: when the first training
image's shorter side is over `STREAM_ABOVE` (64) pixels, and always for `imagenet`, the source
is `streamed`: DataLoader workers decode the files each epoch with the ImageNet transforms
(training/streaming.py) at that shorter side, at most 224 (`imagenet`: 224), normalised by
statistics of a fixed sample of `STATS_SAMPLE` training images (`imagenet`: the usual ImageNet
constants). The rule depends on the files alone, so `eval` decodes a ticket's test set as its
run did. Classes are the sorted folder names, as in torchvision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ticketkit.errors import UsageError
from ticketkit.plugin import DatasetSource

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
STREAM_ABOVE = 64  # a shorter side in pixels: larger images stream from disk
STATS_SAMPLE = 256  # training images whose pixels estimate a streamed folder's mean and std


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolder(DatasetSource):
    """Class folders under DIR/train and DIR/val (or DIR/test): decoded into memory, or
    streamed when the first training image is over `STREAM_ABOVE` pixels."""

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
        if self.streamed or _first_side(train[0][0]) > STREAM_ABOVE:
            return self._streamed(train, test)
        train_split = _decode(train, None)
        shape = tuple(train_split.images.shape[1:])
        test_split = _decode(test, shape)
        x = train_split.images.float() / 255
        self.mean = tuple(x.mean(dim=(0, 2, 3)).tolist())  # type: ignore[misc]
        self.std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())  # type: ignore[misc]
        return train_split, test_split

    def _streamed(self, train: list, test: list) -> tuple[list, list]:
        """The file lists, once the size, channels and statistics the loader decodes them
        with are set from the first training image and a fixed sample."""
        import torch

        from ticketkit.training.streaming import eval_view

        self.streamed = True  # type: ignore[misc]
        self.size = size = min(_first_side(train[0][0]), 224)  # type: ignore[misc]
        self.channels = 1 if _is_grey(train[0][0]) else 3  # type: ignore[misc]
        picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        sample = [train[i] for i in picked[:STATS_SAMPLE].tolist()]
        x = _decode(sample, (self.channels, size, size), lambda i: eval_view(i, size))
        x = x.images.float() / 255
        self.mean = tuple(x.mean(dim=(0, 2, 3)).tolist())  # type: ignore[misc]
        self.std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())  # type: ignore[misc]
        return train, test

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


class ImageNet(ImageFolder):
    """ImageNet (ILSVRC-2012), streamed: train/<wnid>/ and val/<wnid>/ class folders (the
    validation images sorted into folders, as torchvision's and timm's scripts expect), 224x224
    RGB, the usual ImageNet mean and standard deviation. The classes are the folders found (1000
    for ImageNet; fewer for a subset such as Imagenette)."""

    name = "imagenet"
    classes = 1000
    streamed = True
    size = 224
    channels = 3
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    files = (
        "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, or a flat val/ labelled by Kaggle's "
        "LOC_val_solution.csv (in DIR or a folder above it)"
    )

    def _streamed(self, train: list, test: list) -> tuple[list, list]:
        return train, test  # the size, channels and statistics are ImageNet's

    def _labelled(self, folder: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
        """Class folders, or the flat val/ of Kaggle's ILSVRC layout (ILSVRC/Data/CLS-LOC/,
        its LOC_val_solution.csv three folders up: "ImageId,PredictionString", the first word
        of which is the wnid). The official tar's flat val/ needs its devkit: sorting it into
        folders first (as torchvision's and timm's scripts do) is what this reads."""
        flat = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not flat:
            return super()._labelled(folder, index)
        solution = next(
            (
                up / "LOC_val_solution.csv"
                for up in [folder, *folder.parents][:5]
                if (up / "LOC_val_solution.csv").is_file()
            ),
            None,
        )
        if solution is None:
            raise UsageError(
                f"{folder} holds images not sorted into class folders: sort them into "
                f"val/<wnid>/ (the devkit's labels), or put Kaggle's LOC_val_solution.csv in "
                f"{folder.parent}"
            )
        labels = {}
        for line in solution.read_text().splitlines()[1:]:
            image, _, prediction = line.partition(",")
            if prediction.split()[:1] and prediction.split()[0] in index:
                labels[image] = index[prediction.split()[0]]
        missing = [p.name for p in flat if p.stem not in labels]
        if missing:
            raise UsageError(
                f"{solution} labels no class of train/ for {len(missing)} images of {folder} "
                f"(first: {missing[0]})"
            )
        return [(p, labels[p.stem]) for p in flat]


def _first_side(path: Path) -> int:
    """The shorter side of an image, read from its header (no decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return min(image.size)
    except (OSError, UnidentifiedImageError) as exc:
        raise UsageError(f"{path} is not a readable image ({exc})") from None


def _is_grey(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as image:
        return image.mode in ("L", "1", "I;16", "I")


def _decode(items: list[tuple[Path, int]], shape: tuple[int, ...] | None, view: Any = None) -> Any:
    """The images as one uint8 tensor (N, C, H, W) at `shape` (default: the first image's), or
    as `view` (a PIL image to a PIL image) makes each."""
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
                if view is not None:
                    image = view(image)
                elif image.size != (shape[2], shape[1]):
                    image = image.resize((shape[2], shape[1]), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise UsageError(f"{path} is not a readable image ({exc})") from None
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    images = torch.from_numpy(np.stack(arrays))
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return Split(images, labels)
