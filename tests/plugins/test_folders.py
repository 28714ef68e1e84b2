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


def test_imagenet_streams_224_rgb_with_imagenet_statistics(tmp_path):
    """Any image size and mode is cropped to 3x224x224: the standard train and eval views."""
    import numpy as np
    import torch
    from PIL import Image

    from ticketkit.training.data import Loader
    from ticketkit.training.streaming import Files

    rng = np.random.default_rng(0)
    for part, shapes in (("train", [(300, 200), (90, 120)]), ("val", [(256, 400)])):
        for wnid in ("n01440764", "n01443537"):
            folder = tmp_path / part / wnid
            folder.mkdir(parents=True)
            for i, (h, w) in enumerate(shapes):
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.JPEG", format="JPEG")
            Image.fromarray(pixels[:, :, 0]).save(folder / "grey.png")  # converted to RGB
    ds = load_dataset("imagenet", str(tmp_path))
    assert isinstance(ds.train, Files) and (len(ds.train), len(ds.test)) == (6, 4)
    assert (ds.input.channels, ds.input.height, ds.input.width) == (3, 224, 224)
    assert ds.classes == 2 and ds.mean == (0.485, 0.456, 0.406)
    train = [x for x, _ in Loader(ds, ds.train, 4, train=True, seed=0).batches()]
    test = [x for x, _ in Loader(ds, ds.test, 4, train=False).batches()]
    assert [tuple(x.shape) for x in train] == [(4, 3, 224, 224), (2, 3, 224, 224)]
    assert [tuple(x.shape) for x in test] == [(4, 3, 224, 224)]
    assert all(x.dtype == torch.float32 and torch.isfinite(x).all() for x in train + test)


def kaggle_imagenet(root):
    """Kaggle's ILSVRC layout: ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/ flat}, and
    LOC_val_solution.csv at the top (the first word of a PredictionString is the class)."""
    import numpy as np
    from PIL import Image

    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    rng = np.random.default_rng(0)
    rows = ["ImageId,PredictionString"]
    for c, wnid in enumerate(("n01440764", "n01443537")):
        (data / "train" / wnid).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / "train" / wnid / f"{wnid}_{i}.JPEG")
        for i in range(3):
            name = f"ILSVRC2012_val_0000000{3 * c + i + 1}"
            (data / "val").mkdir(exist_ok=True)
            pixels = rng.integers(0, 256, (60, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / "val" / f"{name}.JPEG")
            rows.append(f"{name},{wnid} 1 2 30 40 {wnid} 3 4 20 20")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return data


def test_imagenet_reads_kaggles_flat_val_and_its_solution_file(tmp_path, cli):
    data = kaggle_imagenet(tmp_path)
    ds = load_dataset("imagenet", str(data))
    assert (len(ds.train), len(ds.test)) == (4, 6) and ds.classes == 2
    assert ds.test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert [path.rsplit("_", 1)[1] for path in ds.test.paths[:2]] == [
        "00000001.JPEG",
        "00000002.JPEG",
    ]

    (tmp_path / "LOC_val_solution.csv").unlink()  # a flat val/ that nothing labels
    args = "prune --method biprop --arch mlp --k 0.5 --dataset imagenet".split()
    result = cli(*args, "--data", data, "--out", tmp_path / "runs")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "not sorted into class folders" in result.err and "LOC_val_solution.csv" in result.err


def fashion_tree(root, fashion, train_per_class=20, val_per_class=10, side=72):
    """Fashion-MNIST images as PNG class folders, upscaled past the 64 px at which
    `imagefolder` streams them."""
    from PIL import Image

    ds = load_dataset("fashion-mnist", str(fashion))
    for split, part, count in (
        (ds.train, "train", train_per_class),
        (ds.test, "val", val_per_class),
    ):
        for label in range(10):
            folder = root / part / f"class{label}"
            folder.mkdir(parents=True)
            picked = (split.labels == label).nonzero().flatten()[:count]
            for i in picked.tolist():
                image = Image.fromarray(split.images[i, 0].numpy())
                image.resize((side, side), Image.Resampling.BILINEAR).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_a_streamed_imagefolder_trains_prunes_and_evaluates(tmp_path, cli, fashion):
    data = fashion_tree(tmp_path / "pngs", fashion)
    from ticketkit.training.streaming import Files

    ds = load_dataset("imagefolder", str(data))
    assert isinstance(ds.train, Files) and (len(ds.train), len(ds.test)) == (200, 100)
    common = ["--dataset", "imagefolder", "--data", data, "--workers", "2", "--out", tmp_path]
    dense = cli(*"pretrain --arch mlp --epochs 2 --lr 0.05".split(), *common, "--json")
    assert dense.code == 0, dense.err
    assert json.loads(dense.out)["metrics"]["test_acc1"] > 20  # 10 classes: chance is 10
    args = "prune --method edgepopup --arch mlp --k 0.5 --epochs 2 --batch-size 50"
    ticket = cli(*args.split(), *common)
    assert ticket.code == 0, ticket.err
    evaluated = cli("eval", ticket.out.strip(), "--data", data, "--workers", "2", "--json")
    assert evaluated.code == 0, evaluated.err
    record = json.loads(evaluated.out)
    assert record["metrics"] == record["recorded"]  # the same decoding as the run's
    assert record["metrics"]["test_acc1"] > 20 and "Warning" not in evaluated.err
