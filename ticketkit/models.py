"""Building models from the registry, and initialising their weights.

`build_model("conv4", input)` asks the arch plugin for a network shaped for the dataset (its
channels, image size and class count). Methods may force "flavor" options on an arch
(random-weight methods build without biases and with non-affine BatchNorm); one the arch does
not declare is an error, never dropped. The resolved options are what a ticket records, so it
can rebuild the same network.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from ticketkit.errors import UsageError
from ticketkit.masks.sparsifier import prunable_layers
from ticketkit.registry import get_arch, get_initializer
from ticketkit.training.data import InputSpec


def arch_options(
    arch: str, options: dict[str, Any], flavor: dict[str, Any], method: str | None = None
) -> dict[str, Any]:
    """The full, typed option set of `arch`: user options over the flavor `flavor`.

    With `method`, `flavor` is what that method forces (`Method.arch_options()`), and a key the
    arch does not declare is a UsageError naming the arch, the key and the method: dropping it
    would build a network the method did not ask for (biases it assumes are absent) while the
    run looks normal. Without `method` (a test building every arch in one flavor) the flavor
    applies where declared.
    """
    spec = get_arch(arch)
    declared = [f.name for f in dataclasses.fields(spec.options)]
    missing = [k for k in flavor if k not in declared]
    if method is not None and missing:
        forced = ", ".join(f"{k}={flavor[k]!r}" for k in missing)
        offered = ", ".join(n.replace("_", "-") for n in declared) or "none"
        raise UsageError(
            f"method '{method}' forces arch option{'s' * (len(missing) > 1)} {forced}, which "
            f"arch '{arch}' does not declare (its options: {offered})"
        )
    merged = {**{k: v for k, v in flavor.items() if k in declared}, **options}
    return dataclasses.asdict(spec.make_options(merged))


def build_model(arch: str, input: InputSpec, **options: Any) -> nn.Module:
    """Build a registered architecture for `input` with the given arch options."""
    spec = get_arch(arch)
    typed = spec.make_options(options)
    kwargs = dataclasses.asdict(typed)
    if spec.family:
        kwargs["variant"] = arch.partition(":")[2]
    model = spec.load()(input, **kwargs)
    _check_fits(model, arch, input)
    # what `save_ticket` records so the ticket rebuilds this network (no state_dict entry)
    model.__dict__[BUILT_AS] = {
        "arch": arch,
        "arch_kwargs": asdict_typed(typed),
        "input": vars(input),
    }
    return model


BUILT_AS = "_ticketkit_built_as"


def asdict_typed(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options)


@torch.no_grad()
def _check_fits(model: nn.Module, arch: str, input: InputSpec) -> None:
    """Run one blank image through the new model: an arch that cannot take the dataset's
    images (a ViT's 16x16 patches on 8x8 digits) is bad input, said before any work starts,
    not an internal error in the first training step. Eval mode: BatchNorm takes a batch of 1
    and nothing random runs, so the RNG and every buffer are left as they were."""
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(1, input.channels, input.height, input.width))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"arch '{arch}' cannot take {input} ({reason})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, input.classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(
            f"arch '{arch}' gives outputs of shape {shape} for one image; "
            f"expected (1, {input.classes}) logits"
        )


@torch.no_grad()
def init_weights(
    model: nn.Module,
    scheme: str,
    *,
    seed: int,
    scale_k: float | None = None,
    prunable: set[str] | None = None,
) -> None:
    """Re-initialise every Conv/Linear weight with a registered initializer.

    sigma = gain / sqrt(fan) with gain = sqrt(2) and fan = fan_in; for prunable layers with
    `scale_k`, fan = fan_in * k, the number of inputs a unit keeps (METHODS: "scaled" init).
    Biases become zero. Drawn on CPU from one seeded generator, in module order.
    """
    init = get_initializer(scheme).load()
    gen = torch.Generator().manual_seed(seed)
    gain = math.sqrt(2.0)
    for path, module in prunable_layers(model):
        weight = module.weight
        fan = float(weight[0].numel())
        if scale_k is not None and (prunable is None or path in prunable):
            fan *= scale_k
        value = torch.empty(weight.shape, dtype=weight.dtype)
        init(value, fan=fan, gain=gain, generator=gen)
        weight.copy_(value)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()


# ---- building blocks shared by the built-in archs ----------------------------------------------


def norm(channels: int, dims: int, affine: bool) -> nn.Module:
    """BatchNorm for conv (dims=2) or linear (dims=1) features."""
    return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels, affine=affine)


def activation(binary: bool) -> nn.Module:
    """ReLU, or sign with the Bi-Real surrogate gradient for binary-activation variants."""
    from ticketkit.masks.binarize import SignActivation

    return SignActivation() if binary else nn.ReLU(inplace=True)


def scaled(channels: int, width: float, arch: str) -> int:
    """`channels * width` as an int (a width multiplier); a clear error when none are left."""
    c = int(channels * width)
    if c < 1:
        raise UsageError(f"arch '{arch}': width {width} leaves no channels (must be larger)")
    return c


def pooled_size(input: InputSpec, pools: int, arch: str) -> tuple[int, int]:
    """Spatial size after `pools` 2x2 max-pools; a clear error if the image is too small."""
    h, w = input.height >> pools, input.width >> pools
    if h < 1 or w < 1:
        need = 1 << pools
        raise UsageError(
            f"arch '{arch}' needs images of at least {need}x{need}; "
            f"this dataset has {input.height}x{input.width}"
        )
    return h, w
