"""`imagefolder` and `tiny-imagenet`: real PNG files in class folders, decoded into memory."""

import json

import pytest

from ticketkit.training.data import load_dataset


def write_pngs(root, per_class=30, val_per_class=6, layout="imagefolder"):
    """The digits arrays (8x8 grey, 0..16) as real PNG files in class folders."""
    import numpy as np
    from PIL import Image

    from ticketkit.plugins.datasets.digits import Digits

    train, test = Digits().read(root)
    for split, part, count in ((train, "train", per_class), (test, "val", val_per_class)):
        images, labels = split.images.numpy(), split.labels.numpy()
        written = {}
        notes = []
        for image, label in zip(images, labels):
            if written.get(label, 0) >= count:
                continue
            n = written[label] = written.get(label, 0) + 1
            name = f"c{label}_{n}.png"
            if layout == "tiny" and part == "val":
                folder = root / "val" / "images"
                notes.append(f"{name}\tn{label}\t0\t0\t8\t8")
            elif layout == "tiny":
                folder = root / "train" / f"n{label}" / "images"
            else:
                folder = root / part / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(image[0], dtype=np.uint8)).save(folder / name)
        if notes:
            (root / "val" / "val_annotations.txt").write_text("\n".join(notes) + "\n")


def test_imagefolder_prunes_and_evaluates_from_png_files(tmp_path, cli):
    data = tmp_path / "pngs"
    write_pngs(data)
    ds = load_dataset("imagefolder", str(data))
    assert tuple(ds.train.images.shape) == (300, 1, 8, 8) and len(ds.test) == 60
    assert ds.classes == 10 and 0 < ds.mean[0] < 1
    out = tmp_path / "runs"
    args = "prune --method edgepopup --arch mlp --dataset imagefolder --k 0.5 --epochs 2"
    result = cli(*args.split(), "--data", data, "--out", out)
    assert result.code == 0, result.err
    evaluated = cli("eval", result.out.strip(), "--data", data, "--json")
    assert evaluated.code == 0, evaluated.err
    assert json.loads(evaluated.out)["metrics"]["test_acc1"] > 20  # 10 classes: chance is 10


def test_tiny_imagenet_reads_its_val_annotations(tmp_path):
    write_pngs(tmp_path, per_class=3, val_per_class=2, layout="tiny")
    ds = load_dataset("tiny-imagenet", str(tmp_path))
    assert ds.classes == 10 and len(ds.train) == 30 and len(ds.test) == 20
    assert sorted(ds.test.labels.tolist()) == sorted(list(range(10)) * 2)


def test_a_folder_without_classes_is_one_usage_error(tmp_path, cli):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    result = cli(
        *"prune --method edgepopup --arch mlp --dataset imagefolder --k 0.5".split(),
        "--data",
        tmp_path,
        "--out",
        tmp_path / "runs",
    )
    assert (
        result.code == 2
        and result.err.startswith("Error:")
        and "one folder per class" in result.err
    )


@pytest.mark.parametrize("missing", ["train", "val"])
def test_a_missing_split_names_the_layout(tmp_path, cli, missing):
    write_pngs(tmp_path, per_class=1, val_per_class=1)
    import shutil

    shutil.rmtree(tmp_path / missing)
    result = cli(
        *"prune --method edgepopup --arch mlp --dataset imagefolder --k 0.5".split(),
        "--data",
        tmp_path,
        "--out",
        tmp_path / "runs",
    )
    assert result.code == 2 and "train/<class>" in result.err
