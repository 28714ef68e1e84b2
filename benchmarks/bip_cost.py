"""Cost of one BiP iteration (a weight step plus a score step, on two batches) against one dense
training step, side by side: same network, batch size, data and threads.

    python benchmarks/bip_cost.py [--arch resnet20] [--batch 128] [--steps 6] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ticketkit.models import build_model
from ticketkit.plugin import Method, Setup
from ticketkit.plugins.methods.bip import BiP, BiPOptions
from ticketkit.training.data import InputSpec
from ticketkit.training.loop import OptimizerFactory


class Runner:
    """`steps` iterations of a method on fixed batches; an iteration = `batches` train steps."""

    def __init__(self, model, method, batches):
        self.model, self.method, self.batches = model.train(), method, batches
        self.optimizers = method.optimizers(model, OptimizerFactory(_Cfg()))

    def __call__(self, steps: int) -> float:
        began = time.perf_counter()
        for _ in range(steps):
            for batch in self.batches:
                self.method.train_step(self.model, batch, self.optimizers)
        return (time.perf_counter() - began) / steps


class _Cfg:
    optimizer, optimizer_options, lr, momentum, weight_decay = "sgd", {}, 0.1, 0.9, 1e-4
    role_optimizers: dict = {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--k", type=float, default=0.1)
    args = p.parse_args()
    spec = InputSpec(1, 28, 28, 10)
    torch.manual_seed(0)
    batches = [
        (
            torch.randn(args.batch, 1, 28, 28).contiguous(memory_format=torch.channels_last),
            torch.randint(0, 10, (args.batch,)),
        )
        for _ in range(2)
    ]
    dense_model = build_model(args.arch, spec)
    dense = Runner(dense_model, Method(None, Setup(k=1.0)), batches[:1])
    bip_model = build_model(args.arch, spec)
    bip = BiP(BiPOptions(), Setup(k=args.k, scope="global"))
    bip.prepare(bip_model)
    iteration = Runner(bip_model, bip, batches)
    dense(2), iteration(2)
    times: dict[str, list[float]] = {"dense": [], "bip": []}
    for _ in range(args.rounds):
        times["dense"].append(dense(args.steps))
        times["bip"].append(iteration(args.steps))
    d, b = statistics.median(times["dense"]), statistics.median(times["bip"])
    print(
        f"{args.arch}, batch {args.batch}, {torch.get_num_threads()} threads, k={args.k}, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(
        f"dense step {d * 1e3:.1f} ms | BiP iteration (weight step + score step) {b * 1e3:.1f} ms"
        f" | ratio {b / d:.3f}"
    )


if __name__ == "__main__":
    main()
