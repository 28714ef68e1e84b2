"""The plugin registry: loads every `ticketkit` entry point, one at a time, and answers lookups.

Loading is lazy (first lookup) and isolated: a plugin that fails to import or to register is
reported once on stderr with its distribution name, and everything else keeps working.
`TICKETKIT_STRICT_PLUGINS=1` re-raises instead; `TICKETKIT_DISABLE_PLUGINS=a,b` skips entry
points by name or by distribution.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from ticketkit import hookspecs
from ticketkit.errors import UsageError, unknown
from ticketkit.specs import (
    SPEC_TYPES,
    ArchSpec,
    DatasetSpec,
    InitializerSpec,
    MethodSpec,
    OptimizerSpec,
    Spec,
)

GROUP = "ticketkit"
KINDS = tuple(SPEC_TYPES)  # methods, archs, datasets, optimizers, initializers


@dataclass(frozen=True)
class Entry:
    """A registered spec and where it came from."""

    spec: Spec
    distribution: str
    version: str
    plugin: str  # entry-point name

    @property
    def kind(self) -> str:
        return self.spec.kind


class Registry:
    """All registered plugins, by kind and name."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] | None = None
        self.failures: list[str] = []
        self.pm = pluggy.PluginManager("ticketkit")
        self.pm.add_hookspecs(hookspecs)

    # -- loading -------------------------------------------------------------------------------
    def _strict(self) -> bool:
        return os.environ.get("TICKETKIT_STRICT_PLUGINS", "") not in ("", "0")

    def _fail(self, plugin: str, dist: str, exc: BaseException) -> None:
        line = f"warning: plugin '{plugin}' from {dist} failed to load: {type(exc).__name__}: {exc}"
        self.failures.append(line)
        print(line, file=sys.stderr)
        if self._strict():
            raise exc

    def load(self) -> None:
        """Import and register every entry point (once)."""
        if self._entries is not None:
            return
        self._entries = {kind: {} for kind in KINDS}
        disabled = {s.strip() for s in os.environ.get("TICKETKIT_DISABLE_PLUGINS", "").split(",")}
        points = sorted(metadata.entry_points(group=GROUP), key=_builtin_first)
        for ep in points:
            dist = ep.dist.name if ep.dist else "unknown"
            version = ep.dist.version if ep.dist else "?"
            if ep.name in disabled or dist in disabled:
                continue
            try:
                module = ep.load()
                if self.pm.is_registered(module):
                    continue
                self.pm.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not break the others
                self._fail(ep.name, f"{dist} {version}", exc)
                continue
            self._register_from(module, ep.name, dist, version)

    def _register_from(self, module: Any, plugin: str, dist: str, version: str) -> None:
        """Call the module's registration hooks, keeping what succeeded if one fails."""
        assert self._entries is not None
        for kind in KINDS:
            caller = getattr(self.pm.hook, f"ticketkit_register_{kind}")
            for impl in caller.get_hookimpls():
                if impl.plugin is not module:
                    continue
                staged: list[Entry] = []

                def register(spec: Spec, _kind: str = kind, _staged: list = staged) -> None:
                    expected = SPEC_TYPES[_kind]
                    if not isinstance(spec, expected):
                        raise TypeError(f"ticketkit_register_{_kind} expects {expected.__name__}")
                    _staged.append(Entry(spec, dist, version, plugin))

                try:
                    impl.function(register=register)
                    for entry in staged:
                        self._add(entry)
                except Exception as exc:
                    self._fail(plugin, f"{dist} {version}", exc)

    def _add(self, entry: Entry) -> None:
        assert self._entries is not None
        table = self._entries[entry.kind]
        old = table.get(entry.spec.name)
        if old is not None:
            raise ValueError(
                f"{entry.kind[:-1]} '{entry.spec.name}' is already registered by "
                f"{old.distribution} {old.version}; {entry.distribution} may not replace it"
            )
        table[entry.spec.name] = entry

    # -- lookups -------------------------------------------------------------------------------
    def entries(self, kind: str | None = None) -> list[Entry]:
        self.load()
        assert self._entries is not None
        kinds = [kind] if kind else list(KINDS)
        return [e for k in kinds for _, e in sorted(self._entries[k].items())]

    def entry(self, kind: str, name: str) -> Entry:
        """The entry for `name`; `timm:resnet18` finds the family `timm`."""
        self.load()
        assert self._entries is not None
        table = self._entries[kind]
        if name in table:
            return table[name]
        family, sep, _ = name.partition(":")
        if sep and family in table and getattr(table[family].spec, "family", False):
            return table[family]
        raise unknown(kind[:-1], name, table)

    def find(self, name: str) -> list[Entry]:
        """Every entry with this name, of any kind."""
        return [e for e in self.entries() if e.spec.name == name]


_registry = Registry()


def _builtin_first(ep: metadata.EntryPoint) -> tuple[int, str]:
    """ticketkit's own plugins load first, so a third party can never take a built-in's name."""
    return (0 if ep.dist and ep.dist.name == "ticketkit" else 1, ep.name)


def registry() -> Registry:
    """The process-wide registry."""
    return _registry


def get_method(name: str) -> MethodSpec:
    return _registry.entry("methods", name).spec  # type: ignore[return-value]


def get_arch(name: str) -> ArchSpec:
    return _registry.entry("archs", name).spec  # type: ignore[return-value]


def get_dataset(name: str) -> DatasetSpec:
    return _registry.entry("datasets", name).spec  # type: ignore[return-value]


def get_optimizer(name: str) -> OptimizerSpec:
    return _registry.entry("optimizers", name).spec  # type: ignore[return-value]


def get_initializer(name: str) -> InitializerSpec:
    return _registry.entry("initializers", name).spec  # type: ignore[return-value]


def names(kind: str) -> list[str]:
    return [e.spec.name for e in _registry.entries(kind)]


def method_defaults(values: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The chosen method's training defaults as a config layer (`config.resolve`'s `beneath`).

    An unknown method is reported here, before any complaint about the rest of the config.
    """
    name = values.get("method")
    if not isinstance(name, str):
        return None
    spec = get_method(name)
    return (f"method {name}'s defaults", dict(spec.defaults)) if spec.defaults else None


def require_phase(spec: MethodSpec, phase: str) -> None:
    """Methods belong to one command; say which when used from another."""
    if spec.phase != phase:
        raise UsageError(
            f"method '{spec.name}' runs under `ticketkit {spec.phase}`, not `ticketkit {phase}`"
        )
