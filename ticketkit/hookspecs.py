"""The plugin contract: one registration hook per kind of thing.

A plugin module (built-in or third-party) is listed under the `ticketkit` entry-point group and
implements any of these hooks. Each hook is called once, when the registry first loads, with a
`register` callback that takes the matching spec (see `ticketkit.specs`):

    from ticketkit import hookimpl, MethodSpec

    @hookimpl
    def ticketkit_register_methods(register):
        register(MethodSpec(name="mine", summary="...", factory="my_pkg.impl:Mine"))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("ticketkit")
hookimpl = pluggy.HookimplMarker("ticketkit")

Register = Callable[[Any], None]


@hookspec
def ticketkit_register_methods(register: Register) -> None:
    """Register pruning methods: call `register(MethodSpec(...))` for each one."""


@hookspec
def ticketkit_register_archs(register: Register) -> None:
    """Register architectures: call `register(ArchSpec(...))` for each one."""


@hookspec
def ticketkit_register_datasets(register: Register) -> None:
    """Register datasets: call `register(DatasetSpec(...))` for each one."""


@hookspec
def ticketkit_register_optimizers(register: Register) -> None:
    """Register optimizers: call `register(OptimizerSpec(...))` for each one."""


@hookspec
def ticketkit_register_initializers(register: Register) -> None:
    """Register weight initialisations: call `register(InitializerSpec(...))` for each one."""


@hookspec
def ticketkit_register_exporters(register: Register) -> None:
    """Register `ticketkit export` formats: call `register(ExporterSpec(...))` for each one."""
