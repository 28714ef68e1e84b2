"""Masked vs dense training step on an accelerator (the Scale issue's goal: <= 1.05x, bf16).

Three steppers of one architecture on one batch, each an SGD step under autocast, timed with
the device synchronised at both ends of each block of steps:

- dense: the plain network, weights trained;
- ticket: a fixed half mask on every layer (`attach_masks` + `set_mask`), weights trained:
  what `finetune` and the rewire methods' steps between updates cost;
- biprop: scores trained, top-k selection and binarisation every step (the prune step).

Rounds alternate the steppers, dense first, and each ratio is the median over rounds of a
step's time over the dense step's time in the same round (`mask_overhead.interleaved`). Peak
memory is each stepper's own, measured after the rounds.

    python benchmarks/gpu_step.py [--device cuda] [--amp bf16] [--batch 128]
        [--archs resnet18:32,resnet50-imagenet:224] [--steps 20] [--rounds 7]

`--device cpu` runs it anywhere (as the suite's smoke check does, with a tiny batch); the
goal is about GPUs, so CPU figures say nothing about it.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
from mask_overhead import biprop_model, interleaved

from ticketkit.masks import attach_masks, masked_layers
from ticketkit.masks.select import kept_count
from ticketkit.masks.sparsifier import sparsifier_of
from ticketkit.models import build_model
from ticketkit.training.data import InputSpec
from ticketkit.training.precision import DTYPES


class Stepper:
    """SGD steps of one model on a fixed batch at the given precision, timed end to end."""

    def __init__(self, model: torch.nn.Module, x, y, amp: str | None) -> None:
        # as ticketkit's loop: channels_last input, parameters left contiguous
        self.model, self.x, self.y = model.to(x.device), x, y
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
        sparsifier = sparsifier_of(self.model)
        if sparsifier is not None:  # as ticketkit's training loop does
            sparsifier.fold_weight_decay([self.opt])
        device = x.device.type
        self.autocast = (
            (lambda: torch.autocast(device, dtype=DTYPES[amp])) if amp else contextlib.nullcontext
        )

    def sync(self) -> None:
        if self.x.is_cuda:
            torch.cuda.synchronize()

    def __call__(self, steps: int) -> float:
        self.sync()
        began = time.perf_counter()
        for _ in range(steps):
            with self.autocast():
                loss = F.cross_entropy(self.model(self.x).float(), self.y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.sync()
        return (time.perf_counter() - began) / steps

    def peak_bytes(self) -> int | None:
        """Peak device memory of a few steps of this stepper alone (CUDA only)."""
        if not self.x.is_cuda:
            return None
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self(3)
        return torch.cuda.max_memory_allocated()


def ticket_model(arch: str, spec: InputSpec) -> torch.nn.Module:
    """The dense network with a fixed random half of each layer's weights kept."""
    model = build_model(arch, spec)
    attach_masks(model)
    gen = torch.Generator().manual_seed(0)
    for layer in masked_layers(model):
        n = layer.weight.numel()
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=gen)[: kept_count(n, 0.5)]] = True
        layer.set_mask(keep.view_as(layer.weight))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--amp", choices=("bf16", "fp16", "none"), default="bf16")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--archs", default="resnet18:32,resnet50-imagenet:224")
    parser.add_argument("--steps", type=int, default=20, help="steps per round and stepper")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    device = torch.device(args.device)
    amp = None if args.amp == "none" else args.amp
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{name}, torch {torch.__version__}, amp {args.amp}, batch {args.batch}, k=0.5, "
        f"ratios: median over {args.rounds} rounds of {args.steps} paired steps"
    )
    print(
        f"{'arch':18} {'size':>4} {'dense ms':>9} {'ticket':>7} {'biprop':>7} "
        f"{'dense MiB':>10} {'ticket':>7} {'biprop':>7}"
    )
    for item in args.archs.split(","):
        arch, _, size = item.partition(":")
        spec = InputSpec(3, int(size), int(size), 1000 if int(size) >= 128 else 10)
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, spec.height, spec.width, device=device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, spec.classes, (args.batch,), device=device)
        steppers = {
            "dense": Stepper(build_model(arch, spec), x, y, amp),
            "ticket": Stepper(ticket_model(arch, spec), x, y, amp),
            "biprop": Stepper(biprop_model(arch, spec), x, y, amp),
        }
        t, ratio = interleaved(steppers, args.steps, args.rounds)
        peaks = {key: stepper.peak_bytes() for key, stepper in steppers.items()}
        memory = (
            f"{peaks['dense'] / 2**20:10.0f} {peaks['ticket'] / peaks['dense']:7.3f} "
            f"{peaks['biprop'] / peaks['dense']:7.3f}"
            if peaks["dense"]
            else f"{'-':>10} {'-':>7} {'-':>7}"
        )
        print(
            f"{arch:18} {size:>4} {t['dense'] * 1e3:9.2f} {ratio['ticket']:7.3f} "
            f"{ratio['biprop']:7.3f} {memory}"
        )


if __name__ == "__main__":
    main()
