"""Pruning at initialisation: score the weights of a random network, keep the best, then train.

The scorers (`random`, `snip`, `grasp`, `synflow`) follow the Synaptic-Flow reference's prune
loop (Tanaka et al. 2020, Algorithm 1; research notes pab-synflow-bop.md section 4), shared here:

- the network is scored in eval mode, in float64, on copies of its parameters and buffers
  (`torch.func.functional_call`): the model's own tensors are never touched, so "restoring the
  signs" after SynFlow's |.| is exact by construction, and the float32 model never sees a
  dtype round trip (the reference casts the model to double and back);
- iterative with the exponential schedule: iteration i of n keeps k_i = k^(i/n) of the weights,
  each time from fresh scores over the current mask (SynFlow 100 iterations, the others 1);
- one exact top-k per iteration over the whole network (`--scope global`, the default) or per
  layer: the kept count is always `N - floor((1 - k) N)`. The reference keeps scores strictly
  above the k-th value, which drops ties and can keep fewer (Synaptic-Flow issue #12);
- a weight pruned in one iteration stays pruned (its score is ranked below every kept one).
  SynFlow and GraSP score pruned weights 0 anyway; the reference's iterative SNIP can revive
  them through |dL/dm|, which ticketkit does not;
- scoring batches come from `ctx.batches(prune-batches, seed=--seed)` at `--batch-size`: a
  fixed, seeded set, so the run's config and the ticket's `method_options` name it exactly.

After the masks are chosen the weights train under them for `--epochs` (`WeightMethod`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ticketkit.errors import UsageError
from ticketkit.plugin import Setup, WeightMethod

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ticketkit.masks import Layer

# The references train the pruned network from a plain Kaiming-normal init: an init scaled by
# 1/sqrt(k) (edge-popup's, the default of `prune`) would blow up the signal through the layers
# SynFlow and SNIP keep nearly dense (conv2 on digits diverges at k = 0.1 with it).
AT_INIT_DEFAULTS = {"init_scale": "unscaled"}


class PruneAtInit(WeightMethod):
    """Masks chosen once, before training, by `score` (iterated); subclasses define `score`."""

    default_scope = "global"
    default_init = "kaiming-normal"
    linearised: ClassVar[bool] = False  # score on |W| and |buffers| (SynFlow)

    def __init__(self, options: Any, setup: Setup) -> None:
        super().__init__(options, setup)
        if setup.granularity != "unstructured":
            raise UsageError(
                "pruning at initialisation scores single weights: --granularity unstructured only"
            )
        if self.iterations() < 1:
            raise UsageError("-o iterations must be at least 1")
        if getattr(options, "prune_batches", 1) < 1:
            raise UsageError("-o prune-batches must be at least 1")

    def iterations(self) -> int:
        return int(getattr(self.options, "iterations", 1))

    def score(
        self, model: nn.Module, layers: list[Layer], state: dict[str, torch.Tensor]
    ) -> list[torch.Tensor]:
        """One score per weight (larger = keep), each of its layer's shape. `state` is the
        model's float64 copy on the run's device (`float64_state`, |.| with `linearised`)
        holding the current masks; scoring runs on it, never on the model's own tensors."""
        raise NotImplementedError

    def choose_masks(self, model: nn.Module) -> None:
        import torch

        from ticketkit.masks import masked_layers

        if self.ctx.resuming:
            return  # the checkpoint holds the masks (SynFlow's 100 iterations are not redone)

        layers = masked_layers(model)
        was_training = model.training
        model.eval()
        try:
            state = float64_state(model, torch.device(self.ctx.device), self.linearised)
            n = self.iterations()
            for i in range(1, n + 1):
                refresh_masks(model, layers, state)
                scores = self.score(model, layers, state)
                with torch.no_grad():
                    keep = select(scores, layers, self.setup.k ** (i / n), self.setup.scope)
                for layer, mask in zip(layers, keep, strict=True):
                    layer.set_mask(mask)
        finally:
            model.train(was_training)


def select(
    scores: list[torch.Tensor], layers: list[Layer], k: float, scope: str
) -> list[torch.Tensor]:
    """Exact top-k masks of `scores`, over the network (global) or per layer; weights already
    pruned are ranked below every kept one, so masks only ever shrink."""
    import torch

    from ticketkit import kept_count

    ranked = [
        s.detach().flatten().masked_fill(layer.mask.flatten().to(s.device) == 0, float("-inf"))
        for s, layer in zip(scores, layers, strict=True)
    ]
    groups = [torch.cat(ranked)] if scope == "global" else ranked
    masks = []
    for flat in groups:
        keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        keep[flat.topk(kept_count(flat.numel(), k), sorted=False).indices] = True
        masks.append(keep)
    if scope == "global":
        masks = list(masks[0].split([layer.numel for layer in layers]))
    return [m.view(layer.shape) for m, layer in zip(masks, layers, strict=True)]


def float64_state(
    model: nn.Module, device: torch.device, absolute: bool = False
) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `model` as a float64 copy on `device`, |.| of each with
    `absolute` (SynFlow's linearisation; masks are 0/1, so they are unchanged). Integer buffers
    (BatchNorm's batch counter) are copied as they are. Masks are read when this is called:
    `refresh_masks` updates them between iterations."""
    import torch

    out = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        t = t.detach().to(device)
        if t.is_floating_point():
            t = t.to(torch.float64)
            t = t.abs() if absolute else t.clone()
        out[name] = t
    return out


def refresh_masks(model: nn.Module, layers: list[Layer], state: dict[str, torch.Tensor]) -> None:
    """Copy the layers' current masks into a `float64_state`."""
    names = {id(b): name for name, b in model.named_buffers()}
    for layer in layers:
        name = names[id(layer.mask)]
        state[name].copy_(layer.mask)


def weight_names(model: nn.Module, layers: list[Layer]) -> list[str]:
    """The state names of the masked layers' stored weights, in layer order."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(layer.weight)] for layer in layers]
