"""Cost of masking: a biprop training step vs a dense training step, side by side.

Same architecture, batch, data and thread count; the dense step trains the weights with SGD,
the biprop step trains the scores (top-k selection, binarisation, straight-through backward),
both with weight decay 1e-4, which the biprop step folds into its score gradient as
ticketkit's training loop does (`Sparsifier.fold_weight_decay`).
Steppers run in alternating rounds, and each ratio is the median over rounds of a step's time
over the dense step's time in the same round (so machine drift cancels). Also shown: the
same biprop step on the eager path (`eager`: no compiled kernels, what a machine without a C
compiler runs), with a plain `torch.kthvalue` threshold, with a full sort per step (what the
reference code does), and, for the mlp, the same step written by hand in eager PyTorch
without ticketkit (`minimal`): the floor for this arithmetic without fused kernels.

    python benchmarks/mask_overhead.py [--batch 128] [--steps 10] [--rounds 9] [--threads N]
                                       [--archs conv4,mlp] [--lr 0.01] [--malloc-defaults]

As in ticketkit's training loop, glibc's malloc keeps the memory a step frees for the next
(`retain_freed_memory`); `--malloc-defaults` measures with glibc's own thresholds, under which
each step faults freed pages back in (thousands a step for conv4; for the mlp it depends on
what else the process allocated, so that column's ratios drift between runs).

The learning rate matters for the selection: at a small one (late in a cosine schedule, or
fine-grained score training) the threshold's neighbours of the last step still hold it and the
warm path runs; at the recipes' 0.1 early in training scores jump across the threshold from
anywhere and most steps take the full path.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

import ticketkit.masks.layers as layers_module
import ticketkit.masks.select as select_module
import ticketkit.masks.sparsifier as sparsity_module
from ticketkit.masks.select import Selector, kept_count
from ticketkit.masks.sparsifier import sparsifier_of
from ticketkit.models import build_model
from ticketkit.plugin import Setup
from ticketkit.plugins.methods.biprop import Biprop, BipropOptions
from ticketkit.training.data import InputSpec
from ticketkit.training.loop import retain_freed_memory


class _ReplacedSelector(Selector):
    """A selection replaced by `select` alone: no warm candidates, no fused mask pass."""

    def warm_row(self, s, keep, out, w, alpha):
        return None  # no warm tries: every step goes to top_abs

    def top_abs(self, s, keep, out, scratch, w=None, alpha=None, warm=True):
        self.select(torch.abs(s, out=scratch).view(-1), keep, out)
        return False  # alpha is left to the caller


class KthvalueSelector(_ReplacedSelector):
    """A plain `torch.kthvalue` threshold (ignores ties): the obvious implementation."""

    def select(self, a, keep, out):
        t = a.kthvalue(a.numel() - keep + 1).values
        out.view(-1).copy_(a >= t)


class SortSelector(_ReplacedSelector):
    """A full sort per step, as the reference code does."""

    def select(self, a, keep, out):
        order = a.sort().indices
        out.view(-1).zero_()
        out.view(-1)[order[a.numel() - keep :]] = 1


class _MinimalSTE(torch.autograd.Function):
    """alpha * sign(W) * m forward; g * W * sign(s) backward: biprop's arithmetic, nothing else."""

    @staticmethod
    def forward(ctx, net, *scores):
        ctx.net = net
        ctx.save_for_backward(*scores)
        return tuple(
            torch.mul(sw, m).mul_(a)
            for sw, m, a in zip(net.signs, net.masks, net.alphas, strict=True)
        )

    @staticmethod
    def backward(ctx, *grads):
        w, s = ctx.net.weights, ctx.saved_tensors
        return (
            None,
            *(torch.sign(si).mul_(wi).mul_(g) for si, wi, g in zip(s, w, grads, strict=True)),
        )


class MinimalMLP(torch.nn.Module):
    """The mlp's biprop step written by hand: same selection, no parametrizations or hooks.

    Its cost is the floor of eager PyTorch for this arithmetic; the gap between it and the
    biprop column is what ticketkit's generality costs.
    """

    def __init__(self, model: torch.nn.Module, k: float):
        super().__init__()
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        self.weights = [m.weight.detach() for m in linears]
        self.signs = [w.sign() for w in self.weights]
        self.magnitudes = [w.abs().view(-1) for w in self.weights]
        self.scores = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.rand_like(w) - 0.5) for w in self.weights]
        )
        self.masks = [torch.empty_like(w) for w in self.weights]
        self.scratch = [torch.empty_like(w) for w in self.weights]
        self.alphas = [torch.empty(()) for _ in self.weights]
        self.keep = [kept_count(w.numel(), k) for w in self.weights]
        self.selectors = [Selector() for _ in self.weights]

    def forward(self, x):
        with torch.no_grad():
            for i, s in enumerate(self.scores):
                a = torch.abs(s, out=self.scratch[i]).view(-1)
                self.selectors[i].select(a, self.keep[i], self.masks[i])
                torch.dot(self.magnitudes[i], self.masks[i].view(-1), out=self.alphas[i])
                self.alphas[i].div_(self.keep[i])
        h = x.flatten(1)
        weights = _MinimalSTE.apply(self, *self.scores)
        for i, w in enumerate(weights):
            h = F.linear(h, w)
            h = F.relu(h) if i < len(weights) - 1 else h
        return h


class Stepper:
    """Runs SGD steps of one model on a fixed batch (`eager`: without the compiled kernels)."""

    lr = 0.01

    def __init__(self, model, x, y, eager: bool = False):
        self.model, self.x, self.y, self.eager = model, x, y, eager
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=1e-4)
        sparsifier = sparsifier_of(model)
        if sparsifier is not None and not eager:  # as ticketkit's training loop does
            sparsifier.fold_weight_decay([self.opt])

    def __call__(self, steps: int) -> float:
        if not self.eager:
            return self._run(steps)
        with _without_kernels():
            return self._run(steps)

    def _run(self, steps: int) -> float:
        began = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(self.model(self.x), self.y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return (time.perf_counter() - began) / steps


@contextlib.contextmanager
def _without_kernels():
    """Make ticketkit take its eager path, as on a machine without a C compiler."""
    saved = select_module.kernels, sparsity_module.kernels, layers_module.kernels
    select_module.kernels = sparsity_module.kernels = layers_module.kernels = lambda: None
    try:
        yield
    finally:
        select_module.kernels, sparsity_module.kernels, layers_module.kernels = saved


def interleaved(
    steppers: dict[str, Stepper], steps: int, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """(median step time, median ratio to "dense" within the same round) of each stepper.

    Rounds alternate the steppers, the dense one first; a ratio compares two measurements
    taken moments apart, so the host's slow drifts (this VM's speed changes by up to 1.7x
    between minutes) cancel in it instead of landing on one column.
    """
    for run in steppers.values():
        run(max(steps // 5, 1))  # warm up
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(rounds):
        for name, run in steppers.items():
            times[name].append(run(steps))
    ratios = {
        name: statistics.median(a / d for a, d in zip(t, times["dense"], strict=True))
        for name, t in times.items()
    }
    return {name: statistics.median(t) for name, t in times.items()}, ratios


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
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--archs", default="conv4,mlp")
    parser.add_argument(
        "--lr",
        type=float,
        default=Stepper.lr,
        help="SGD learning rate: how far scores move per step (the recipes start at 0.1)",
    )
    parser.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="leave glibc's malloc thresholds as they are (the training loop raises them)",
    )
    args = parser.parse_args()
    retained = not args.malloc_defaults and retain_freed_memory()
    Stepper.lr = args.lr
    torch.set_num_threads(args.threads)
    spec = InputSpec(1, 28, 28, 10)  # Fashion-MNIST shape
    print(
        f"batch {args.batch}, {args.threads} threads, torch {torch.__version__}, k=0.5, "
        f"lr {args.lr}, ratios: median over {args.rounds} rounds of paired steps, "
        f"malloc {'keeps freed memory' if retained else 'defaults'}"
    )
    print(
        f"{'arch':6} {'dense ms':>9} {'biprop ms':>10} {'ratio':>6} {'eager':>6} {'kthvalue':>9} "
        f"{'sort':>6} {'minimal':>8}"
    )
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        x = torch.randn(args.batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch,))
        steps = args.steps * (20 if arch == "mlp" else 1)
        dense_model = build_model(arch, spec, bias=False)
        steppers = {
            "dense": Stepper(dense_model, x, y),
            "biprop": Stepper(biprop_model(arch, spec), x, y),
            "eager": Stepper(biprop_model(arch, spec), x, y, eager=True),
            "kthvalue": Stepper(biprop_model(arch, spec, KthvalueSelector), x, y),
            "sort": Stepper(biprop_model(arch, spec, SortSelector), x, y),
        }
        if arch == "mlp":
            steppers["minimal"] = Stepper(MinimalMLP(dense_model, 0.5), x, y)
        t, ratio = interleaved(steppers, steps, args.rounds)
        minimal = f"{ratio['minimal']:8.3f}" if "minimal" in ratio else f"{'-':>8}"
        print(
            f"{arch:6} {t['dense'] * 1e3:9.2f} {t['biprop'] * 1e3:10.2f} {ratio['biprop']:6.3f} "
            f"{ratio['eager']:6.3f} {ratio['kthvalue']:9.3f} {ratio['sort']:6.3f} {minimal}"
        )


if __name__ == "__main__":
    main()
