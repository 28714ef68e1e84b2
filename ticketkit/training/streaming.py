"""Datasets too large for memory (ImageNet): image files decoded by DataLoader workers.

A streamed split is a list of files (`Files`); each epoch its images are decoded again, in
`--workers` processes, with the standard ImageNet transforms at `size`: RandomResizedCrop
(scale 0.08-1, ratio 3/4-4/3, bilinear) and a horizontal flip to train, a resize of the
shorter side to `size * 256 / 224` and a centre crop to evaluate. Batches come out as uint8,
(pinned on CUDA), and are normalised on the device by the same `Loader` code as in-memory ones.

Reproducible as the in-memory path is: the epoch's order is `randperm` of a generator seeded
`seed * 1_000_003 + epoch` (the in-memory loader's), and the same generator draws one seed per
position of that order, from which the sample's crop and flip are drawn in whichever worker
decodes it. So the batches depend on (seed, epoch) only, not on the number of workers, and
under torchrun rank r takes every WORLD_SIZE-th sample of each global batch, augmented as in
one process (`distributed.shard`'s padding).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ticketkit.errors import UsageError
from ticketkit.training import distributed

SCALE = (0.08, 1.0)  # RandomResizedCrop's defaults (torchvision, the ImageNet recipe)
RATIO = (3 / 4, 4 / 3)


@dataclass
class Files:
    """A split that stays on disk: image paths, their labels, and the square side and channels
    every image is decoded to."""

    paths: list[str]
    labels: torch.Tensor  # int64, N
    size: int
    channels: int

    @classmethod
    def of(cls, items: list[tuple[Path | str, int]], size: int, channels: int) -> Files:
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        return cls([str(path) for path, _ in items], labels, size, channels)

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, index: torch.Tensor) -> Files:
        """The samples at `index` (a subset, or the scoring batches methods draw)."""
        picked = index.tolist()
        return Files([self.paths[i] for i in picked], self.labels[index], self.size, self.channels)


def crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (left, top, right, bottom): torchvision's sampling (ten tries at
    a random area and log-uniform aspect ratio, then the centre crop clamped to the ratios),
    drawn from `rng` rather than torch's global generator so each sample owns its draw."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def train_view(image, size: int, rng: random.Random):
    """RandomResizedCrop(size) then a horizontal flip with probability 1/2 (a PIL image)."""
    from PIL import Image

    box = crop_box(image.width, image.height, rng)
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def eval_view(image, size: int):
    """Resize the shorter side to size * 256 / 224 (256 for 224), then the centre size x size."""
    from PIL import Image

    short = int(round(size * 256 / 224))
    w, h = image.size
    if w <= h:
        w, h = short, int(short * h / w)
    else:
        w, h = int(short * w / h), short
    image = image.resize((w, h), Image.Resampling.BILINEAR)
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return image.crop((left, top, left + size, top + size))


class Decoded(torch.utils.data.Dataset):
    """Decodes one sample per key (index, seed): (uint8 C x size x size, label, problem), where
    problem names an unreadable file (raised in the main process as one clean error: an error
    raised in a worker comes back wrapped in its traceback)."""

    def __init__(self, files: Files, train: bool) -> None:
        self.files, self.train = files, train

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, str]:
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        index, seed = key
        f = self.files
        label = int(f.labels[index])
        try:
            with Image.open(f.paths[index]) as image:
                image = image.convert("L" if f.channels == 1 else "RGB")
                if self.train:
                    image = train_view(image, f.size, random.Random(seed))
                else:
                    image = eval_view(image, f.size)
                array = np.asarray(image, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            blank = torch.zeros(f.channels, f.size, f.size, dtype=torch.uint8)
            return blank, label, f"{f.paths[index]} is not a readable image ({exc})"
        pixels = torch.from_numpy(array.copy())
        pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
        return pixels.contiguous(), label, ""


def collate(
    samples: list[tuple[torch.Tensor, int, str]],
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images = torch.stack([s[0] for s in samples])
    labels = torch.tensor([s[1] for s in samples], dtype=torch.long)
    return images, labels, [s[2] for s in samples if s[2]]


class Keys:
    """The batch sampler: each batch as (index, seed) keys for epoch `epoch` (set before each
    pass, like DistributedSampler.set_epoch; read in the main process, so persistent workers
    see the new epoch)."""

    def __init__(self, n: int, batch_size: int, *, train: bool, seed: int, sharded: bool):
        self.n, self.batch_size, self.train, self.seed = n, batch_size, train, seed
        self.sharded, self.epoch = sharded, 0

    def __len__(self) -> int:
        if self.sharded:
            return distributed.steps(self.n, self.batch_size)
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if not self.train:
            for start in range(0, self.n, self.batch_size):
                yield [(i, 0) for i in range(start, min(start + self.batch_size, self.n))]
            return
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=gen)
        seeds = torch.randint(0, 2**62, (self.n,), generator=gen)
        if not self.sharded:
            for start in range(0, self.n, self.batch_size):
                part = slice(start, start + self.batch_size)
                yield list(zip(order[part].tolist(), seeds[part].tolist(), strict=True))
            return
        rank, world = distributed.rank(), distributed.world_size()
        for positions in distributed.shard(torch.arange(self.n), self.batch_size):
            mine = positions[rank::world]
            yield list(zip(order[mine].tolist(), seeds[mine].tolist(), strict=True))


class Stream:
    """uint8 batches of a `Files` split from a DataLoader (built on first use, kept for the
    next epochs so persistent workers are started once)."""

    def __init__(
        self,
        files: Files,
        batch_size: int,
        *,
        train: bool,
        seed: int,
        sharded: bool,
        workers: int,
        pin: bool,
    ) -> None:
        if workers < 0:
            raise UsageError(f"--workers must be >= 0, got {workers}")
        self.files, self.train, self.workers, self.pin = files, train, workers, pin
        self.keys = Keys(len(files), batch_size, train=train, seed=seed, sharded=sharded)
        self._loader: torch.utils.data.DataLoader | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def batches(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.keys.epoch = epoch
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                Decoded(self.files, self.train),
                batch_sampler=self.keys,
                num_workers=self.workers,
                collate_fn=collate,
                pin_memory=self.pin,
                persistent_workers=self.workers > 0,
            )
        for images, labels, problems in self._loader:
            if problems:
                raise UsageError(problems[0])
            yield images, labels
