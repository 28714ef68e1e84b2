"""Network slimming: channel-pruned tickets ranked by BatchNorm scales (Liu et al., ICCV 2017,
"Learning Efficient Convolutional Networks through Network Slimming"), with Early-Bird
detection (You et al., ICLR 2020) as an option.

Stage "0" trains the dense network with an L1 penalty `l1 * sum |gamma|` on the scales of the
BatchNorms that follow a conv (or linear) layer, added through `loss_term`, so unimportant
channels shrink towards zero. Stage "1" starts with one global threshold on |gamma| over all
those channels: the `K = C - floor((1-k) C)` largest are kept (`--k` is a fraction of
*channels*, not of weights). A pruned channel is zeroed whole: the filter of the layer that
feeds its BatchNorm is masked (a filter mask on that conv, so the ticket file keeps none of its
weights) and the BatchNorm's scale and shift are set to zero and held there while stage "1"
fine-tunes the rest; the channel's output is then 0 after ReLU or sign, whatever its input.

Which layer feeds which BatchNorm is read off the traced forward (torch.fx), through
channel-preserving modules (max-pool, identity, dropout). A network that adds or concatenates
feature maps (residual blocks) is refused: the channels joined there would have to be pruned
together, which this first version does not do. It works on plain stacks: vgg11-bn, vgg16-bn,
vgg-small, and conv2-8 / mlp with `-A binary_act=true` (their BatchNorms).

Where this differs from the reference code (github.com/Eric-mingjie/network-slimming, and the
Early-Bird code built on it), deliberately:
- The penalty is a loss term (autograd gives s * sign(gamma), the reference's `-sr` update),
  and only during dense training; the reference fine-tunes without it, Early-Bird keeps it on.
- The threshold keeps exactly K channels (a stable sort: ties go to the lower index); the
  reference keeps |gamma| > sorted[int(C p)], a strict test that may keep fewer with ties.
- Channels are pruned by masks, not removed: a layer may lose all of its channels without
  breaking anything (the reference VGG pruner fails there); `ticketkit export` makes such a
  ticket physically smaller. The next layer's weights that read a pruned channel stay in its
  mask (they only ever see zeros), so the ticket's kept weights overcount the dense cost.
- BatchNorm1d after a linear layer counts as channels (neurons) too, in the same threshold;
  the paper slims conv channels only, so on VGG-style nets (no BatchNorm1d) nothing changes.
- Fine-tuning (stage "1") continues from the trained weights for `--epochs` with a fresh
  optimizer and schedule, as the paper's "fine-tune"; BatchNorm gammas start at the arch's
  init (1), not at the reference's 0.5.
- `--early-bird` compares, after every epoch of stage "0", the channel mask the threshold
  would give (`early_bird.py`), and ends dense training at the declaration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.errors import UsageError
from ticketkit.plugin import Stage, WeightMethod
from ticketkit.plugins.methods import early_bird

if TYPE_CHECKING:
    import torch
    from torch import nn

PLAIN_ARCHS = "vgg11-bn, vgg16-bn, vgg-small, or conv2-8 / mlp with -A binary_act=true"


@dataclass(frozen=True)
class SlimmingOptions:
    l1: float = option(1e-4, "L1 penalty on BatchNorm scales during dense training (Liu: 1e-4)")
    early_bird: bool = option(False, "end dense training once the channel mask stops changing")
    eb_window: int = option(5, "Early-Bird: masks compared (the newest and the older ones)")
    eb_eps: float = option(0.1, "Early-Bird: normalised Hamming distance that counts as equal")


class Slimming(WeightMethod):
    """Network slimming: L1 on BN scales, one global |gamma| threshold, fine-tune (module doc)."""

    default_scope = "global"
    default_init = "kaiming-normal"
    ticket_granularity: ClassVar[str] = "filter"  # whole output channels of convs
    # the digits MLP of the contract checks has BatchNorm only with sign activations
    contract_arch_options: ClassVar[dict[str, Any]] = {"binary_act": True}
    _not_state = (*WeightMethod._not_state, "groups")  # rebuilt by prepare from the model

    def __init__(self, options: SlimmingOptions, setup: Any) -> None:
        super().__init__(options, setup)
        if not setup.k:
            raise UsageError("slimming needs --k: the fraction of BatchNorm channels kept")
        if setup.scope != "global":
            raise UsageError("slimming ranks channels over the whole network: --scope global only")
        if options.l1 < 0:
            raise UsageError(f"-o l1 must be >= 0 (an L1 penalty); got {options.l1}")
        if options.early_bird:
            early_bird.check(options.eb_window, options.eb_eps)

    def prepare(self, model: nn.Module) -> None:
        from ticketkit import kept_count
        from ticketkit.masks import masked_layers

        groups = bn_groups(model)  # (BatchNorm path, path of the layer feeding it)
        super().prepare(model)  # every weight kept, everything trainable
        masked = {layer.path for layer in masked_layers(model)}
        self.groups = [group for group in groups if group[1] in masked]  # not --dense-first's
        if not self.groups:
            raise UsageError("slimming: every layer that feeds a BatchNorm is left dense")
        channels = sum(_bn(model, bn).num_features for bn, _ in self.groups)
        if kept_count(channels, self.setup.k) == channels:
            raise UsageError(f"--k {self.setup.k:g} keeps every one of the {channels} channels")
        self.eb_history: list[torch.Tensor] = []  # Early-Bird's window of channel masks
        self.keep: list[torch.Tensor] = []  # per group, the kept channels (stage "1")

    def stages(self) -> list[Stage]:
        return [Stage("0", self.setup.epochs), Stage("1", self.setup.epochs)]

    def loss_term(self, model: nn.Module) -> torch.Tensor | None:
        if self.ctx.stage != "0" or not self.options.l1:
            return None
        return self.options.l1 * sum(_bn(model, bn).weight.abs().sum() for bn, _ in self.groups)

    def channel_mask(self, model: nn.Module) -> torch.Tensor:
        """The global threshold: True for the K channels of largest |gamma| over every group,
        in group order (ties to the lower index)."""
        import torch

        from ticketkit import kept_count

        gammas = torch.cat([_bn(model, bn).weight.detach().abs().cpu() for bn, _ in self.groups])
        order = torch.argsort(gammas, descending=True, stable=True)
        keep = torch.zeros(gammas.numel(), dtype=torch.bool)
        keep[order[: kept_count(gammas.numel(), self.setup.k)]] = True
        return keep

    def end_epoch(self, model: nn.Module, metrics: dict[str, Any]) -> str | None:
        o = self.options
        if not (o.early_bird and self.ctx.stage == "0"):
            return None
        if not early_bird.observe(self.eb_history, self.channel_mask(model), *self._eb(), metrics):
            return None
        return (
            f"Early-Bird ticket: the channel mask moved at most {metrics['eb_distance']:.4f} "
            f"(<= {o.eb_eps:g}) over the last {o.eb_window} epochs"
        )

    def _eb(self) -> tuple[int, float]:
        return self.options.eb_window, self.options.eb_eps

    def begin_stage(self, stage: Stage, model: nn.Module) -> None:
        """Before fine-tuning: threshold the trained scales, mask the pruned channels' filters
        and zero their BatchNorm affines (also on resume, from the dense stage's end state)."""
        import torch

        from ticketkit.masks import masked_layers

        if stage.name != "1":
            return
        sizes = [_bn(model, bn).num_features for bn, _ in self.groups]
        self.keep = list(self.channel_mask(model).split(sizes))
        layers = {layer.path: layer for layer in masked_layers(model)}
        with torch.no_grad():
            for (_, path), keep in zip(self.groups, self.keep, strict=True):
                layer = layers[path]
                rows = keep.to(layer.mask.device).view(-1, *[1] * (len(layer.shape) - 1))
                layer.set_mask((layer.mask.bool() & rows).to(layer.mask.dtype))
        self._zero_affines(model)

    def after_step(self, model: nn.Module, optimizers: dict[str, Any]) -> None:
        """Pruned channels' scale and shift stay zero while the rest fine-tunes."""
        if self.ctx.stage == "1":
            self._zero_affines(model)

    def _zero_affines(self, model: nn.Module) -> None:
        import torch

        with torch.no_grad():
            for (bn, _), keep in zip(self.groups, self.keep, strict=True):
                module = _bn(model, bn)
                pruned = ~keep.to(module.weight.device)
                module.weight[pruned] = 0.0
                module.bias[pruned] = 0.0


def _bn(model: nn.Module, path: str) -> Any:
    return model.get_submodule(path)


def bn_groups(model: nn.Module) -> list[tuple[str, str]]:
    """(BatchNorm path, path of the Conv/Linear whose output it normalises) for every affine
    BatchNorm fed by one, in forward order; a clear error for networks this method cannot
    slim (residual additions or concatenations, no such BatchNorm, no affine)."""
    import operator

    import torch
    from torch import fx, nn
    from torch.nn.utils import parametrize

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return not list(m.children()) or parametrize.is_parametrized(m)

    try:
        graph = Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "cannot read the graph"
        raise UsageError(
            f"slimming cannot trace this network's forward ({type(exc).__name__}); it slims "
            f"plain conv stacks: {PLAIN_ARCHS}"
        ) from None
    joins = {operator.add, operator.iadd, torch.add, torch.cat, torch.stack}
    passes = (nn.MaxPool1d, nn.MaxPool2d, nn.Identity, nn.Dropout, nn.Dropout2d)
    modules = dict(model.named_modules())
    groups = []
    for node in graph.nodes:
        if node.target in joins or (node.op == "call_method" and node.target in ("add", "add_")):
            raise UsageError(
                "slimming does not yet prune networks that add or concatenate feature maps "
                "(residual blocks): their joined channels would have to be pruned together; "
                f"use {PLAIN_ARCHS}"
            )
        if node.op != "call_module" or not isinstance(
            modules[node.target], nn.modules.batchnorm._BatchNorm
        ):
            continue
        source = node.args[0]
        while source.op == "call_module" and isinstance(modules[source.target], passes):
            source = source.args[0]
        feeder = modules.get(source.target) if source.op == "call_module" else None
        width = getattr(feeder, "out_channels", getattr(feeder, "out_features", None))
        if isinstance(feeder, nn.Conv2d | nn.Linear) and width == modules[node.target].num_features:
            if modules[node.target].weight is None:
                raise UsageError(
                    "slimming ranks channels by BatchNorm scales: drop affine_bn=false"
                )
            groups.append((node.target, source.target))
    if not groups:
        raise UsageError(
            "slimming ranks channels by the scales of BatchNorms that follow a conv or linear "
            f"layer, and this network has none; use {PLAIN_ARCHS}"
        )
    return groups


@hookimpl
def ticketkit_register_methods(register):
    register(
        MethodSpec(
            name="slimming",
            summary="network slimming: L1 on BN scales, prune channels, fine-tune (find-ticket)",
            factory=Slimming,
            options=SlimmingOptions,
            phase="find-ticket",
        )
    )
