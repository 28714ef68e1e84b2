"""Dynamic sparse training against static sparse training and the dense network.

Part 1 (accuracy): for each setting (arch, k) and seed: the dense network (`ticketkit pretrain`
with the same recipe) and `ticketkit rewire --method M` for static, set, deepr, dsr, gmp, tied
and rigl (rigl from plugins-contrib/ticketkit-rigl), all with the same epochs, lr and subset.
The mask-update interval of set, dsr and rigl is `-o every=N` steps (given per setting: the
methods' default of 100 steps would give no update or one in these short runs); every other
option is the method's default. Test top-1 (%) mean +- std over the seeds.

Part 2 (cost): one training epoch of static, set, dsr and rigl (the setting's options, one
epoch each, `--force`), alternated in this process, the order rotated every round; the time is
the epoch's `seconds` in metrics.jsonl (the training loop only, mask updates included, not the
final evaluation). Ratio to the static epoch of the same round, median over the rounds.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/rewire_accuracy.py --out /tmp/bench/rewire
    (defaults: --settings mlp:0.02:20000:5:0.1:25,conv2:0.1:3000:2:0.05:10:32 --seeds 0,1,2
     --cost-rounds 7,2; SGD momentum 0.9, cosine, wd 1e-4; results in benchmarks/RESULTS.md)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from ticketkit import jobs, registry
from ticketkit.runs.config import PretrainConfig, RewireConfig, resolve

METHODS = "dense,static,set,deepr,dsr,gmp,tied,rigl"
EVERY = ("set", "dsr", "rigl")


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def parse_settings(text: str) -> list[dict[str, Any]]:
    out = []
    for item in text.split(","):
        if item:
            arch, k, subset, epochs, lr, every, *batch = item.split(":")
            out.append(
                {
                    "arch": arch,
                    "k": float(k),
                    "subset": int(subset) or None,
                    "epochs": int(epochs),
                    "lr": float(lr),
                    "every": every,
                    "batch": int(batch[0]) if batch else 128,
                }
            )
    return out


def train(
    method: str,
    s: dict[str, Any],
    seed: int,
    out: str,
    epochs: int | None = None,
    force: bool = False,
):
    common = {
        "arch": s["arch"],
        "dataset": "fashion-mnist",
        "subset": s["subset"],
        "epochs": epochs or s["epochs"],
        "lr": s["lr"],
        "seed": seed,
        "out": out,
        "batch_size": s["batch"],
        "eval_every": 0,
    }
    if method == "dense":
        return jobs.pretrain(resolve(PretrainConfig, common), force=force)
    options = {"every": s["every"]} if method in EVERY else {}
    cfg = resolve(
        RewireConfig,
        {**common, "method": method, "k": s["k"], "options": options},
        beneath=registry.method_defaults,
    )
    return jobs.rewire(cfg, force=force)


def epoch_seconds(result) -> float:
    """The last epoch's training seconds (a forced rerun appends to metrics.jsonl)."""
    lines = Path(result.path).parent.joinpath("metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r["seconds"] for r in records if "seconds" in r][-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--settings",
        default="mlp:0.02:20000:5:0.1:25,conv2:0.1:3000:2:0.05:10:32",
        help="arch:k:subset:epochs:lr:every[:batch], comma-separated (subset 0: all)",
    )
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--cost-methods", default="static,set,dsr,rigl")
    p.add_argument("--cost-rounds", default="7,2", help="rounds per setting")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--out", default="/tmp/bench/rewire")
    args = p.parse_args()
    settings = parse_settings(args.settings)
    methods = args.methods.split(",")
    began = time.time()
    report: dict[str, Any] = {"accuracy": {}, "cost": {}}

    if not args.skip_accuracy:
        for seed in (int(x) for x in args.seeds.split(",")):
            for s in settings:
                for method in methods:
                    t0 = time.time()
                    result = train(method, s, seed, args.out)
                    acc = result.metrics["test_acc1"]
                    report["accuracy"].setdefault(f"{s['arch']}@{s['k']}", {}).setdefault(
                        method, []
                    ).append(acc)
                    print(
                        f"{s['arch']} k={s['k']} {method:7} seed {seed}: {acc:6.2f}%  "
                        f"({time.time() - t0:.0f} s)",
                        flush=True,
                    )

    if not args.skip_cost:
        cost_methods = args.cost_methods.split(",")
        for s, rounds in zip(settings, (int(r) for r in args.cost_rounds.split(",")), strict=False):
            times: dict[str, list[float]] = {m: [] for m in cost_methods}
            for r in range(rounds):
                order = (
                    cost_methods[r % len(cost_methods) :] + cost_methods[: r % len(cost_methods)]
                )
                for method in order:
                    result = train(method, s, 0, str(Path(args.out) / "cost"), epochs=1, force=True)
                    times[method].append(epoch_seconds(result))
                print(
                    f"{s['arch']} round {r}: "
                    + ", ".join(f"{m} {times[m][-1]:.2f} s" for m in cost_methods),
                    flush=True,
                )
            report["cost"][f"{s['arch']}@{s['k']}"] = times

    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "rewire_accuracy.json").write_text(json.dumps(report, indent=1))

    goals = []
    if report["accuracy"]:
        print(f"\nTest top-1 % on fashion-mnist, mean ± std over seeds {args.seeds}:\n")
        print(
            "| method | "
            + " | ".join(
                f"{s['arch']} k={s['k']} ({s['subset'] or 'all'} x {s['epochs']} ep, "
                f"batch {s['batch']}, "
                f"lr {s['lr']:g}, every {s['every']})"
                for s in settings
            )
            + " |"
        )
        print("| --- | " + " | ".join("---:" for _ in settings) + " |")
        for method in methods:
            cells = [
                mean_std(
                    report["accuracy"].get(f"{s['arch']}@{s['k']}", {}).get(method, [float("nan")])
                )
                for s in settings
            ]
            print(f"| {method} | " + " | ".join(cells) + " |")
        for s in settings:
            acc = report["accuracy"].get(f"{s['arch']}@{s['k']}", {})
            if "static" not in acc:
                continue
            static = statistics.mean(acc["static"])
            for m in ("dsr", "rigl"):
                if m in acc:
                    d = statistics.mean(acc[m]) - static
                    goals.append(
                        f"{s['arch']} k={s['k']}: {m} - static = {d:+.2f} points "
                        f"(goal >= +0.5): {'met' if d >= 0.5 else 'NOT met'}"
                    )
    if report["cost"]:
        print(
            "\nOne training epoch, ratio to the static sparse epoch of the same round "
            "(median over rounds; median epoch seconds in brackets):\n"
        )
        names = [m for m in args.cost_methods.split(",")]
        print("| setting | rounds | " + " | ".join(names) + " |")
        print("| --- | ---: | " + " | ".join("---:" for _ in names) + " |")
        for key, times in report["cost"].items():
            cells = []
            for m in names:
                ratio = statistics.median(
                    a / b for a, b in zip(times[m], times["static"], strict=True)
                )
                cells.append(f"{ratio:.3f} ({statistics.median(times[m]):.2f} s)")
                if m in ("set", "dsr", "rigl"):
                    goals.append(
                        f"{key}: {m} epoch {ratio:.3f}x static (goal <= 1.1): "
                        f"{'met' if ratio <= 1.1 else 'NOT met'}"
                    )
            print(f"| {key} | {len(times['static'])} | " + " | ".join(cells) + " |")
    print()
    for g in goals:
        print("- " + g)
    print(f"\n{time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
