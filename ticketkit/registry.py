"""The plugin registry: loads every `ticketkit` entry point, one at a time, and answers lookups.

Loading is lazy (first lookup) and isolated: a plugin that fails to import or to register is
reported once on stderr with its distribution name, and everything else keeps working. So is a
hook function pluggy would never call (a misspelled hook name, or a `ticketkit_*` function
without `@hookimpl`): without the warning, the plugin's names are just missing.
`TICKETKIT_STRICT_PLUGINS=1` re-raises instead (a hook problem is then a UsageError);
`TICKETKIT_DISABLE_PLUGINS=a,b` skips entry points by name or by distribution.

The registry also remembers which modules each third-party plugin's code lives in, so the CLI
can name the plugin (`plugin_of_traceback`) when an exception escapes from it at run time.
"""

from __future__ import annotations

import inspect
import os
import sys
import traceback
import types
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from ticketkit import hookspecs
from ticketkit.errors import UsageError, did_you_mean, unknown
from ticketkit.specs import (
    SPEC_TYPES,
    ArchSpec,
    DatasetSpec,
    ExporterSpec,
    InitializerSpec,
    MethodSpec,
    OptimizerSpec,
    Spec,
)

GROUP = "ticketkit"
KINDS = tuple(SPEC_TYPES)  # methods, archs, datasets, optimizers, initializers, exporters
_SPEC_MARK = f"{hookspecs.hookspec.project_name}_spec"  # the attribute @hookspec sets
HOOKS = tuple(name for name, f in vars(hookspecs).items() if hasattr(f, _SPEC_MARK))
BUILTIN = "ticketkit"  # the distribution (and package) of the built-in plugins


@dataclass(frozen=True)
class Owner:
    """A loaded plugin, as error messages name it: entry-point name and distribution."""

    plugin: str
    distribution: str
    version: str


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
        self._owners: dict[str, Owner] = {}  # module name -> the third-party plugin it is part of
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
            owner = Owner(ep.name, dist, version)
            self._claim(ep.module, owner)  # before the import: it may raise from the module
            try:
                module = ep.load()
                if self.pm.is_registered(module):
                    continue
                self.pm.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not break the others
                self._fail(ep.name, f"{dist} {version}", exc)
                continue
            self._check_hooks(module, owner)
            self._register_from(module, ep.name, dist, version)

    def _check_hooks(self, module: Any, owner: Owner) -> None:
        """Report hook functions that pluggy will never call: a `@hookimpl` whose name is no
        hookspec (pluggy registers it under a hook nothing calls), and a `ticketkit_*` function
        of the module without `@hookimpl` (pluggy skips it). Either way the plugin's names are
        silently missing; this says which function, and the hook it probably meant."""
        callers = self.pm.get_hookcallers(module) or []
        mine = [(c, i) for c in callers for i in c.get_hookimpls() if i.plugin is module]
        problems = [
            f"'{c.name}' is not a ticketkit hook, so it is never called{_nearest(c.name)}"
            for c, impl in mine
            if not c.has_spec() and not impl.optionalhook
        ]
        hooked = {id(impl.function) for _, impl in mine}  # `specname=` may rename a function
        if isinstance(module, types.ModuleType):
            for name, obj in vars(module).items():
                if not name.startswith("ticketkit_") or not inspect.isfunction(obj):
                    continue
                if obj.__module__ != module.__name__ or id(obj) in hooked:
                    continue  # imported from elsewhere, or registered
                if name in HOOKS:
                    problems.append(f"'{name}' lacks @hookimpl, so it is never called")
                else:
                    problems.append(
                        f"'{name}' lacks @hookimpl and is not a ticketkit hook, so it is never "
                        f"called{_nearest(name)}"
                    )
        for problem in problems:
            where = f"plugin '{owner.plugin}' from {owner.distribution} {owner.version}"
            if self._strict():
                raise UsageError(f"{where}: {problem} (TICKETKIT_STRICT_PLUGINS is set)")
            line = f"warning: {where}: {problem}"
            self.failures.append(line)
            print(line, file=sys.stderr)

    def _claim(self, module: str, owner: Owner) -> None:
        """Record that code in `module` (and its submodules) is `owner`'s. Built-in plugins are
        ticketkit's own code: an exception there stays an internal error."""
        if owner.distribution != BUILTIN and module and module not in self._owners:
            self._owners[module] = owner

    def owner_of(self, module: str) -> Owner | None:
        """The third-party plugin whose code `module` is (the nearest claimed package)."""
        if module == BUILTIN or module.startswith(BUILTIN + "."):
            return None
        name = module
        while name:
            if name in self._owners:
                return self._owners[name]
            name = name.rpartition(".")[0]
        return None

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
                        self._claim_factory(entry, module)
                except Exception as exc:
                    self._fail(plugin, f"{dist} {version}", exc)

    def _claim_factory(self, entry: Entry, module: Any) -> None:
        """A factory in another module of the plugin's package (`my_pkg.impl:Mine` registered
        by `my_pkg.register`) is the plugin's code too. One outside that package (a plugin that
        registers `torch.optim:SGD`) is not: its frames would blame the plugin for any failure
        in that library."""
        factory = entry.spec.factory
        if isinstance(factory, str):
            name = factory.partition(":")[0]
        else:
            name = getattr(factory, "__module__", None) or ""
        home = getattr(module, "__name__", "")
        if name and home and name.partition(".")[0] == home.partition(".")[0]:
            self._claim(name, Owner(entry.plugin, entry.distribution, entry.version))

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


def _nearest(name: str) -> str:
    """The hook `name` probably meant, as did_you_mean says it; the list if none is close."""
    return did_you_mean(name, HOOKS) or f" (the hooks are {', '.join(HOOKS)})"


def registry() -> Registry:
    """The process-wide registry."""
    return _registry


def plugin_of_traceback(tb: types.TracebackType | None) -> Owner | None:
    """The third-party plugin in whose code an exception was raised, or None.

    The innermost frame of `tb` whose module a loaded plugin owns (its entry point's module and
    package, and its factories' modules in that package): a plugin calling into torch that
    fails there is still that plugin's failure. Frames in ticketkit, built-in plugins
    included, own nothing. Nothing is loaded here; a registry never loaded owns no modules.
    """
    for frame, _ in reversed(list(traceback.walk_tb(tb))):
        owner = _registry.owner_of(str(frame.f_globals.get("__name__", "")))
        if owner is not None:
            return owner
    return None


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


def get_exporter(name: str) -> ExporterSpec:
    return _registry.entry("exporters", name).spec  # type: ignore[return-value]


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
