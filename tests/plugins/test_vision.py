"""Idx files (MNIST, Fashion-MNIST): damaged ones are a usage error naming the file."""

import gzip
import shutil

import pytest

from ticketkit.errors import UsageError
from ticketkit.plugins.datasets.vision import read_idx


def test_a_real_file_reads(fashion):
    labels = read_idx(fashion / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and int(labels.max()) == 9


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda b: b"", "no unsigned-byte idx header"),
        (lambda b: b[: len(b) // 2], "truncated?"),
        (lambda b: b"\x00\x00\x08\x01" + b[8:], "truncated?"),  # a size field gone
    ],
)
def test_damaged_files_are_usage_errors(tmp_path, damage, why, fashion):
    good = gzip.decompress((fashion / "t10k-labels-idx1-ubyte.gz").read_bytes())
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(damage(good))
    with pytest.raises(UsageError, match=f"{path} is not a readable idx file.*{why}"):
        read_idx(path)


def test_a_truncated_gzip_is_a_usage_error(tmp_path, cli, fashion):
    data = tmp_path / "data"
    shutil.copytree(fashion, data)
    gz = data / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:1000])
    r = cli(
        *"prune --method biprop --k 0.5 --arch mlp --dataset fashion-mnist --epochs 0".split(),
        *("--data", data, "--out", tmp_path / "runs"),
    )
    assert r.code == 2 and r.err.startswith(f"Error: {gz} is not a readable idx file"), r.err
