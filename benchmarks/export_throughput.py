"""What a filter ticket saves at inference on CPU, and what a ticket file saves on disk.

Throughput: filter tickets of resnet20 and vgg11-bn (Fashion-MNIST's 1x28x28 input, 10
classes) at k in {0.75, 0.5, 0.25}, each as three models in one process:

- `masked`: the ticket as methods run it (`W * m` through the parametrization, every forward),
- `dense`: `export --format dense` (plain weights, zeros where pruned),
- `structured`: the `export --format structured` file (a `.pt2` loaded with
  `torch.export.load`), empty filters and their BatchNorm channels removed.

The tickets are magnitude filter tickets (per layer, filters ranked by L2 norm, as
`prune --method magnitude --granularity filter`) of a randomly initialised network whose
BatchNorm statistics come from one train-mode pass: inference time does not depend on the
weights' values, only on shapes. Each round times every model of every ticket for `--iters`
forward passes (images/s from the fastest of them: other processes only add time), the order
of the models alternating between rounds; a ratio is the median over rounds of (images/s of
one) / (images/s of the other) in the same round, so machine drift cancels.

Bytes: ticket file against the same network as a float32 safetensors checkpoint (what
`eval --efficiency` reports), for tickets of biprop, hydra, Bop (SynFlow + Bop, `peek-a-boo`'s
recipe shortened) and IMP, each from a one-epoch run on digits (an MLP of width 4, ~400k
prunable weights) at k = 0.3.

    python benchmarks/export_throughput.py [--rounds 7] [--iters 20] [--threads N]
                                           [--archs resnet20,vgg11-bn] [--ks 0.75,0.5,0.25]
                                           [--batches 1,128] [--no-bytes]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ticketkit import build_model, jobs, save_ticket, testing
from ticketkit.artifacts.efficiency import masked_model
from ticketkit.artifacts.export import export
from ticketkit.artifacts.ticket import Ticket
from ticketkit.inputs import InputSpec
from ticketkit.masks import attach_masks, masked_layers
from ticketkit.masks.channels import filter_outputs, zero_empty_channels
from ticketkit.masks.select import kept_count
from ticketkit.plugin import structured_exclusions
from ticketkit.runs.config import FindTicketConfig, PretrainConfig, resolve

SPEC = InputSpec(1, 28, 28, 10)


def filter_ticket(arch: str, k: float, path: Path) -> Path:
    """A magnitude filter ticket at k per layer, with the convention of masks/channels.py."""
    torch.manual_seed(0)
    model = build_model(arch, SPEC)
    with torch.no_grad():
        model.train()(torch.randn(64, *[SPEC.channels, SPEC.height, SPEC.width]))
    attach_masks(model, exclude=structured_exclusions("filter"))
    for layer in masked_layers(model):
        norms = layer.weight.detach().flatten(1).norm(dim=1)
        keep = torch.zeros(layer.shape[0])
        keep[norms.argsort(descending=True, stable=True)[: kept_count(layer.shape[0], k)]] = 1
        layer.set_mask(keep.view(-1, *[1] * (len(layer.shape) - 1)).expand(layer.shape))
    zero_empty_channels(model, filter_outputs(model, torch.zeros(2, 1, 28, 28)))
    return save_ticket(model, path, dataset="fashion-mnist", granularity="filter", k=k)


@torch.no_grad()
def images_per_s(model: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    """Images per second of the fastest of `iters` forward passes: on a shared machine the
    other processes only ever add time, so the minimum is the least disturbed measurement."""
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        model(x)
        best = min(best, time.perf_counter() - start)
    return x.shape[0] / best


def throughput(args: argparse.Namespace, tmp: Path) -> list[str]:
    models: dict[tuple[str, float], dict[str, torch.nn.Module]] = {}
    params: dict[tuple[str, float], tuple[int, int]] = {}
    for arch in args.archs:
        for k in args.ks:
            path = filter_ticket(arch, k, tmp / f"{arch}-{k}.safetensors")
            ticket = Ticket.read(path)
            small = tmp / f"{arch}-{k}.pt2"
            result = export(ticket, "structured", small)
            dense = ticket.build("cpu").eval()
            models[arch, k] = {
                "masked": masked_model(ticket),
                "dense": dense,
                "structured": torch.export.load(str(small)).module(),
            }
            params[arch, k] = (result.params_before or 0, result.params_total)
    lines = [
        "| arch | k | batch | params (dense -> structured) | masked img/s | dense img/s "
        "| structured img/s | structured / masked | structured / dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for batch in args.batches:
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        iters = max(2, args.iters if batch > 1 else args.iters * 10)
        for group in models.values():  # warm-up: first calls pick kernels
            for model in group.values():
                images_per_s(model, x, 2)
        rates: dict[tuple, list[float]] = {}
        for r in range(args.rounds):
            for key, group in models.items():
                names = list(group) if r % 2 == 0 else list(group)[::-1]
                for name in names:
                    rates.setdefault((*key, name), []).append(images_per_s(group[name], x, iters))
        for arch, k in models:
            got = {n: rates[arch, k, n] for n in ("masked", "dense", "structured")}
            ratio = {
                other: statistics.median(
                    s / o for s, o in zip(got["structured"], got[other], strict=True)
                )
                for other in ("masked", "dense")
            }
            before, after = params[arch, k]
            lines.append(
                f"| {arch} | {k:g} | {batch} | {before:,} -> {after:,} | "
                + " | ".join(f"{statistics.median(got[n]):,.0f}" for n in got)
                + f" | {ratio['masked']:.2f}x | {ratio['dense']:.2f}x |"
            )
    return lines


def ticket_bytes(tmp: Path) -> list[str]:
    """Ticket bytes vs float32 checkpoint bytes, one short digits run per method."""
    from safetensors.torch import save

    mlp = {"arch_options": {"width": 4.0}, "subset": 512, "epochs": 1}
    wide = {**mlp, "k": 0.3}
    pretrain = {"arch": "mlp", "dataset": "digits", "eval_every": 0, **mlp}
    dense = jobs.pretrain(resolve(PretrainConfig, {**pretrain, "out": str(tmp / "dense")})).path
    runs = {
        "biprop": testing.prune_config("biprop", tmp / "biprop", **wide),
        "hydra": testing.prune_config("hydra", tmp / "hydra", checkpoint=dense, **wide),
        "bop (synflow + bop)": testing.prune_config(
            "synflow",
            tmp / "bop",
            **wide,
            options={"iterations": 5},
            optimizer="bop",
            optimizer_options={"ar": 0.2, "tau": 1e-6},
        ),
    }
    paths = {name: jobs.prune(cfg).path for name, cfg in runs.items()}
    imp = resolve(
        FindTicketConfig,
        {
            "method": "imp",
            "arch": "mlp",
            "dataset": "digits",
            "options": {"rounds": 2},
            "batch_size": 64,
            "out": str(tmp / "imp"),
            **wide,
        },
    )
    paths["imp (2 levels)"] = jobs.find_ticket(imp).path
    lines = [
        "| method | weights | k | ticket bytes | fp32 checkpoint bytes | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, path in paths.items():
        ticket = Ticket.read(path)
        fp32 = {n: v.float().contiguous() for n, v in ticket.build("cpu").state_dict().items()}
        ours, theirs = path.stat().st_size, len(save(fp32))
        lines.append(
            f"| {name} | {ticket.meta['weights']} | {float(ticket.meta['k']):g} | {ours:,} "
            f"| {theirs:,} | {ours / theirs:.3f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--iters", type=int, default=20, help="forwards per timing (x10 at batch 1)"
    )
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--archs", default="resnet20,vgg11-bn")
    parser.add_argument("--ks", default="0.75,0.5,0.25")
    parser.add_argument("--batches", default="1,128")
    parser.add_argument("--no-bytes", action="store_true", help="skip the ticket-bytes table")
    args = parser.parse_args()
    args.archs = args.archs.split(",")
    args.ks = [float(k) for k in args.ks.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        for line in throughput(args, Path(tmp)):
            print(line, flush=True)
        if not args.no_bytes:
            print()
            for line in ticket_bytes(Path(tmp)):
                print(line, flush=True)


if __name__ == "__main__":
    main()
