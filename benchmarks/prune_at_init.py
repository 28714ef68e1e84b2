"""Pruning at initialisation: random, magnitude-init, SNIP, GraSP and SynFlow, side by side.

Part 1 (accuracy): for each method, k and seed, `ticketkit prune --method M --arch conv4
--dataset fashion-mnist --k K --seed S` (SynFlow `-o iterations=100`, the others 1 iteration,
their default): the masks are chosen at initialisation, then the kept weights train for
`--epochs` with the same recipe for every method (SGD 0.1, cosine, the methods' own defaults:
global scope, kaiming-normal init, unscaled). Test top-1 (%) mean +- std over the seeds.

Part 2 (cost): 100 SynFlow iterations on resnet18 at CIFAR input size (3x32x32, 10 classes) on
CPU, each measurement in a fresh subprocess: wall time of the scoring (`choose_masks`) and peak
resident memory (Linux VmHWM, reset through /proc/self/clear_refs just before, minus VmRSS at
that point). Against it, one dense training epoch of resnet18 on 50,000 images of that size:
ticketkit's training loop (`fit`) over a subset of random images, per-image time scaled to
50,000 images. No CIFAR-10 is installed: the images are random, which does not change the
cost of either.

Runs through ticketkit's job API; every accuracy run is a resumable run directory under --out.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/prune_at_init.py --out /tmp/bench/pai
    (defaults: conv4, --subset 3000 --epochs 1 --batch-size 32 --lr 0.01, --ks
     0.1,0.01,0.001, --seeds 0,1,2, the full test set; cost: resnet18, 512 images, 2 repeats)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

METHODS = "random,magnitude-init,snip,grasp,synflow"


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


# ---- part 2, in a fresh subprocess ---------------------------------------------------------


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _synthetic(n: int):
    import torch

    from ticketkit.inputs import Split
    from ticketkit.training.data import Dataset

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    split = Split(images, labels)
    return Dataset(
        "random-cifar-shape", split, split, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), "crop-flip"
    )


def child(what: str, arch: str, iterations: int, images: int) -> dict[str, Any]:
    import torch

    from ticketkit import registry
    from ticketkit.models import build_model, init_weights
    from ticketkit.runs.config import PretrainConfig, PruneConfig, resolve

    torch.manual_seed(0)
    ds = _synthetic(images)
    if what == "synflow":
        from ticketkit.jobs.prune import make_method
        from ticketkit.jobs.stages import ready

        cfg = resolve(
            PruneConfig,
            {
                "method": "synflow",
                "arch": arch,
                "k": 0.01,
                "options": {"iterations": iterations},
                "device": "cpu",
                "dataset": "cifar10",
                "epochs": 1,
            },
            beneath=registry.method_defaults,
        )
        method = make_method(cfg, "prune")
        model = build_model(arch, ds.input)
        init_weights(model, cfg.init or type(method).default_init, seed=0)
        inner = method.choose_masks
        measured: dict[str, Any] = {}

        def timed(m):
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            rss = _status("VmRSS")
            t0 = time.perf_counter()
            inner(m)
            measured["seconds"] = time.perf_counter() - t0
            measured["peak_bytes"] = _status("VmHWM") - rss
            measured["rss_before"] = rss

        method.choose_masks = timed
        ready(method, model, ds, cfg)
        weights = sum(p.numel() for p in model.parameters())
        return {"what": what, "arch": arch, "iterations": iterations, "params": weights, **measured}
    # one dense epoch of `images` random images in ticketkit's loop
    from ticketkit.jobs.stages import ready
    from ticketkit.plugin import Method, Setup
    from ticketkit.training.loop import fit

    cfg = resolve(
        PretrainConfig,
        {"arch": arch, "dataset": "cifar10", "epochs": 1, "device": "cpu", "eval_every": 0},
    )
    model = build_model(arch, ds.input)
    method = Method(None, Setup(k=1.0, epochs=1, seed=0))
    ready(method, model, ds, cfg)
    Path("/proc/self/clear_refs").write_text("5")
    rss = _status("VmRSS")
    record = fit(model, method, ds, cfg, None, None, phase="pretrain")
    return {
        "what": what,
        "arch": arch,
        "images": images,
        "seconds": record["seconds"],
        "batch_size": cfg.batch_size,
        "peak_bytes": _status("VmHWM") - rss,
    }


def cut_test_set(out: str, n: int) -> str:
    """A --data directory: the installed Fashion-MNIST training files (linked) and the first
    `n` test images and labels, as idx files."""
    import gzip
    import struct

    from ticketkit.training.data import candidate_dirs

    src = next(
        d
        for d in candidate_dirs("fashion-mnist", None)
        if (d / "t10k-images-idx3-ubyte.gz").exists()
    )
    dst = Path(out) / f"fashion-mnist-test{n}"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        if not (dst / name).exists():
            (dst / name).symlink_to(src / name)
    images = gzip.open(src / "t10k-images-idx3-ubyte.gz").read()
    labels = gzip.open(src / "t10k-labels-idx1-ubyte.gz").read()
    magic, _, rows, cols = struct.unpack(">IIII", images[:16])
    (dst / "t10k-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", magic, n, rows, cols) + images[16 : 16 + n * rows * cols]
    )
    magic, _ = struct.unpack(">II", labels[:8])
    (dst / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", magic, n) + labels[8 : 8 + n])
    return str(dst)


def run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- main ----------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--child", nargs=4, metavar=("WHAT", "ARCH", "ITERATIONS", "IMAGES"), help=argparse.SUPPRESS
    )
    p.add_argument("--arch", default="conv4")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument(
        "--data", default=None, help="dataset directory (--data); default: where ticketkit looks"
    )
    p.add_argument(
        "--test-images",
        type=int,
        default=0,
        help="evaluate on the first N test images: a copy of the Fashion-MNIST files "
        "with the test set cut, under --out, passed as --data (0: the full test set)",
    )
    p.add_argument("--subset", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--ks", default="0.1,0.01,0.001")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--synflow-iterations", type=int, default=100)
    p.add_argument("--cost-arch", default="resnet18")
    p.add_argument(
        "--cost-images",
        type=int,
        default=512,
        help="random images in the timed dense epoch (scaled to 50,000)",
    )
    p.add_argument("--cost-repeats", type=int, default=2)
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--out", default="/tmp/bench/pai")
    args = p.parse_args()
    if args.child:
        what, arch, iterations, images = args.child
        print(json.dumps(child(what, arch, int(iterations), int(images))), flush=True)
        return

    began = time.time()
    report: dict[str, Any] = {"accuracy": {}, "cost": []}
    if args.test_images and args.data is None and args.dataset == "fashion-mnist":
        args.data = cut_test_set(args.out, args.test_images)
    if not args.skip_accuracy:
        from ticketkit import jobs, registry
        from ticketkit.runs.config import PruneConfig, resolve

        for seed in (int(s) for s in args.seeds.split(",")):
            for k in (float(k) for k in args.ks.split(",")):
                for method in args.methods.split(","):
                    t0 = time.time()
                    options = {"iterations": args.synflow_iterations} if method == "synflow" else {}
                    cfg = resolve(
                        PruneConfig,
                        {
                            "method": method,
                            "arch": args.arch,
                            "dataset": args.dataset,
                            "data": args.data,
                            "batch_size": args.batch_size,
                            "lr": args.lr,
                            "subset": args.subset,
                            "epochs": args.epochs,
                            "k": k,
                            "seed": seed,
                            "options": options,
                            "out": args.out,
                            "eval_every": 0,
                        },
                        beneath=registry.method_defaults,
                    )
                    result = jobs.prune(cfg)
                    acc = result.metrics["test_acc1"]
                    report["accuracy"].setdefault(f"{method}@{k}", []).append(acc)
                    print(
                        f"{method:14} k={k:<6} seed {seed}: {acc:6.2f}%  "
                        f"({time.time() - t0:.0f} s, {result.path})",
                        flush=True,
                    )
    if not args.skip_cost:
        for _ in range(args.cost_repeats):
            report["cost"].append(
                run_child("synflow", args.cost_arch, str(args.synflow_iterations), "64")
            )
            print(json.dumps(report["cost"][-1]), flush=True)
            report["cost"].append(run_child("epoch", args.cost_arch, "0", str(args.cost_images)))
            print(json.dumps(report["cost"][-1]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "prune_at_init.json").write_text(json.dumps(report, indent=1))

    if report["accuracy"]:
        ks = args.ks.split(",")
        print(
            f"\n{args.arch} on {args.dataset} (data {args.data or 'default'}), subset "
            f"{args.subset}, {args.epochs} epoch(s) after pruning, batch {args.batch_size}, lr "
            f"{args.lr:g}; test top-1 % (mean ± std over seeds {args.seeds}):\n"
        )
        print("| method | " + " | ".join(f"k = {k}" for k in ks) + " |")
        print("| --- | " + " | ".join("---:" for _ in ks) + " |")
        for method in args.methods.split(","):
            cells = [
                mean_std(report["accuracy"].get(f"{method}@{float(k)}", [float("nan")])) for k in ks
            ]
            print(f"| {method} | " + " | ".join(cells) + " |")
    if report["cost"]:
        syn = [c for c in report["cost"] if c["what"] == "synflow"]
        ep = [c for c in report["cost"] if c["what"] == "epoch"]
        syn_s = statistics.median(c["seconds"] for c in syn)
        epoch_s = statistics.median(c["seconds"] / c["images"] * 50000 for c in ep)
        print(
            f"\nCost on CPU, {args.cost_arch} at 3x32x32 (medians of {len(syn)} fresh "
            f"subprocesses each):\n"
        )
        print("| | wall time | peak RSS increase |")
        print("| --- | ---: | ---: |")
        print(
            f"| SynFlow, {args.synflow_iterations} iterations (float64, batch 1) "
            f"| {syn_s:.1f} s "
            f"| {statistics.median(c['peak_bytes'] for c in syn) / 2**20:.0f} MiB |"
        )
        print(
            f"| dense training epoch, 50,000 images (scaled from {ep[0]['images']}, batch "
            f"{ep[0]['batch_size']}) | {epoch_s:.1f} s "
            f"| {statistics.median(c['peak_bytes'] for c in ep) / 2**20:.0f} MiB |"
        )
        print(f"| ratio SynFlow / epoch | {syn_s / epoch_s:.3f} | |")
        print("\nruns: " + "; ".join(f"{c['what']} {c['seconds']:.1f} s" for c in report["cost"]))
    print(f"\n{time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
