"""Run configuration: typed dataclasses, YAML files, presets, and their precedence.

Precedence: CLI > `--config FILE.yml` > `--preset NAME` > the method's own defaults (a
`MethodSpec`'s `defaults`, e.g. the supermask's lr) > the dataclass defaults. Dict-valued keys
(`options`, `arch_options`) merge key by key in the same order. Unknown keys are an error naming
the nearest valid key. The effective config is saved in the run directory and in the ticket.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ticketkit.errors import UsageError, did_you_mean
from ticketkit.specs import _coerce

SCHEDULES = ("cosine", "constant", "step")


@dataclass
class TrainConfig:
    """Options every training command shares."""

    dataset: str | None = None
    data: str | None = None
    subset: int | None = None
    workers: int = 0  # DataLoader processes decoding a streamed dataset (training/streaming.py)
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    optimizer_options: dict = field(default_factory=dict)
    role_optimizers: dict = field(default_factory=dict)  # role -> optimizer name
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    lr_steps: list[int] = field(default_factory=list)  # epochs; `--lr-steps 30,60`
    lr_gamma: float = 0.1
    warmup: int = 0
    seed: int = 0
    device: str = "auto"
    amp: str | None = None  # bf16 | fp16 (training/precision.py)
    eval_every: int = 1
    out: str = "runs"
    name: str | None = None

    def validate(self) -> None:
        for flag, count in (
            ("--epochs", self.epochs),
            ("--eval-every", self.eval_every),
            ("--warmup", self.warmup),
            ("--workers", self.workers),
        ):
            if count < 0:
                raise UsageError(f"{flag} must be >= 0, got {count}")
        if self.warmup and self.warmup >= self.epochs:
            # the schedule would never start: every epoch would be a warm-up epoch
            raise UsageError(
                f"--warmup {self.warmup} must be shorter than --epochs {self.epochs} "
                "(epochs of warm-up before the schedule)"
            )
        if self.batch_size <= 0:
            raise UsageError(f"--batch-size must be positive, got {self.batch_size}")
        for flag, value in (("--lr", self.lr), ("--momentum", self.momentum)):
            if value < 0:
                raise UsageError(f"{flag} must be >= 0, got {value}")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise UsageError(
                f"--schedule must be one of {', '.join(SCHEDULES)}; got '{self.schedule}'"
            )
        from ticketkit.registry import get_optimizer
        from ticketkit.training.loop import resolve_device

        # before any work (a run directory, the dataset): the device, the optimizer's options
        from ticketkit.training.precision import check as check_amp

        resolve_device(self.device)
        check_amp(self.amp)
        get_optimizer(self.optimizer).make_options(self.optimizer_options)
        from ticketkit.plugin import ROLES

        for role, name in self.role_optimizers.items():
            if role not in ROLES:
                raise UsageError(
                    f"--role-optimizer: unknown role '{role}'{did_you_mean(role, ROLES)} "
                    f"(roles: {', '.join(ROLES)})"
                )
            get_optimizer(str(name))
        if self.lr_gamma <= 0:
            raise UsageError(f"--lr-gamma must be positive, got {self.lr_gamma}")
        if any(step < 0 for step in self.lr_steps):
            raise UsageError(f"--lr-steps must be epochs (>= 0), got {self.lr_steps}")
        if self.name is not None and (
            self.name in (".", "..") or any(sep in self.name for sep in "/\\")
        ):
            # a run directory inside --out: `..` or a path would write it somewhere else
            raise UsageError(
                f"--name must be a plain directory name (no '/', not '.' or '..'), got "
                f"'{self.name}'; use --out for the parent directory"
            )

    def require_dataset(self) -> str:
        if self.dataset is None:
            raise UsageError("no dataset given: pass --dataset NAME (see `ticketkit plugins`)")
        return self.dataset


def check_psg(cfg: PruneConfig | FinetuneConfig) -> None:
    """--psg-option needs --psg, and its settings must parse."""
    if cfg.psg_options and not cfg.psg:
        raise UsageError("--psg-option is given without --psg")
    from ticketkit.training.psg import psg_options

    psg_options(cfg.psg_options)


@dataclass
class PretrainConfig(TrainConfig):
    """`ticketkit pretrain`: train a dense network (BiP's recipe: SGD 0.1, wd 5e-4, cosine)."""

    arch: str | None = None
    arch_options: dict = field(default_factory=dict)
    init: str | None = None  # None: the architecture's own initialisation
    weight_decay: float = 5e-4

    def validate(self) -> None:
        super().validate()
        if self.arch is None:
            raise UsageError("no arch given: pass --arch")


@dataclass
class FinetuneConfig(TrainConfig):
    """`ticketkit finetune`: train a ticket's kept weights with its mask fixed (HYDRA: lr 0.01)."""

    input: str | None = None  # the ticket to fine-tune
    k: float | None = None  # if given, must equal the ticket's
    lr: float = 0.01
    psg: bool = False  # the predictive-sign-gradient backward (an emulation: training/psg.py)
    psg_options: dict = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        check_psg(self)


@dataclass
class PruneConfig(TrainConfig):
    """`ticketkit prune`: find a ticket with a score- or magnitude-based method."""

    method: str | None = None
    input: str | None = None  # the dense checkpoint, for methods that prune a trained network
    arch: str | None = None
    arch_options: dict = field(default_factory=dict)
    k: float | None = None
    scope: str | None = None  # None: the method's default (layer; global for bip)
    granularity: str = "unstructured"
    options: dict = field(default_factory=dict)
    init: str | None = None
    init_scale: str = "scaled"
    learn_bn: bool = False
    dense_first: bool = False
    dense_last: bool = False
    psg: bool = False  # as FinetuneConfig's: Peek-a-Boo trains its signs with PSG in one run
    psg_options: dict = field(default_factory=dict)

    def validate(self) -> None:
        from ticketkit.masks.rules import GRANULARITIES, SCOPES

        super().validate()
        check_psg(self)
        for key, flag in (("method", "--method"), ("k", "--k")):
            if getattr(self, key) is None:
                raise UsageError(f"no {key} given: pass {flag}")
        check_k(self.k)
        if self.scope is not None and self.scope not in SCOPES:
            raise UsageError(f"--scope must be one of {', '.join(SCOPES)}; got '{self.scope}'")
        if self.granularity not in GRANULARITIES:
            raise UsageError(
                f"--granularity must be one of {', '.join(GRANULARITIES)}; got '{self.granularity}'"
            )
        if self.init_scale not in ("scaled", "unscaled"):
            raise UsageError(f"--init-scale must be scaled or unscaled; got '{self.init_scale}'")


@dataclass
class FindTicketConfig(TrainConfig):
    """`ticketkit find-ticket`: a lottery ticket by iterative pruning (IMP), one stage per level.

    `k` is optional: a method may end its levels on its own options instead (IMP's --levels).
    No `init_scale`: the weights train, so the init is the plain one the references use.
    """

    method: str | None = None
    arch: str | None = None
    arch_options: dict = field(default_factory=dict)
    k: float | None = None
    scope: str | None = None  # None: the method's default (global for imp)
    options: dict = field(default_factory=dict)
    init: str | None = None
    dense_first: bool = False
    dense_last: bool = False

    def validate(self) -> None:
        from ticketkit.masks.rules import SCOPES

        super().validate()
        if self.method is None:
            raise UsageError("no method given: pass --method (e.g. --method imp)")
        if self.arch is None:
            raise UsageError("no arch given: pass --arch")
        if self.k is not None:
            check_k(self.k)
        if self.scope is not None and self.scope not in SCOPES:
            raise UsageError(f"--scope must be one of {', '.join(SCOPES)}; got '{self.scope}'")


@dataclass
class RewireConfig(TrainConfig):
    """`ticketkit rewire`: sparse training from a random init (or the dense checkpoint `input`),
    masks updated by the method.

    No `init_scale`: the weights train, so the plain fan-in init (as the DSR and RigL code).
    """

    method: str | None = None
    input: str | None = None  # a dense checkpoint to start from instead of a random init
    arch: str | None = None
    arch_options: dict = field(default_factory=dict)
    k: float | None = None
    density: str = "uniform"
    options: dict = field(default_factory=dict)
    init: str | None = None
    dense_first: bool = False
    dense_last: bool = False
    dense_shortcuts: bool = False

    def validate(self) -> None:
        super().validate()
        for key, flag in (("method", "--method"), ("k", "--k")):
            if getattr(self, key) is None:
                raise UsageError(f"no {key} given: pass {flag}")
        # `arch` may come from the checkpoint given as argument: `jobs.rewire` checks it
        check_k(self.k)  # type: ignore[arg-type]
        if self.density not in DENSITIES:
            raise UsageError(
                f"--density must be one of {', '.join(DENSITIES)}; got '{self.density}'"
            )


DENSITIES = ("uniform", "erk")


def check_k(k: float) -> None:
    if not 0 < k <= 1:
        raise UsageError(f"--k is the fraction of weights kept and must be in (0, 1]; got {k}")


# ---- loading -----------------------------------------------------------------------------------


def presets() -> dict[str, Path]:
    """Shipped presets: name -> YAML file."""
    folder = resources.files("ticketkit") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yml")}


def read_yaml(path: Path | str, what: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path}: is a directory, not a YAML file") from None
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{what} {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path}: expected a mapping of option: value")
    return data


def normalise(data: dict[str, Any], cls: type, source: str) -> dict[str, Any]:
    """Dashes to underscores; unknown keys rejected with the nearest valid one."""
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            hint = did_you_mean(name, names)
            raise UsageError(f"unknown config key '{key}' in {source}{hint}")
        out[name] = value
    return out


def resolve(
    cls: type,
    cli: dict[str, Any],
    config: str | None = None,
    preset: str | None = None,
    beneath: Callable[[dict[str, Any]], tuple[str, dict[str, Any]] | None] | None = None,
) -> Any:
    """Merge defaults < beneath < preset < config file < CLI into a validated config dataclass.

    `beneath`, given the merged values, may return one more (source, values) layer to put under
    the preset: the chosen method's defaults, which are known only once the method is.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if preset:
        known = presets()
        if preset not in known:
            hint = did_you_mean(preset, known)
            raise UsageError(
                f"unknown preset '{preset}'{hint} (available: {', '.join(sorted(known))})"
            )
        layers.append((f"preset {preset}", read_yaml(known[preset], "preset")))
    if config:
        layers.append((f"config {config}", read_yaml(config, "--config")))
    layers.append(("the command line", {k: v for k, v in cli.items() if v is not None}))
    merged = _merge(cls, layers)
    below = beneath(merged) if beneath is not None else None
    if below is not None:
        merged = _merge(cls, [below, *layers])
    hints = typing.get_type_hints(cls)
    typed = {}
    for key, value in merged.items():
        tp = hints[key]
        if tp in (dict, list) or typing.get_origin(tp) in (dict, list):
            expected = dict if (tp is dict or typing.get_origin(tp) is dict) else list
            if expected is list and isinstance(value, str):  # from the command line: a,b,c
                value = [item for item in value.split(",") if item.strip()]
            if not isinstance(value, expected):
                raise UsageError(f"config key '{key}' must be a {expected.__name__}")
            if expected is list and typing.get_args(tp):
                value = [
                    _coerce(item, typing.get_args(tp)[0], f"config key '{key}'") for item in value
                ]
            typed[key] = value
        else:  # _coerce also refuses NaN and inf, which would pass every range check
            given = cli.get(key) is not None  # the command line won: name its flag
            where = f"--{key.replace('_', '-')}" if given else f"config key '{key}'"
            typed[key] = _coerce(value, tp, where)
    cfg = cls(**typed)
    cfg.validate()
    return cfg


def _merge(cls: type, layers: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Later layers over earlier ones; dict values merge key by key."""
    merged: dict[str, Any] = {}
    for source, data in layers:
        for key, value in normalise(data, cls, source).items():
            if isinstance(merged.get(key), dict) and isinstance(value, dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged


def as_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(as_dict(cfg), sort_keys=True)
