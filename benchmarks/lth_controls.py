"""Lottery tickets against the LTH paper's two controls, and Early-Bird against full training.

Part 1: for each arch and seed, `find-ticket --method imp --levels 5 --rate 0.2 --rewind 0
--controls`: per pruned level the ticket, a random mask with the ticket's per-layer counts and
the ticket's mask with fresh random weights, all trained with the same budget. Table: top-1 (%)
mean +- std over the seeds per level.

Part 2: for each seed, `find-ticket --method imp --levels 1` with and without `--early-bird`,
run one after the other in this process (same order every seed: EB first). The dense phase's
wall time is taken from the progress reporter: from the first epoch of level 0 to the first
epoch of level 1 (so it includes the per-epoch Early-Bird mask checks, the pruning and the
checkpoints). Accuracy: the level-1 ticket of each (the same retraining budget).

Runs through ticketkit's job API, every search a resumable run directory under --out
(re-running reuses finished searches; the timing of a reused search is not measured again).

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/lth_controls.py --out /tmp/bench/lth
    (defaults: --controls mlp:10000:3:0.1,conv2:3000:1:0.01 --early-bird mlp:10000:20:0.1
     --levels 5 --rate 0.2 --seeds 0,1,2; SGD momentum 0.9, cosine, batch 128, eval only at
     the end of each level)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from ticketkit import jobs, registry
from ticketkit.runs.config import FindTicketConfig, resolve


class Clock:
    """A silent reporter that remembers when each stage's first epoch started."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}

    def start(self, description: str, total: int) -> None:
        # "find-ticket <stage> epoch i/n" (a one-stage run: "find-ticket epoch i/n")
        words = description.split()
        stage = words[1] if len(words) > 3 else "train"
        self.first.setdefault(stage, time.perf_counter())

    def advance(self, **fields: Any) -> None: ...
    def stop(self) -> None: ...
    def note(self, message: str) -> None: ...


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def search(
    common: dict[str, Any],
    arch: str,
    subset: int,
    epochs: int,
    lr: float,
    seed: int,
    options: dict[str, Any],
    clock: Clock | None = None,
    extra: dict | None = None,
):
    cfg = resolve(
        FindTicketConfig,
        {
            **common,
            "method": (extra or {}).get("method", "imp"),
            "arch": arch,
            "lr": lr,
            "subset": subset or None,
            "epochs": epochs,
            "seed": seed,
            "options": options,
            **{k: v for k, v in (extra or {}).items() if k != "method"},
        },
        beneath=registry.method_defaults,
    )
    return jobs.find_ticket(cfg, clock)


def parse_settings(text: str) -> list[tuple[str, int, int, float]]:
    out = []
    for item in text.split(","):
        if item:
            arch, subset, epochs, lr = item.split(":")
            out.append((arch, int(subset), int(epochs), float(lr)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument(
        "--controls",
        default="mlp:10000:3:0.1,conv2:3000:1:0.01",
        help="arch:subset:epochs per level:lr for part 1 (subset 0: all)",
    )
    p.add_argument(
        "--early-bird",
        default="mlp:10000:20:0.1",
        help="arch:subset:epochs:lr for part 2 (level 0 and level 1 each)",
    )
    p.add_argument(
        "--slimming",
        default="",
        help="arch:subset:epochs:lr for slimming with/without EB (-A binary_act=true)",
    )
    p.add_argument("--slimming-k", type=float, default=0.5)
    p.add_argument("--levels", type=int, default=5)
    p.add_argument("--rate", type=float, default=0.2)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="/tmp/bench/lth")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    common = {"dataset": args.dataset, "out": args.out, "eval_every": 0}
    began = time.time()
    report: dict[str, Any] = {"controls": {}, "early_bird": [], "slimming": []}

    # ---- part 1: tickets vs controls -------------------------------------------------------
    for arch, subset, epochs, lr in parse_settings(args.controls):
        per_level: dict[int, dict[str, list[float]]] = {}
        kept: dict[int, float] = {}
        for seed in seeds:
            t0 = time.time()
            result = search(
                common,
                arch,
                subset,
                epochs,
                lr,
                seed,
                {"levels": args.levels, "rate": args.rate, "rewind": "0", "controls": True},
            )
            for level in result.levels:
                row = per_level.setdefault(
                    level["level"], {"ticket": [], "random_mask": [], "random_reinit": []}
                )
                kept[level["level"]] = level["k"]
                row["ticket"].append(level["metrics"]["test_acc1"])
                for name, control in level.get("controls", {}).items():
                    row[name].append(control["metrics"]["test_acc1"])
            print(
                f"{arch} seed {seed}: {len(result.levels)} levels in {time.time() - t0:.0f} s "
                f"({result.path})",
                flush=True,
            )
        report["controls"][arch] = {
            "subset": subset,
            "epochs": epochs,
            "lr": lr,
            "kept": kept,
            "levels": per_level,
        }

    # ---- part 2: Early-Bird ----------------------------------------------------------------
    def eb_pair(arch, subset, epochs, lr, seed, extra, options):
        row: dict[str, Any] = {"arch": arch, "seed": seed, "method": extra.get("method", "imp")}
        for eb in (True, False):
            clock = Clock()
            t0 = time.perf_counter()
            result = search(
                common, arch, subset, epochs, lr, seed, {**options, "early_bird": eb}, clock, extra
            )
            total = time.perf_counter() - t0
            dense = (
                (clock.first["1"] - clock.first["0"]) if {"0", "1"} <= clock.first.keys() else None
            )
            summary = json.loads((Path(result.path).parent / "summary.json").read_text())
            tag = "eb" if eb else "full"
            row[f"{tag}_dense_s"] = dense
            row[f"{tag}_total_s"] = total
            row[f"{tag}_acc"] = result.metrics["test_acc1"]
            row[f"{tag}_path"] = str(result.path)
            if eb:
                row["eb_epoch"] = summary.get("early_bird", {}).get("epoch")
        print(json.dumps(row), flush=True)
        return row

    slimming = {"method": "slimming", "k": args.slimming_k, "arch_options": {"binary_act": True}}
    for key, settings, extra, options in (
        ("early_bird", args.early_bird, {}, {"levels": 1, "rate": args.rate, "rewind": "0"}),
        ("slimming", args.slimming, slimming, {}),
    ):
        for arch, subset, epochs, lr in parse_settings(settings):
            for seed in seeds:
                report[key].append(eb_pair(arch, subset, epochs, lr, seed, extra, options))

    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "lth_controls.json").write_text(json.dumps(report, indent=1, default=str))

    # ---- tables ----------------------------------------------------------------------------
    print(f"\nTickets vs controls (top-1 %, mean ± std over seeds {args.seeds}):\n")
    print(
        "| arch | subset x epochs, lr | level | weights remaining | ticket | random mask "
        "| random reinit |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    goals = []
    for arch, info in report["controls"].items():
        last = max(info["levels"])
        for level in sorted(info["levels"]):
            row = info["levels"][level]
            budget = f"{info['subset'] or 'all'} x {info['epochs']}, {info['lr']:g}"
            print(
                f"| {arch} | {budget} | {level} "
                f"| {100 * info['kept'][level]:.1f}% | {mean_std(row['ticket'])} "
                f"| {mean_std(row['random_mask'])} | {mean_std(row['random_reinit'])} |"
            )
        row = info["levels"][last]
        if row["random_mask"] and row["random_reinit"]:
            t = statistics.mean(row["ticket"])
            met = t > statistics.mean(row["random_mask"]) and t > statistics.mean(
                row["random_reinit"]
            )
            goals.append(
                f"{arch}: ticket beats both controls at level {last} "
                f"({100 * info['kept'][last]:.1f}% remaining): "
                f"{'met' if met else 'NOT met'}"
            )
    for kind in ("early_bird", "slimming"):
        rows = report[kind]
        if not rows:
            continue
        print(f"\n{kind.replace('_', '-')}: dense phase wall time and level-1 ticket accuracy\n")
        print(
            "| arch | method | seed | EB epoch | dense phase EB (s) | dense phase full (s) "
            "| ratio | ticket EB | ticket full | diff |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            ratio = (
                r["eb_dense_s"] / r["full_dense_s"]
                if r["eb_dense_s"] and r["full_dense_s"]
                else float("nan")
            )
            r["ratio"] = ratio
            print(
                f"| {r['arch']} | {r['method']} | {r['seed']} | {r['eb_epoch']} "
                f"| {r['eb_dense_s'] or float('nan'):.1f} "
                f"| {r['full_dense_s'] or float('nan'):.1f} "
                f"| {ratio:.3f} | {r['eb_acc']:.2f} | {r['full_acc']:.2f} "
                f"| {r['eb_acc'] - r['full_acc']:+.2f} |"
            )
        ratios = [r["ratio"] for r in rows]
        diffs = [r["eb_acc"] - r["full_acc"] for r in rows]
        print(
            f"| mean | | | | | | {statistics.mean(ratios):.3f} "
            f"| {statistics.mean(r['eb_acc'] for r in rows):.2f} "
            f"| {statistics.mean(r['full_acc'] for r in rows):.2f} "
            f"| {statistics.mean(diffs):+.2f} |"
        )
        goals.append(
            f"{kind}: dense-phase ratio {statistics.mean(ratios):.3f} (goal <= 0.5): "
            f"{'met' if statistics.mean(ratios) <= 0.5 else 'NOT met'}; accuracy "
            f"{statistics.mean(diffs):+.2f} points (goal within 1): "
            f"{'met' if abs(statistics.mean(diffs)) <= 1 else 'NOT met'}"
        )
    print()
    for g in goals:
        print("- " + g)
    print(f"\n{time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
