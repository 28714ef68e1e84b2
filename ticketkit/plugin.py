"""Base classes for plugin implementations: methods and dataset sources.

Importing this module does not import torch (the hooks import it when they run), so a plugin
module can subclass these at top level and still be listed by `ticketkit plugins` instantly.

A method never writes its own training loop (DESIGN §3): the engine (`ticketkit.core.train`)
builds the optimizers the method asks for and calls, in order,

    prepare(model) -> optimizers(model, make)
        -> [start_epoch(e) -> train_step(...)*]* -> finish(model)

and the ticket is then read off the model's masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ticketkit.core.data import Split
    from ticketkit.core.rules import MaskRule
    from ticketkit.core.sparsity import Sparsifier


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


class Method:
    """A pruning method. Subclasses override the hooks they need.

    `source` says what the method starts from: "init" (a randomly initialised network, strong
    tickets) or "checkpoint" (a trained dense network). `default_init` is the weight
    initialisation used when the user does not pick one, `default_scope` the scope.
    """

    source: ClassVar[str] = "init"
    default_init: ClassVar[str] = "kaiming-normal"
    default_scope: ClassVar[str] = "layer"
    trains: ClassVar[bool] = True  # False: one-shot methods; the training loop is skipped

    def __init__(self, options: Any, setup: Setup) -> None:
        self.options = options
        self.setup = setup

    def arch_options(self) -> dict[str, Any]:
        """Options the method forces on the architecture (e.g. no biases, non-affine BN)."""
        return {}

    def prepare(self, model: nn.Module) -> None:
        """Attach masks, initialise scores, freeze what must not train."""

    def optimizers(
        self, model: nn.Module, make: Callable[[list[dict]], torch.optim.Optimizer]
    ) -> dict[str, torch.optim.Optimizer]:
        """The optimizers to train with; `make(param_groups)` builds the configured one."""
        params = [p for p in model.parameters() if p.requires_grad]
        return {"main": make([{"params": params}])} if params else {}

    def start_epoch(self, epoch: int, model: nn.Module) -> None:
        """Called before each epoch (schedules of k, rewiring, ...)."""

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
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers.values():
            opt.step()
        return loss.detach(), logits.detach()

    def finish(self, model: nn.Module) -> None:
        """Fix the final masks."""


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
        from ticketkit.core.rules import TopK

        s = self.setup
        return TopK(s.k, s.scope, s.granularity)

    def alpha(self) -> str:
        return "layer"

    def prepare(self, model: nn.Module) -> None:
        import torch

        from ticketkit.core.rules import init_scores
        from ticketkit.core.sparsity import Sparsifier

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

    def read(self, root: Path) -> tuple[Split, Split] | None:
        """(train, test) if the files are under `root`, else None."""
        raise NotImplementedError

    def download(self, root: Path) -> None:
        """Fetch the files into `root`; raise if that is impossible."""
        raise OSError(f"dataset '{self.name}' cannot be downloaded automatically")
