"""Datasets: where their files are, and fast deterministic batches from memory.

The small datasets fit in memory as uint8 images, so batches are cut from tensors instead
of a per-sample PIL pipeline: shuffling and augmentation are vectorised and seeded by
(seed, epoch), which makes runs reproducible and resumable at epoch boundaries. A source that
declares itself `streamed` (ImageNet) keeps its files on disk and is decoded each epoch by
DataLoader workers (`training/streaming.py`), seeded by (seed, epoch) too.

Files resolve in this order (DESIGN §4): `--data DIR`, `$TICKETKIT_DATA`,
`/usr/share/datasets/<name>` (e.g. Debian's dataset-fashion-mnist), then the cache
`~/.cache/ticketkit/data/<name>`, downloading there through torchvision when online.
`TICKETKIT_OFFLINE=1` forbids downloads.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ticketkit.errors import UsageError
from ticketkit.inputs import InputSpec, Split
from ticketkit.plugin import DatasetSource
from ticketkit.registry import get_dataset
from ticketkit.training import distributed
from ticketkit.training.streaming import Files, Stream

SYSTEM_DIR = Path("/usr/share/datasets")
EVAL_BATCH = 500  # fixed, so evaluation is bit-identical between training and `eval`


@dataclass
class Dataset:
    """A dataset in memory (or streamed from files), with its normalisation and augmentation."""

    name: str
    train: Split | Files
    test: Split | Files
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"  # "none" | "crop-flip"; streamed: always the ImageNet recipe
    workers: int = 0  # DataLoader processes decoding a streamed dataset (--workers)

    @property
    def input(self) -> InputSpec:
        if isinstance(self.train, Files):
            return InputSpec(self.train.channels, self.train.size, self.train.size, self.classes)
        _, c, h, w = self.train.images.shape
        return InputSpec(c, h, w, self.classes)


def load_for(
    made_for: InputSpec,
    name: str,
    data: str | None = None,
    subset: int | None = None,
    workers: int = 0,
) -> Dataset:
    """`load_dataset`, refusing a dataset whose images or classes differ from `made_for`
    (what an artifact's network was built for)."""
    ds = load_dataset(name, data, subset, workers)
    if ds.input != made_for:
        raise UsageError(
            f"the input was made for {made_for}, but dataset '{ds.name}' gives {ds.input}"
        )
    return ds


def candidate_dirs(name: str, data: str | None) -> list[Path]:
    dirs = []
    if data:
        if not Path(data).is_dir():
            raise UsageError(f"--data {data}: no such directory")
        dirs.append(Path(data))
    if os.environ.get("TICKETKIT_DATA"):
        dirs.append(Path(os.environ["TICKETKIT_DATA"]))
    dirs.append(SYSTEM_DIR / name)
    dirs.append(cache_dir() / name)
    return dirs


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ticketkit" / "data"


def offline() -> bool:
    return os.environ.get("TICKETKIT_OFFLINE", "") not in ("", "0")


def load_dataset(
    name: str, data: str | None = None, subset: int | None = None, workers: int = 0
) -> Dataset:
    """Find (or download) a registered dataset and return it in memory, or as file lists if
    its source is streamed (`workers`: the processes that decode those)."""
    if workers < 0:
        raise UsageError(f"--workers must be >= 0, got {workers}")
    source: DatasetSource = get_dataset(name).load()()
    splits = None
    looked: list[Path] = []
    if source.needs_files:
        for root in candidate_dirs(name, data):
            looked.append(root)
            for where in (root, root / name):
                if where.is_dir():
                    splits = source.read(where)
                    if splits:
                        break
            if splits or data:  # --data is the only place looked when it is given
                break
        if splits is None and data:
            # an explicit --data that does not hold the dataset is a mistake to report, not a
            # reason to fall back on the system copy (while the run records `data: DIR`)
            raise UsageError(
                f"--data {data}: dataset '{name}' is not there (looked in {data} and "
                f"{Path(data) / name}); --data DIR must hold {source.files or 'its files'}"
            )
        if splits is None:
            splits = _download(source, cache_dir() / name, looked)
    else:
        splits = source.read(Path("."))
        assert splits is not None
    train, test = splits
    if source.streamed:  # (path, label) lists, read after `read` set the size and channels
        train = Files.of(train, source.size, source.channels)
        test = Files.of(test, source.size, source.channels)
    if subset is not None:
        train = take_subset(train, subset)
    return Dataset(
        name, train, test, source.classes, source.mean, source.std, source.augment, workers
    )


def _download(source: DatasetSource, target: Path, looked: list[Path]) -> tuple[Split, Split]:
    where = ", ".join(str(p) for p in looked)
    if offline():
        raise UsageError(
            f"dataset '{source.name}' not found (looked in {where}) and TICKETKIT_OFFLINE is set; "
            + how_to_get(source)
        )
    try:
        target.mkdir(parents=True, exist_ok=True)
        source.download(target)
        splits = source.read(target)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(
            f"dataset '{source.name}' not found (looked in {where}) and the download failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
            + how_to_get(source)
        ) from None
    if splits is None:
        raise UsageError(f"dataset '{source.name}': downloaded files in {target} are unreadable")
    return splits


def how_to_get(source: DatasetSource) -> str:
    """The exact fix for missing files: the system package where apt-get exists (it installs
    them where ticketkit looks with no flag), the layout `--data DIR` expects, the download."""
    ways = []
    if source.system_package and shutil.which("apt-get"):
        ways.append(f"install them with `apt-get install {source.system_package}` (as root)")
    ways.append(f"pass --data DIR where DIR holds {source.files or 'its files'}")
    fix = "; or ".join(ways)
    return f"to fix: {fix}; with network access they are downloaded into {cache_dir()}"


def take_subset(split: Split | Files, n: int) -> Split | Files:
    """The first n samples of a fixed permutation (seed 0): the same subset for every run."""
    if n <= 0:
        raise UsageError(f"--subset must be positive, got {n}")
    if n > len(split):
        raise UsageError(f"--subset {n} is larger than the training set ({len(split)} samples)")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:n]
    return take(split, order)


def take(split: Split | Files, index: torch.Tensor) -> Split | Files:
    """The samples at `index`, in memory or as files."""
    if isinstance(split, Files):
        return split.take(index)
    return Split(split.images[index], split.labels[index])


class Loader:
    """Normalised (and, for training, shuffled and augmented) batches of one split."""

    def __init__(
        self,
        ds: Dataset,
        split: Split | Files,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size <= 0:
            raise UsageError(f"--batch-size must be positive, got {batch_size}")
        self.split, self.batch_size, self.train, self.seed = split, batch_size, train, seed
        self.sharded = train and distributed.active()  # under torchrun: this rank's share
        if self.sharded:
            distributed.check_batch(batch_size)
        self.device = torch.device(device)
        self.augment = ds.augment if train else "none"
        channels = split.channels if isinstance(split, Files) else split.images.shape[1]
        self.mean = torch.tensor(ds.mean, device=self.device).view(1, channels, 1, 1) * 255
        self.std = torch.tensor(ds.std, device=self.device).view(1, channels, 1, 1) * 255
        self.stream = None  # decoded from files by DataLoader workers
        if isinstance(split, Files):
            pin = self.device.type == "cuda"  # page-locked batches copy to the GPU async
            self.stream = Stream(
                split,
                batch_size,
                train=train,
                seed=seed,
                sharded=self.sharded,
                workers=ds.workers,
                pin=pin,
            )

    def __len__(self) -> int:
        if self.sharded:
            return distributed.steps(len(self.split), self.batch_size)
        return -(-len(self.split) // self.batch_size)

    def batches(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.stream is not None:
            for images, labels in self.stream.batches(epoch):
                yield self._to_device(images, labels)
            return
        n = len(self.split)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen) if self.train else None
        if self.sharded:
            assert order is not None
            yield from self._shares(order, gen)
            return
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size] if order is not None else None
            images = (
                self.split.images[idx]
                if idx is not None
                else self.split.images[start : start + self.batch_size]
            )
            labels = (
                self.split.labels[idx]
                if idx is not None
                else self.split.labels[start : start + self.batch_size]
            )
            if self.augment == "crop-flip":
                images = crop_flip(images, gen)
            yield self._to_device(images, labels)

    def _shares(
        self, order: torch.Tensor, gen: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of each global batch (every WORLD_SIZE-th sample from its rank),
        augmented as the whole global batch is, so the ranks together see what one process
        with the same --batch-size would."""
        rank, world = distributed.rank(), distributed.world_size()
        for idx in distributed.shard(order, self.batch_size):
            images, labels = self.split.images[idx], self.split.labels[idx]
            if self.augment == "crop-flip":
                images = crop_flip(images, gen)
            yield self._to_device(images[rank::world], labels[rank::world])

    def _to_device(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        x = x.contiguous(memory_format=torch.channels_last)  # faster convs on CPU and GPU
        return x, labels.to(self.device, non_blocking=True)


def crop_flip(images: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole uint8 batch."""
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = dx[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    return padded[
        torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols
    ]
