"""Streamed datasets: files decoded by DataLoader workers, reproducible per (seed, epoch)
whatever the number of workers, sharded under torchrun as the in-memory path is."""

import random

import pytest
import torch

from ticketkit.errors import UsageError
from ticketkit.training.data import Loader, load_dataset, take_subset
from ticketkit.training.streaming import Files, Keys, crop_box, eval_view, train_view


def write_tree(root, per_class=8, val_per_class=3, side=72, classes=3):
    """Random RGB PNGs in class folders, larger than 64 px so that `imagefolder` streams them;
    each class has its own brightness, so labels and pixels can be checked together."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, count in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / part / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (side + i, side, 3)) + 80 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("tree"))


def epoch(loader, n):
    return [(x.clone(), y.clone()) for x, y in loader.batches(n)]


def same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True)
    )


def test_large_images_stream_at_their_size_with_sampled_statistics(tree):
    ds = load_dataset("imagefolder", str(tree))
    assert isinstance(ds.train, Files) and len(ds.train) == 24 and len(ds.test) == 9
    assert (ds.input.channels, ds.input.height, ds.input.width, ds.classes) == (3, 72, 72, 3)
    x = torch.cat([x for x, _ in Loader(ds, ds.test, 4, train=False).batches()])
    assert x.shape == (9, 3, 72, 72) and x.is_contiguous(memory_format=torch.channels_last)
    assert abs(float(x.mean())) < 0.5  # normalised by the training sample's statistics


def test_streamed_batches_depend_on_seed_and_epoch_not_on_workers(tree):
    ds = load_dataset("imagefolder", str(tree), workers=0)
    alone = Loader(ds, ds.train, 8, train=True, seed=5)
    first = epoch(alone, 0)
    ds.workers = 2
    pooled = Loader(ds, ds.train, 8, train=True, seed=5)
    assert same(first, epoch(pooled, 0))  # augmentation drawn per sample, not per worker
    assert same(first, epoch(pooled, 0))  # the persistent workers, a second pass
    assert not same(first, epoch(pooled, 1))
    assert not same(first, epoch(Loader(ds, ds.train, 8, train=True, seed=6), 0))
    labels = torch.cat([y for _, y in first])
    assert sorted(labels.tolist()) == sorted(ds.train.labels.tolist())  # each sample once
    # the pixels are the labelled image's: brightness follows the class
    brightness = torch.cat([x.mean(dim=(1, 2, 3)) for x, _ in first])
    assert brightness[labels == 0].max() < brightness[labels == 1].min()
    assert brightness[labels == 1].max() < brightness[labels == 2].min()


def test_evaluation_order_is_the_files_order(tree):
    ds = load_dataset("imagefolder", str(tree), workers=2)
    labels = torch.cat([y for _, y in Loader(ds, ds.test, 4, train=False).batches()])
    assert torch.equal(labels, ds.test.labels)


def test_each_rank_takes_its_share_of_the_global_batch(tree, monkeypatch):
    ds = load_dataset("imagefolder", str(tree))
    whole = epoch(Loader(ds, ds.train, 10, train=True, seed=1), 3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        loader = Loader(ds, ds.train, 10, train=True, seed=1)
        assert len(loader) == 3
        shares.append(epoch(loader, 3))
    for (x, y), share0, share1 in zip(whole, *shares, strict=True):
        assert torch.equal(share0[0], x[0::2]) and torch.equal(share1[0], x[1::2])
        assert torch.equal(share0[1], y[0::2]) and torch.equal(share1[1], y[1::2])


def test_keys_pad_an_uneven_epoch_like_distributed_sampler(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    keys = Keys(23, 8, train=True, seed=0, sharded=True)
    batches = list(keys)
    assert len(batches) == len(keys) == 3 and all(len(b) == 2 for b in batches)


def test_subset_of_a_streamed_set_is_the_in_memory_rule(tree):
    ds = load_dataset("imagefolder", str(tree), subset=10)
    again = take_subset(load_dataset("imagefolder", str(tree)).train, 10)
    order = torch.randperm(24, generator=torch.Generator().manual_seed(0))[:10]
    full = load_dataset("imagefolder", str(tree)).train
    assert ds.train.paths == again.paths == [full.paths[i] for i in order.tolist()]
    assert len(Loader(ds, ds.train, 4, train=True)) == 3


def test_crop_boxes_stay_inside_and_follow_torchvision_ranges():
    rng = random.Random(0)
    for width, height in ((72, 72), (500, 375), (30, 400), (400, 30)):
        for _ in range(50):
            left, top, right, bottom = crop_box(width, height, rng)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            area = (right - left) * (bottom - top) / (width * height)
            assert area <= 1.0 and (area >= 0.07 or min(width, height) < 50)


def test_views_have_the_requested_size():
    from PIL import Image

    image = Image.new("RGB", (500, 375))
    assert eval_view(image, 224).size == (224, 224)
    assert train_view(image, 224, random.Random(1)).size == (224, 224)
    assert eval_view(Image.new("L", (30, 90)), 28).size == (28, 28)


def test_an_unreadable_image_is_one_usage_error(tmp_path):
    root = write_tree(tmp_path, per_class=3, val_per_class=1)
    (root / "val" / "class1" / "0.png").write_bytes(b"not a png")
    ds = load_dataset("imagefolder", str(root), workers=2)
    with pytest.raises(UsageError, match=r"class1/0.png is not a readable image"):
        list(Loader(ds, ds.test, 4, train=False).batches())


def test_negative_workers_are_refused(tree):
    with pytest.raises(UsageError, match="--workers must be >= 0"):
        load_dataset("imagefolder", str(tree), workers=-1)


@pytest.mark.gpu
def test_streamed_batches_on_cuda_are_pinned_and_the_same(tree):
    ds = load_dataset("imagefolder", str(tree), workers=2)
    on_cpu = epoch(Loader(ds, ds.train, 8, train=True, seed=2), 0)
    loader = Loader(ds, ds.train, 8, train=True, seed=2, device="cuda")
    assert loader.stream is not None and loader.stream.pin
    on_gpu = epoch(loader, 0)
    assert all(x.is_cuda and y.is_cuda for x, y in on_gpu)
    for (x, y), (u, v) in zip(on_cpu, on_gpu, strict=True):
        assert torch.allclose(x, u.cpu()) and torch.equal(y, v.cpu())
