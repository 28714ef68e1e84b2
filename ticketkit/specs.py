"""What a plugin registers: one frozen spec per method, architecture, dataset, optimizer or
initializer, each with a frozen dataclass of typed, defaulted, documented options.

This module imports no torch, so `ticketkit plugins` can list everything instantly.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ticketkit.errors import UsageError, did_you_mean


def option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field for a plugin option: a default, a help line, optional choices."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class NoOptions:
    """Options dataclass for plugins that take none."""


@dataclass(frozen=True)
class Spec:
    """Common part of every registered thing.

    `factory` is a callable or a lazy "module:attribute" string, so a registration module can
    stay free of torch and the implementation is imported only when it is used.
    """

    name: str
    summary: str
    factory: Callable[..., Any] | str
    options: type = NoOptions

    kind: typing.ClassVar[str] = "plugin"

    def load(self) -> Callable[..., Any]:
        """The factory, importing it first if it was given as a string."""
        if callable(self.factory):
            return self.factory
        module, _, attr = self.factory.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def make_options(self, values: Mapping[str, Any] | None = None) -> Any:
        """Build the options dataclass from strings or typed values, with clear errors."""
        return parse_options(self.options, values or {}, f"{self.kind[:-1]} '{self.name}'")


# The commands a method can run under, by `MethodSpec.phase`: only those this version's CLI has,
# so a method for a command still to come is refused when it registers rather than listed and
# then unusable. A new method-running command (rewire, find-ticket) adds its phase here.
PHASES: tuple[str, ...] = ("prune", "find-ticket", "rewire")


@dataclass(frozen=True)
class MethodSpec(Spec):
    """A pruning method. `phase` is the command that runs it: one of `PHASES`.

    `defaults` are the training settings the method needs where the shared defaults would not
    train it (the supermask's lr 100), keyed as the command's config keys. They sit under
    everything the user gives: command line > config file > preset > method > defaults.
    """

    phase: str = "prune"
    defaults: Mapping[str, Any] = field(default_factory=dict, hash=False)
    kind: typing.ClassVar[str] = "methods"

    def __post_init__(self) -> None:
        # Checked here, when the plugin's hook builds the spec, so the registry reports it as
        # that plugin failing to register; found later, `require_phase` could only say that
        # the method runs under a command that does not exist.
        if self.phase not in PHASES:
            raise ValueError(
                f"method '{self.name}': phase '{self.phase}' has no command in this version of "
                f"ticketkit; valid phases: {', '.join(PHASES)}"
            )


@dataclass(frozen=True)
class ArchSpec(Spec):
    """An architecture. The factory is `factory(input: InputSpec, **options) -> nn.Module`.

    `family` marks a prefix family such as `timm`: `timm:resnet18` passes `variant="resnet18"`.
    """

    family: bool = False
    kind: typing.ClassVar[str] = "archs"


@dataclass(frozen=True)
class DatasetSpec(Spec):
    """A dataset. The factory returns a `ticketkit.plugin.DatasetSource`."""

    kind: typing.ClassVar[str] = "datasets"


@dataclass(frozen=True)
class OptimizerSpec(Spec):
    """An optimizer: `factory(param_groups, lr, momentum, weight_decay, **options)`, returning a
    `torch.optim.Optimizer`. `roles` are the parameter roles it trains (`ticketkit.plugin.ROLES`;
    empty: all); the others go to SGD with the same settings (Bop takes only "weights")."""

    roles: tuple[str, ...] = ()
    kind: typing.ClassVar[str] = "optimizers"


@dataclass(frozen=True)
class InitializerSpec(Spec):
    """A weight initialisation. The factory is `factory(weight, fan, gain, generator)`, in place."""

    kind: typing.ClassVar[str] = "initializers"


@dataclass(frozen=True)
class ExporterSpec(Spec):
    """A `ticketkit export --format NAME`. The factory is `factory(model, x, ticket, tmp)`: write
    `model` (the ticket's effective weights as plain parameters) to the path `tmp` and return the
    logits on `x` of the file read back by its own consumer, which the export compares with the
    ticket's. `needs`: modules it imports (a missing one is a usage error naming `hint`, the
    install line); `structured`: its model has the removable channels taken out first."""

    needs: tuple[str, ...] = ()
    hint: str = ""
    structured: bool = False
    kind: typing.ClassVar[str] = "exporters"


SPEC_TYPES: dict[str, type[Spec]] = {
    cls.kind: cls
    for cls in (MethodSpec, ArchSpec, DatasetSpec, OptimizerSpec, InitializerSpec, ExporterSpec)
}


# ---- options -----------------------------------------------------------------------------------


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints.get(f.name, str)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Turn a CLI string (or YAML value) into the declared type of an option."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{where}: expected true or false, got '{value}'")
    if tp in (int, float):
        if isinstance(value, bool):
            raise UsageError(f"{where}: expected a number, got '{value}'")
        try:
            number = tp(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: expected {tp.__name__}, got '{value}'") from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise UsageError(f"{where}: expected an integer, got '{value}'")
        if tp is float and not math.isfinite(number):  # NaN would pass every range check
            raise UsageError(f"{where}: expected a finite number, got '{value}'")
        return number
    if tp is str:
        return str(value)
    if origin in (tuple, list):
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        items = [i for i in items if str(i).strip() != ""]
        elem = args[0] if args else str
        return tuple(_coerce(i, elem, where) for i in items)
    return value


def parse_options(cls: type, values: Mapping[str, Any], owner: str) -> Any:
    """Instantiate an options dataclass; unknown names and bad values are UsageErrors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for raw_name, value in values.items():
        name = raw_name.replace("-", "_")
        if name not in fields:
            if not fields:
                raise UsageError(f"{owner} takes no options (got '{raw_name}')")
            hint = did_you_mean(name, fields)
            raise UsageError(f"{owner} has no option '{raw_name}'{hint}")
        f = fields[name]
        typed = _coerce(value, _field_type(cls, f), f"option {raw_name} of {owner}")
        choices = f.metadata.get("choices")
        if choices and typed not in choices:
            raise UsageError(
                f"option {raw_name} of {owner} must be one of {', '.join(choices)}; got '{typed}'"
            )
        kwargs[name] = typed
    return cls(**kwargs)


def describe_options(cls: type) -> list[dict[str, Any]]:
    """Name, type, default, help and choices of every option, for `ticketkit plugins show`."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = _field_type(cls, f)
        rows.append(
            {
                "name": f.name.replace("_", "-"),
                "type": getattr(tp, "__name__", str(tp).replace("typing.", "")),
                "default": f.default if f.default is not dataclasses.MISSING else None,
                "help": f.metadata.get("help", ""),
                "choices": list(f.metadata.get("choices") or []),
            }
        )
    return rows


def parse_assignments(items: list[str] | None, flag: str) -> dict[str, str]:
    """Parse repeated `name=value` CLI items (e.g. `-o gamma=1e-4`)."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"{flag} expects name=value, got '{item}'")
        out[name.strip()] = value.strip()
    return out
