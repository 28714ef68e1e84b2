import pytest
import torch

from ticketkit.errors import UsageError
from ticketkit.training.data import Loader, crop_flip, load_dataset


def test_fashion_mnist_found_in_the_system_dir_without_flags(fashion, monkeypatch):
    monkeypatch.delenv("TICKETKIT_DATA", raising=False)
    ds = load_dataset("fashion-mnist")
    assert len(ds.train) == 60000 and len(ds.test) == 10000
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape[1:] == (1, 28, 28)
    assert ds.input.classes == 10 and sorted(ds.test.labels.unique().tolist()) == list(range(10))


def test_subset_is_fixed_across_runs(fashion):
    a = load_dataset("fashion-mnist", subset=500)
    b = load_dataset("fashion-mnist", subset=500)
    assert len(a.train) == 500 and torch.equal(a.train.labels, b.train.labels)
    with pytest.raises(UsageError, match="larger than the training set"):
        load_dataset("digits", subset=10**6)


def test_digits_is_bundled():
    ds = load_dataset("digits")
    assert ds.input.height == 8 and len(ds.train) + len(ds.test) == 1797


def test_missing_dataset_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETKIT_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TICKETKIT_DATA", str(tmp_path))
    with pytest.raises(UsageError, match="dataset 'cifar10' not found .*TICKETKIT_OFFLINE"):
        load_dataset("cifar10")


def test_loader_is_deterministic_per_epoch_and_normalised():
    ds = load_dataset("digits")
    loader = Loader(ds, ds.train, 64, train=True, seed=3)
    first = [y for _, y in loader.batches(0)]
    again = [y for _, y in loader.batches(0)]
    other = [y for _, y in loader.batches(1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    x = torch.cat([x for x, _ in Loader(ds, ds.train, 512, train=False).batches()])
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_crop_flip_keeps_shape_and_content():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    out = crop_flip(images, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == images.shape and out.dtype == torch.uint8


def test_missing_data_names_the_package_and_the_files(cli, tmp_path, monkeypatch):
    import shutil

    from ticketkit.training import data

    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TICKETKIT_OFFLINE", "1")
    monkeypatch.delenv("TICKETKIT_DATA", raising=False)
    r = cli(*"prune --method biprop --arch conv4 --k 0.2 --dataset fashion-mnist".split())
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "t10k-labels-idx1-ubyte.gz" in r.err and "--data DIR" in r.err
    if shutil.which("apt-get"):
        assert "apt-get install dataset-fashion-mnist" in r.err
    assert not (tmp_path / "runs").exists()
