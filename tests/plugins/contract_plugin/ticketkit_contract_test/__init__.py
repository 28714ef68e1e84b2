"""Methods written as a third-party package would, from `docs/plugins.md` and public names alone.

The suite puts this folder on `sys.path` (tests/conftest.py), so its dist-info registers the
`contract-test` entry point; `tests/plugins/test_method_contract.py` checks that this module
imports nothing but the public API.

- `snip-test`: SNIP (Lee et al. 2019), |g * W| summed over scoring batches, one global top-k,
  then the weights train under the mask.
- `stateful-test`: two stages; between them it keeps k of each layer's weights at random, drawn
  from its own generator, and it keeps a mask history and a step counter: resuming is exact
  only if all of that is restored.
- `early-stop-test`: magnitude masks (k per layer), and training stops at the end of the first
  epoch, as Early-Bird stops dense training.
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketkit import MethodSpec, hookimpl, option
from ticketkit.plugin import Stage, WeightMethod


@dataclass(frozen=True)
class SnipOptions:
    batches: int = option(2, "batches of training data scored")


class Snip(WeightMethod):
    default_scope = "global"

    def choose_masks(self, model):
        import torch
        import torch.nn.functional as F

        from ticketkit import kept_count
        from ticketkit.masks import masked_layers

        layers = masked_layers(model)
        weights = [layer.weight for layer in layers]
        saliency = [torch.zeros_like(w) for w in weights]
        for x, y in self.ctx.batches(self.options.batches, seed=self.setup.seed):
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), weights)
            for s, g, w in zip(saliency, grads, weights, strict=True):
                s.add_((g * w).abs())
        flat = torch.cat([s.flatten() for s in saliency])
        keep = torch.zeros_like(flat)
        keep[flat.topk(kept_count(flat.numel(), self.setup.k)).indices] = 1
        for layer, part in zip(layers, keep.split([w.numel() for w in weights]), strict=True):
            layer.set_mask(part.view_as(layer.weight))


class Stateful(WeightMethod):
    def prepare(self, model):
        import torch

        self.rng = torch.Generator().manual_seed(self.setup.seed)
        self.history = []
        self.steps_seen = 0
        super().prepare(model)

    def stages(self):
        half = max(self.setup.epochs // 2, 1)
        return [Stage("dense", half), Stage("sparse", max(self.setup.epochs - half, 1))]

    def after_step(self, model, optimizers):
        self.steps_seen += 1

    def begin_stage(self, stage, model):
        import torch

        from ticketkit import kept_count
        from ticketkit.masks import masked_layers

        if stage.name != "sparse":
            return
        for layer in masked_layers(model):
            order = torch.randperm(layer.weight.numel(), generator=self.rng)
            keep = torch.zeros(layer.weight.numel())
            keep[order[: kept_count(layer.weight.numel(), self.setup.k)]] = 1
            layer.set_mask(keep.view_as(layer.weight))
            self.history.append(layer.mask.clone())

    def end_epoch(self, model, metrics):
        metrics["steps_seen"] = self.steps_seen
        return None


class EarlyStop(WeightMethod):
    def choose_masks(self, model):
        from ticketkit import kept_count
        from ticketkit.masks import masked_layers

        for layer in masked_layers(model):
            magnitude = layer.weight.detach().abs().flatten()
            keep = magnitude.zero_()
            order = layer.weight.detach().abs().flatten().argsort(descending=True)
            keep[order[: kept_count(keep.numel(), self.setup.k)]] = 1
            layer.set_mask(keep.view_as(layer.weight))

    def end_epoch(self, model, metrics):
        return "the mask converged" if self.ctx.epoch == 0 else None


@hookimpl
def ticketkit_register_methods(register):
    register(MethodSpec(name="snip-test", summary="SNIP", factory=Snip, options=SnipOptions))
    register(MethodSpec(name="stateful-test", summary="two stages, state", factory=Stateful))
    register(MethodSpec(name="early-stop-test", summary="stops after epoch 1", factory=EarlyStop))
