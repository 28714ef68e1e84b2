"""Base classes for plugin implementations: methods and dataset sources (the method contract).

Importing this module does not import torch (the hooks import it when they run), so a plugin
module can subclass these at top level and still be listed by `ticketkit plugins` instantly.

A method never writes its own training loop (DESIGN §3). The engine (`ticketkit.training.loop`)
sets `method.ctx` (a `Context`), then calls, in order,

    prepare(model)                                   masks, scores, what trains
    for each stage in stages():                      one stage ("train") unless declared
        begin_stage(stage, model)                    prune, rewind, ... between stages
        optimizers(model, make)                      fresh optimizers and schedule per stage
        for each epoch:
            start_epoch(epoch, model)
            for each batch: train_step(...) -> after_step(model, optimizers)
            end_epoch(model, metrics) -> a reason to stop, or None
        end_stage(stage, model)                      the stage's artifact is written after it
    finish(model)

and the ticket is read off the model's masks. Everything a method keeps in its attributes is
saved with every checkpoint and restored by `--resume` (`state_dict`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ticketkit.inputs import InputSpec, Split
    from ticketkit.masks.rules import MaskRule
    from ticketkit.masks.sparsifier import Sparsifier

ROLES = ("weights", "binary_weights", "scores", "norms", "other")


@dataclass(frozen=True)
class Setup:
    """What the command resolved for the method (shared options, not the method's own)."""

    k: float
    scope: str = "layer"
    granularity: str = "unstructured"
    learn_bn: bool = False
    dense_first: bool = False
    dense_last: bool = False
    epochs: int = 1
    seed: int = 0
    # the weight initialisation of the run's random network, for methods that draw fresh
    # weights later (IMP's random re-initialisation); None where the command has none
    init: str | None = None
    # initial per-layer densities of sparse training (`rewire --density`): "uniform" (k in
    # every layer) or "erk" (Erdos-Renyi-Kernel, as RigL); other commands leave it uniform
    density: str = "uniform"
    # `rewire --dense-shortcuts`: leave 1x1 shortcut convs unmasked (the DSR paper's policy);
    # honoured by `RewireMethod.exclude`, off for every other command
    dense_shortcuts: bool = False


@dataclass(frozen=True)
class Stage:
    """One training stage of a run: its own epochs, learning-rate schedule, optimizers,
    checkpoints and artifact (`stages/<name>/ticket.safetensors`). A resumed run continues
    at the first unfinished stage."""

    name: str
    epochs: int


@dataclass
class Context:
    """What the engine tells a method about its run; `method.ctx`, set before `prepare`.

    `step` counts optimizer steps (calls of `train_step`) in the current stage and is already
    advanced when `after_step` runs; `epoch` is the current epoch (0-based) of the stage.
    """

    input: InputSpec  # channels, height, width, classes of the dataset
    device: str
    steps_per_epoch: int
    epochs: int  # of the current stage
    stage: str = "train"
    epoch: int = 0
    step: int = 0
    draw: Callable[[int, int], list] | None = field(default=None, repr=False)
    # the run continues from a checkpoint, which will replace the masks and state `prepare`
    # sets: work whose only result is those (pruning at init's scoring) may be skipped
    resuming: bool = False

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def batches(self, n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`n` training batches for scoring (SNIP, GraSP): normalised, on the run's device,
        cut from a fixed permutation seeded by `seed`. Not counted as training and drawn
        without touching torch's global RNG, so they never change the training batches."""
        if self.draw is None:
            raise RuntimeError("this context has no data (the engine sets it)")
        return self.draw(n, seed)


class Method:
    """A pruning method. Subclasses override the hooks they need (module docstring: order).

    `source` says what the method starts from: "init" (a randomly initialised network) or
    "checkpoint" (a trained dense network). `default_init` is the weight initialisation used
    when the user does not pick one, `default_scope` the scope. `trains = False` skips the
    training loop (one-shot methods).
    """

    source: ClassVar[str] = "init"
    default_init: ClassVar[str] = "kaiming-normal"
    default_scope: ClassVar[str] = "layer"
    trains: ClassVar[bool] = True
    # what --k budgets: "kept" weights (the masks keep k), or "values" (tied weights: every
    # weight kept, k * n distinct trainable values per layer)
    budget: ClassVar[str] = "kept"
    ctx: Context
    # attributes that are configuration or rebuilt by `prepare`, never checkpointed
    _not_state: ClassVar[tuple[str, ...]] = ("options", "setup", "ctx", "sparsifier")

    def __init__(self, options: Any, setup: Setup) -> None:
        self.options = options
        self.setup = setup

    def arch_options(self) -> dict[str, Any]:
        """Options the method forces on the architecture (e.g. no biases, non-affine BN)."""
        return {}

    def prepare(self, model: nn.Module) -> None:
        """Attach masks, initialise scores, freeze what must not train."""

    def stages(self) -> list[Stage]:
        """The run's training stages, in order (IMP: one per level)."""
        return [Stage("train", self.setup.epochs)]

    def begin_stage(self, stage: Stage, model: nn.Module) -> None:
        """Before a stage trains (also when it resumes: the checkpoint is loaded after)."""

    def end_stage(self, stage: Stage, model: nn.Module) -> None:
        """After a stage trained, before its artifact is written."""

    def param_roles(self, model: nn.Module) -> dict[str, list[torch.nn.Parameter]]:
        """Every trainable parameter under one role of `ROLES`, so each role can go to its
        own optimizer: masked layers' weights are "weights" ("binary_weights" where the layer
        is binary), then "scores", normalisation affines "norms", the rest "other"."""
        from ticketkit.masks.sparsifier import sparsifier_of

        roles: dict[str, list] = {role: [] for role in ROLES}
        known: dict[int, str] = {id(p): "norms" for p in norm_parameters(model)}
        sparsifier = sparsifier_of(model)
        for layer in sparsifier.layers if sparsifier else ():
            known[id(layer.weight)] = "binary_weights" if layer.param.binary else "weights"
            if layer.scores is not None:
                known[id(layer.scores)] = "scores"
        for p in model.parameters():
            if p.requires_grad:
                roles[known.get(id(p), "other")].append(p)
        return {role: params for role, params in roles.items() if params}

    def optimizers(self, model: nn.Module, make: Any) -> dict[str, torch.optim.Optimizer]:
        """The optimizers to train with. `make(param_groups)` builds the configured one;
        `make.by_role(roles)` gives each role to the optimizer that takes it (the configured
        one takes every role unless its spec says otherwise) and returns them by name."""
        return make.by_role(self.param_roles(model))

    def start_epoch(self, epoch: int, model: nn.Module) -> None:
        """Called before each epoch (schedules of k, rewiring, ...)."""

    def loss_term(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the cross-entropy in every training step (an L1 penalty, ...)."""
        return None

    def train_step(
        self,
        model: nn.Module,
        batch: tuple[torch.Tensor, torch.Tensor],
        optimizers: dict[str, torch.optim.Optimizer],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step; returns (loss, logits) for logging."""
        import torch.nn.functional as F

        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        extra = self.loss_term(model)
        if extra is not None:
            loss = loss + extra
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers.values():
            opt.step()
        return loss.detach(), logits.detach()

    def after_step(self, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """After every `train_step` (`self.ctx.step` counts them): drop and regrow masks every
        N steps (SET, RigL); `ticketkit.masks.clear_optimizer_state` resets dropped weights."""

    def end_epoch(self, model: nn.Module, metrics: dict[str, Any]) -> str | None:
        """After each epoch, with its metrics record: return a reason to end the stage there
        (Early-Bird), which the metrics and the artifact then carry; None to go on."""
        return None

    def finish(self, model: nn.Module) -> None:
        """Fix the final masks."""

    # -- state that survives a resume ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the method: every attribute holding numbers, strings,
        lists and dicts of them, plain tensors (not Parameters), lists of tensors, or a
        `torch.Generator`. Modules, parameters and the sparsifier are rebuilt by `prepare`
        (the masks and scores live in the model's state). Override for anything else."""
        import torch

        def keep(value: Any) -> bool:
            if isinstance(value, torch.Generator):
                return True
            if isinstance(value, torch.Tensor):
                return not isinstance(value, torch.nn.Parameter)
            if isinstance(value, list) and value and all(keep_tensor(v) for v in value):
                return True
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                return False
            return True

        def keep_tensor(value: Any) -> bool:
            return isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter)

        return {
            name: value
            for name, value in vars(self).items()
            if name not in self._not_state and keep(value)
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` gave (generators get their state back in place)."""
        import torch

        for name, value in state.items():
            current = getattr(self, name, None)
            if isinstance(current, torch.Generator) and isinstance(value, torch.Tensor):
                current.set_state(value)
            else:
                setattr(self, name, value)


class ScoreMethod(Method):
    """Masks chosen by trained scores: edge-popup, biprop, HYDRA, BiP and their relatives.

    Weights are frozen; scores train through the straight-through estimator; BatchNorm trains
    only with `learn_bn` (or `train_bn` for methods that always train it).
    """

    binary: ClassVar[bool] = False
    score_init: ClassVar[str] = "kaiming-uniform"
    train_bn: ClassVar[bool] = False
    sparsifier: Sparsifier

    def rule(self) -> MaskRule:
        from ticketkit.masks.rules import TopK

        s = self.setup
        return TopK(s.k, s.scope, s.granularity)

    def alpha(self) -> str:
        return "layer"

    def prepare(self, model: nn.Module) -> None:
        import torch

        from ticketkit.masks.rules import init_scores
        from ticketkit.masks.sparsifier import Sparsifier

        s = self.setup
        self.sparsifier = Sparsifier.attach(
            model,
            self.rule(),
            scores=True,
            binary=self.binary,
            alpha=self.alpha(),
            dense_first=s.dense_first,
            dense_last=s.dense_last,
            exclude=structured_exclusions(s.granularity),
        )
        init_scores(
            self.sparsifier.layers, self.score_init, torch.Generator().manual_seed(s.seed + 1)
        )
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.sparsifier.scores():
            p.requires_grad_(True)
        if s.learn_bn or self.train_bn:
            for p in norm_parameters(model):
                p.requires_grad_(True)

    def finish(self, model: nn.Module) -> None:
        self.sparsifier.freeze()


class WeightMethod(Method):
    """Weights trained under masks the method chose: pruning at initialisation (SNIP, GraSP,
    SynFlow, then train), fine-tuning, dynamic sparse training (SET, RigL).

    `prepare` attaches plain masks (all kept) to every prunable layer that `exclude` leaves,
    lets `choose_masks` set them, and makes every parameter trainable. The rule in training:
    W_eff = W * m, and W.grad = dL/dW_eff * m, so pruned weights get no gradient and no
    update. With `dense_grad = True` each layer also keeps the dense dL/dW_eff of the last
    backward in `layer.dense_grad` (RigL grows where it is largest).
    """

    dense_grad: ClassVar[bool] = False

    def exclude(self, path: str, module: nn.Module) -> bool:
        """Whether a prunable layer stays unmasked (default: linear layers under structured
        granularities, and the first/last layer with --dense-first/--dense-last)."""
        rule = structured_exclusions(self.setup.granularity)
        return bool(rule and rule(path, module))

    def prepare(self, model: nn.Module) -> None:
        from ticketkit.masks.sparsifier import Sparsifier

        s = self.setup
        self.sparsifier = Sparsifier.attach(
            model,
            scores=False,
            dense_first=s.dense_first,
            dense_last=s.dense_last,
            exclude=self.exclude,
            dense_grad=self.dense_grad,
        )
        self.choose_masks(model)
        for p in model.parameters():
            p.requires_grad_(True)

    def choose_masks(self, model: nn.Module) -> None:
        """Set each layer's mask (`layer.set_mask(...)` for `layer` in
        `ticketkit.masks.masked_layers(model)`); the default keeps every weight."""


def structured_exclusions(granularity: str) -> Callable[[str, nn.Module], bool] | None:
    """Filter/channel masks prune conv layers only, as BiP: linear layers stay dense (a
    "filter" of the classifier is a class, a "channel" of an MLP an input pixel)."""
    if granularity == "unstructured":
        return None
    from torch import nn

    return lambda path, module: isinstance(module, nn.Linear)


def norm_parameters(model: nn.Module) -> list:
    """Affine parameters of every normalisation layer (BatchNorm, GroupNorm, LayerNorm)."""
    from torch import nn

    kinds = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return [p for m in model.modules() if isinstance(m, kinds) for p in m.parameters(recurse=False)]


class DatasetSource:
    """What a dataset plugin's factory returns: how to find, and maybe download, its files."""

    name: ClassVar[str] = ""
    classes: ClassVar[int] = 10
    mean: ClassVar[tuple[float, ...]] = (0.5,)
    std: ClassVar[tuple[float, ...]] = (0.5,)
    augment: ClassVar[str] = "none"  # "none" | "crop-flip"
    needs_files: ClassVar[bool] = True
    # For the error a user sees when the files are missing: what `--data DIR` must hold, and
    # the Debian/Ubuntu package that installs them under /usr/share/datasets/<name>, if any.
    files: ClassVar[str] = ""
    system_package: ClassVar[str | None] = None
    # Too large for memory (ImageNet): `read` returns (path, label) lists, decoded each epoch by
    # --workers DataLoader processes at `size` x `size` with `channels` (docs/plugins.md).
    streamed: ClassVar[bool] = False
    size: ClassVar[int] = 224
    channels: ClassVar[int] = 3

    def read(self, root: Path) -> tuple[Split, Split] | tuple[list, list] | None:
        """(train, test) if the files are under `root`, else None."""
        raise NotImplementedError

    def download(self, root: Path) -> None:
        """Fetch the files into `root`; raise if that is impossible."""
        raise OSError(f"dataset '{self.name}' cannot be downloaded automatically")
