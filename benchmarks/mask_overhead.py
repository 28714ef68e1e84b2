"""Cost of masking: a biprop training step vs a dense training step, side by side.

Same architecture, batch, data and thread count; the dense step trains the weights with SGD,
the biprop step trains the scores (top-k selection, binarisation, straight-through backward).
Steppers run in alternating rounds (so machine drift hits all of them) and the median step
time of each is compared. Also shown: the same biprop step with a plain `torch.kthvalue`
threshold and with a full sort per step (what the reference code does).

    python benchmarks/mask_overhead.py [--batch 128] [--steps 10] [--rounds 7] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ticketkit.core.data import InputSpec
from ticketkit.core.model import build_model
from ticketkit.core.select import Selector
from ticketkit.plugin import Setup
from ticketkit.plugins.methods.biprop import Biprop, BipropOptions


class KthvalueSelector(Selector):
    """A plain `torch.kthvalue` threshold (ignores ties): the obvious implementation."""

    def select(self, a, keep, out):
        t = a.kthvalue(a.numel() - keep + 1).values
        out.view(-1).copy_(a >= t)


class SortSelector(Selector):
    """A full sort per step, as the reference code does."""

    def select(self, a, keep, out):
        order = a.sort().indices
        out.view(-1).zero_()
        out.view(-1)[order[a.numel() - keep :]] = 1


class Stepper:
    """Runs SGD steps of one model on a fixed batch."""

    def __init__(self, model, x, y):
        self.model, self.x, self.y = model, x, y
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)

    def __call__(self, steps: int) -> float:
        began = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(self.model(self.x), self.y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return (time.perf_counter() - began) / steps


def interleaved(steppers: dict[str, Stepper], steps: int, rounds: int) -> dict[str, float]:
    """Median step time of each stepper, measured in alternating rounds."""
    for run in steppers.values():
        run(max(steps // 5, 1))  # warm up
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(rounds):
        for name, run in steppers.items():
            times[name].append(run(steps))
    return {name: statistics.median(t) for name, t in times.items()}


def biprop_model(arch: str, spec: InputSpec, selector: type[Selector] | None = None):
    model = build_model(arch, spec, bias=False, affine_bn=False)
    method = Biprop(BipropOptions(), Setup(k=0.5))
    method.prepare(model)
    if selector is not None:
        rule = method.sparsifier.rule
        rule._selectors = {layer.path: selector() for layer in method.sparsifier.layers}
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per round (x20 for the mlp)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--archs", default="conv4,mlp")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = InputSpec(1, 28, 28, 10)  # Fashion-MNIST shape
    print(
        f"batch {args.batch}, {args.threads} threads, torch {torch.__version__}, k=0.5, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'arch':6} {'dense ms':>9} {'biprop ms':>10} {'ratio':>6} {'kthvalue':>9} {'sort':>6}")
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        x = torch.randn(args.batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch,))
        steps = args.steps * (20 if arch == "mlp" else 1)
        t = interleaved(
            {
                "dense": Stepper(build_model(arch, spec, bias=False), x, y),
                "biprop": Stepper(biprop_model(arch, spec), x, y),
                "kthvalue": Stepper(biprop_model(arch, spec, KthvalueSelector), x, y),
                "sort": Stepper(biprop_model(arch, spec, SortSelector), x, y),
            },
            steps,
            args.rounds,
        )
        dense = t["dense"]
        print(
            f"{arch:6} {dense * 1e3:9.2f} {t['biprop'] * 1e3:10.2f} {t['biprop'] / dense:6.3f} "
            f"{t['kthvalue'] / dense:9.3f} {t['sort'] / dense:6.3f}"
        )


if __name__ == "__main__":
    main()
