"""Accuracy of magnitude, HYDRA and BiP tickets of one pretrained network, side by side.

pretrain once -> for each method and k: prune -> finetune (the same budget for every method)
-> test accuracy, next to the dense accuracy. Runs through ticketkit's job API, so every step
is a resumable run directory under --out (re-running skips what is finished).

    python benchmarks/prune_accuracy.py --arch resnet20 --dataset fashion-mnist \
        --pretrain-epochs 15 --prune-epochs 5 --finetune-epochs 5 --ks 0.5,0.2,0.05
"""

from __future__ import annotations

import argparse
import time

from ticketkit import jobs
from ticketkit.runs.config import FinetuneConfig, PretrainConfig, PruneConfig, resolve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--prune-epochs", type=int, default=5)
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--ks", default="0.5,0.2,0.05")
    p.add_argument("--methods", default="magnitude,hydra,bip")
    p.add_argument("--option", action="append", default=[], help="method:name=value, e.g. bip:ig=0")
    p.add_argument("--out", default="runs/bench-prune-accuracy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    common = {
        "dataset": args.dataset,
        "subset": args.subset,
        "out": args.out,
        "seed": args.seed,
        "eval_every": 0,
    }
    began = time.time()
    dense = jobs.pretrain(
        resolve(PretrainConfig, {**common, "arch": args.arch, "epochs": args.pretrain_epochs})
    )
    print(
        f"dense {args.arch} on {args.dataset}: {dense.metrics['test_acc1']:.2f}% ({dense.path})",
        flush=True,
    )
    options: dict[str, dict[str, str]] = {}
    for item in args.option:
        method, _, assignment = item.partition(":")
        name, _, value = assignment.partition("=")
        options.setdefault(method, {})[name] = value
    rows = []
    for method in args.methods.split(","):
        for k in (float(k) for k in args.ks.split(",")):
            pruned = jobs.prune(
                resolve(
                    PruneConfig,
                    {
                        **common,
                        "method": method,
                        "k": k,
                        "epochs": args.prune_epochs,
                        "options": options.get(method, {}),
                        "input": str(dense.path),
                    },
                )
            )
            tuned = jobs.finetune(
                resolve(
                    FinetuneConfig,
                    {**common, "epochs": args.finetune_epochs, "input": str(pruned.path)},
                )
            )
            rows.append((method, k, pruned.metrics["test_acc1"], tuned.metrics["test_acc1"]))
            print(
                f"{method:9} k={k:<5} pruned {rows[-1][2]:6.2f}%  finetuned {rows[-1][3]:6.2f}%",
                flush=True,
            )
    print(f"\n| method | k | after prune | after finetune ({args.finetune_epochs} ep) | dense |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for method, k, a, b in rows:
        print(f"| {method} | {k} | {a:.2f} | {b:.2f} | {dense.metrics['test_acc1']:.2f} |")
    print(f"\n{time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
