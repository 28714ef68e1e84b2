"""Network slimming: channel-pruned tickets ranked by BatchNorm scales (Liu et al., ICCV 2017,
"Learning Efficient Convolutional Networks through Network Slimming"), with Early-Bird
detection (You et al., ICLR 2020) as an option.

Stage "0" trains the dense network with an L1 penalty `l1 * sum |gamma|` on the scales of the
BatchNorms that follow a conv (or linear) layer, added through `loss_term`, so unimportant
channels shrink towards zero. Stage "1" starts with one global threshold over all those
channels: the `K = U - floor((1-k) U)` highest-scoring of the U pruning units are kept (`--k`
is a fraction of *channels*, not of weights). A pruned channel is zeroed whole: the filter of
the layer that feeds its BatchNorm is masked (a filter mask on that conv, so the ticket file
keeps none of its weights) and the BatchNorm's scale and shift are set to zero and held there
while stage "1" fine-tunes the rest; the channel's output is then 0 after ReLU or sign,
whatever its input.

Residual networks: a unit is the set of channels a residual addition joins
(`slimming_groups.py`, read off the traced forward): in a plain stack every channel is its own
unit and the score is its |gamma|; in a ResNet the residual stream's channel c is one unit
with every BatchNorm that writes it (the stem's, each block's last, a projection shortcut's),
scored by the largest |gamma| among them, and pruned or kept as one, so the sum it flows
through is zero exactly when the unit is pruned. A residual channel therefore counts once in
U, however many BatchNorms write it. This is our choice over the reference code's for
pre-activation ResNets, which never prunes the residual stream and slims only the blocks' inner
channels (a `channel_selection` layer picks each block's inputs): a mask-based ticket has no
channel-alignment problem to avoid, and the residual stream is a large share of a ResNet's
channels. The largest |gamma| (not the sum or mean) keeps a unit whenever any of its writers
would have kept its channel alone, and scores a unit on the same scale as an inner channel.
In a pre-activation network (wrn-28-2) the residual stream is normalised by BatchNorms fed by
the addition, not by a conv, so it has no unit and only the blocks' inner channels are pruned:
there the rule is the reference's. It works on vgg11-bn, vgg16-bn, vgg-small, resnet20-56,
resnet18-50, wrn-* and conv2-8 / mlp with `-A binary_act=true`; concatenations, and additions
of a tensor no BatchNorm scale controls, are refused with one line.

Where this differs from the reference code (github.com/Eric-mingjie/network-slimming, and the
Early-Bird code built on it), deliberately:
- The penalty is a loss term (autograd gives s * sign(gamma), the reference's `-sr` update),
  and only during dense training; the reference fine-tunes without it, Early-Bird keeps it on.
- The threshold keeps exactly K units (a stable sort: ties go to the lower index); the
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
from ticketkit.plugins.methods.slimming_groups import PLAIN_ARCHS, channel_units

if TYPE_CHECKING:
    import torch
    from torch import nn


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
    # rebuilt by prepare from the model
    _not_state = (*WeightMethod._not_state, "groups", "units", "channels")

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

        # (BatchNorm path, path of the layer feeding it), and the channels pruned together
        groups, units = channel_units(model)
        if not groups:
            raise UsageError(
                "slimming ranks channels by the scales of BatchNorms that follow a conv or "
                f"linear layer, and this network has none; use {PLAIN_ARCHS}"
            )
        super().prepare(model)  # every weight kept, everything trainable
        masked = {layer.path for layer in masked_layers(model)}
        self.groups = groups
        owner = [g for g, (bn, _) in enumerate(groups) for _ in range(_bn(model, bn).num_features)]
        # a unit with a channel of a layer left dense (--dense-first) is not pruned at all
        self.units = [u for u in units if all(groups[owner[i]][1] in masked for i in u)]
        self.channels = len(owner)
        if not self.units:
            raise UsageError("slimming: every layer that feeds a BatchNorm is left dense")
        if kept_count(len(self.units), self.setup.k) == len(self.units):
            raise UsageError(
                f"--k {self.setup.k:g} keeps every one of the {len(self.units)} channels"
            )
        self.eb_history: list[torch.Tensor] = []  # Early-Bird's window of channel masks
        self.keep: list[torch.Tensor] = []  # per group, the kept channels (stage "1")

    def stages(self) -> list[Stage]:
        return [Stage("0", self.setup.epochs), Stage("1", self.setup.epochs)]

    def loss_term(self, model: nn.Module) -> torch.Tensor | None:
        if self.ctx.stage != "0" or not self.options.l1:
            return None
        return self.options.l1 * sum(_bn(model, bn).weight.abs().sum() for bn, _ in self.groups)

    def channel_mask(self, model: nn.Module) -> torch.Tensor:
        """The global threshold: True for the K units of largest score over the network, in
        unit order (ties to the lower index). A unit's score is the largest |gamma| of its
        channels: the residual channel matters as much as its most important writer."""
        import torch

        from ticketkit import kept_count

        gammas = torch.cat([_bn(model, bn).weight.detach().abs().cpu() for bn, _ in self.groups])
        scores = torch.stack([gammas[unit].max() for unit in self.units])
        order = torch.argsort(scores, descending=True, stable=True)
        keep = torch.zeros(scores.numel(), dtype=torch.bool)
        keep[order[: kept_count(scores.numel(), self.setup.k)]] = True
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
        keep = torch.ones(self.channels, dtype=torch.bool)
        for unit, kept in zip(self.units, self.channel_mask(model), strict=True):
            keep[unit] = kept  # every channel of a unit together
        self.keep = list(keep.split([_bn(model, bn).num_features for bn, _ in self.groups]))
        layers = {layer.path: layer for layer in masked_layers(model)}
        with torch.no_grad():
            for (_, path), keep in zip(self.groups, self.keep, strict=True):
                if keep.all():  # nothing pruned (or a layer left dense): its mask stays
                    continue
                layer = layers[path]
                rows = keep.to(layer.mask.device).view(-1, *[1] * (len(layer.shape) - 1))
                layer.set_mask((layer.mask.bool() & rows).to(layer.mask.dtype))
        self._zero_affines(model)

    def after_step(self, model: nn.Module, optimizers: dict[str, Any]) -> None:
        """Pruned channels' scale and shift stay zero while the rest fine-tunes."""
        if self.ctx.stage == "1":
            self._zero_affines(model)

    def _zero_affines(self, model: nn.Module) -> None:
        """The filter tickets' convention (masks/channels.py): an empty filter's BatchNorm
        channel (scale, shift, running mean) and bias are zero."""
        from ticketkit.masks.channels import zero_empty_channels

        zero_empty_channels(model, self.groups)


def _bn(model: nn.Module, path: str) -> Any:
    return model.get_submodule(path)


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
