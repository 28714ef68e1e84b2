"""Speed-up of one job trained by `torchrun --nproc_per_node=P` over the same job in one process.

Both run `ticketkit prune --method biprop` with the same global `--batch-size` (under torchrun
each rank trains on batch-size / P samples a step and DDP averages the gradients), on CPU. The
cores are shared out: the single process runs with OMP_NUM_THREADS = --cores, each of the P
torchrun workers with OMP_NUM_THREADS = --cores / P, so both use the same cores and the ratio
is what the extra processes buy, not extra threads. Runs alternate (one process, then torchrun,
then one process, ...) so machine drift falls on both; each run's epoch time is the median of
its epochs' "seconds" in metrics.jsonl (training only: from the epoch's first batch to its
last, including the DDP replica each epoch builds; not the start-up, not the evaluation),
leaving out the first epoch when there are several (warm-up). The speed-up of a repeat is the
single process's epoch time over torchrun's in that repeat; the median over repeats is printed
last. Test accuracies are printed too: they should agree (same global batch, same data).

The lead's run, on a quiet machine (nothing else training):

    python benchmarks/ddp_scaling.py --arch conv4 --dataset fashion-mnist --subset 8192 \
        --batch-size 128 --epochs 3 --repeats 3 --procs 2

A quick check that it works (seconds; its numbers mean nothing):

    python benchmarks/ddp_scaling.py --arch mlp --dataset digits --subset 512 --epochs 2 \
        --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def command(args: argparse.Namespace, procs: int, out: Path) -> list[str]:
    """The prune command, run by one process or by torchrun with `procs` workers."""
    launcher = [sys.executable, "-m", "ticketkit"]
    if procs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += [f"--nproc_per_node={procs}", "-m", "ticketkit"]
    job = ["prune", "--method", "biprop", "--arch", args.arch, "--dataset", args.dataset]
    job += ["--k", str(args.k), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    job += ["--device", "cpu", "--eval-every", "0", "--json", "--out", str(out)]
    return [*launcher, *job, *(["--subset", str(args.subset)] if args.subset else [])]


def timed_run(args: argparse.Namespace, procs: int, out: Path) -> tuple[float, float]:
    """(median epoch seconds, test accuracy) of one run in a fresh output directory."""
    env = {**os.environ, "TICKETKIT_OFFLINE": "1", "OMP_NUM_THREADS": str(args.cores // procs)}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(command(args, procs, out), capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{procs} process(es) failed:\n{done.stderr[-3000:]}")
    record = json.loads(done.stdout)
    metrics = Path(record["path"]).parent / "metrics.jsonl"
    seconds = [
        r["seconds"]
        for r in map(json.loads, metrics.read_text().splitlines())
        if r.get("phase") == "prune" and "seconds" in r
    ]
    return statistics.median(seconds[1:] or seconds), record["metrics"]["test_acc1"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="conv4")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--subset", type=int, default=8192, help="training images (0: all)")
    p.add_argument("--k", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=128, help="the global batch, both ways")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--procs", type=int, default=2, help="torchrun --nproc_per_node")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores to share out")
    args = p.parse_args()
    if args.batch_size % args.procs or args.cores < args.procs:
        p.error("--batch-size must split over --procs, and each process needs a core")
    print(
        f"prune biprop {args.arch} on {args.dataset} (subset {args.subset or 'all'}), global "
        f"batch {args.batch_size}, {args.epochs} epochs; 1 process x {args.cores} threads vs "
        f"{args.procs} x {args.cores // args.procs} threads (OMP_NUM_THREADS)",
        flush=True,
    )
    ratios = []
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as tmp:
        for repeat in range(args.repeats):
            one, acc1 = timed_run(args, 1, Path(tmp) / f"one-{repeat}")
            many, acc_many = timed_run(args, args.procs, Path(tmp) / f"many-{repeat}")
            ratios.append(one / many)
            print(
                f"repeat {repeat + 1}: epoch {one:.3f} s (1 process, {acc1:.2f}%) vs "
                f"{many:.3f} s ({args.procs} processes, {acc_many:.2f}%): "
                f"speed-up {ratios[-1]:.2f}x",
                flush=True,
            )
    print(f"median speed-up of {args.procs} processes over 1: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
