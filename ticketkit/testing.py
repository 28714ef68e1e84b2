"""Contract tests for plugin packages: run ticketkit's checks on your own method names.

    # tests/test_contract.py of a plugin package (needs scikit-learn: ticketkit[digits])
    from ticketkit.testing import check_method

    def test_my_method_keeps_the_contract(tmp_path):
        check_method("mine", tmp_path)

Every check trains a tiny MLP on scikit-learn's digits (real images, seconds on a CPU) and
raises AssertionError naming what broke. ticketkit runs the same checks over every
registered method (tests/plugins/test_method_contract.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def dense_checkpoint(root: Path) -> Path:
    """A small dense MLP trained on digits for one epoch: the input of checkpoint methods."""
    from ticketkit import jobs
    from ticketkit.runs.config import PretrainConfig, resolve

    cfg = {"arch": "mlp", "dataset": "digits", "epochs": 1, "eval_every": 0, "out": str(root)}
    return jobs.pretrain(resolve(PretrainConfig, cfg)).path


def prune_config(method: str, out: Path, checkpoint: Path | None = None, **extra: Any) -> Any:
    """A `prune` config for `method` on the digits MLP (`checkpoint` for checkpoint methods)."""
    from ticketkit.registry import get_method
    from ticketkit.runs.config import PruneConfig, resolve

    source = get_method(method).load().source
    if source == "checkpoint" and checkpoint is None:
        checkpoint = dense_checkpoint(out / "dense")
    start = {"input": str(checkpoint)} if source == "checkpoint" else {"arch": "mlp"}
    base = {"method": method, "k": 0.3, "dataset": "digits", "batch_size": 64, "out": str(out)}
    return resolve(PruneConfig, {**base, "epochs": 2, **start, **extra})


def find_ticket_config(method: str, out: Path, **extra: Any) -> Any:
    """A `find-ticket` config for `method` on the digits MLP (k = 0.3, as `prune_config`)."""
    from ticketkit.registry import get_method
    from ticketkit.runs.config import FindTicketConfig, resolve

    base = {"method": method, "k": 0.3, "dataset": "digits", "batch_size": 64, "out": str(out)}
    # a method that needs BatchNorm (slimming) names the MLP's options that give it some
    arch = dict(getattr(get_method(method).load(), "contract_arch_options", {}))
    base.update({"arch_options": arch} if arch else {})
    return resolve(FindTicketConfig, {**base, "epochs": 2, "arch": "mlp", **extra})


def rewire_config(method: str, out: Path, **extra: Any) -> Any:
    """A `rewire` config for `method` on the digits MLP (k = 0.3, as `prune_config`); a method
    with an `every` option updates its masks every 5 steps, so the short run rewires often."""
    import dataclasses

    from ticketkit.registry import get_method
    from ticketkit.runs.config import RewireConfig, resolve

    fields = {f.name for f in dataclasses.fields(get_method(method).options)}
    options = {"every": "5"} if "every" in fields else {}
    base = {"method": method, "k": 0.3, "dataset": "digits", "batch_size": 64, "out": str(out)}
    return resolve(RewireConfig, {**base, "epochs": 2, "arch": "mlp", "options": options, **extra})


def _search(method: str, out: Path, checkpoint: Path | None) -> Any:
    """Run `method` under its own command (`prune`, `find-ticket` or `rewire`) on the digits MLP."""
    from ticketkit import jobs
    from ticketkit.registry import get_method

    if get_method(method).phase == "rewire":
        return jobs.rewire(rewire_config(method, out))
    if get_method(method).phase == "find-ticket":
        return jobs.find_ticket(find_ticket_config(method, out))
    return jobs.prune(prune_config(method, out, checkpoint))


def check_finds_ticket(method: str, root: Path, checkpoint: Path | None = None) -> Any:
    """The method finds a ticket that keeps exactly k of the weights (per layer at layer
    scope, over the network at global scope) and evaluates from the file alone."""
    from ticketkit.artifacts.ticket import Ticket
    from ticketkit.registry import get_method

    result = _search(method, root / "find", checkpoint)
    ticket = Ticket.read(result.path)
    kept = [(info["kept"], math.prod(info["shape"])) for info in ticket.meta["layers"].values()]
    if get_method(method).load().budget == "values":  # tied weights: dense masks by design
        assert all(k == n for k, n in kept), (method, kept)
        return ticket
    if ticket.meta["scope"] == "global" or ticket.meta["granularity"] != "unstructured":
        total = sum(n for _, n in kept)
        assert sum(k for k, _ in kept) <= total, f"{method}: keeps more weights than it has"
        if ticket.meta["granularity"] == "unstructured":
            assert sum(k for k, _ in kept) == total - math.floor(0.7 * total), (method, kept)
    else:
        assert all(k == n - math.floor(0.7 * n) for k, n in kept), (method, kept)
    assert 0 <= result.metrics["test_acc1"] <= 100
    return ticket


@contextmanager
def interrupted_after_first_checkpoint() -> Iterator[None]:
    """Raise KeyboardInterrupt right after the first end-of-epoch checkpoint is written, as a
    Ctrl-C between epochs would."""
    from ticketkit.runs.directory import Run

    original = Run.save_checkpoint

    def save(self: Run, tag: str, *args: Any, **kwargs: Any) -> Path:
        path = original(self, tag, *args, **kwargs)
        if tag.endswith("last"):
            raise KeyboardInterrupt
        return path

    Run.save_checkpoint = save  # type: ignore[method-assign]
    try:
        yield
    finally:
        Run.save_checkpoint = original  # type: ignore[method-assign]


def check_resumes_exactly(method: str, root: Path, checkpoint: Path | None = None) -> None:
    """A run interrupted after its first epoch and run again gives the ticket of the
    uninterrupted run, bit for bit (CPU): everything the method keeps is checkpointed."""
    from ticketkit.artifacts.ticket import Ticket

    full = _search(method, root / "full", checkpoint)
    if Ticket.read(full.path).meta["config"]["epochs"] == 0:
        return  # one-shot: nothing to interrupt
    try:
        with interrupted_after_first_checkpoint():
            _search(method, root / "cut", checkpoint)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError(f"{method}: the run wrote no checkpoint to interrupt after")
    resumed = _search(method, root / "cut", checkpoint)
    a, b = Ticket.read(full.path), Ticket.read(resumed.path)
    assert a.meta["payload_sha256"] == b.meta["payload_sha256"], (
        f"{method}: the resumed run's ticket differs from the uninterrupted run's"
    )
    assert a.meta["metrics"] == b.meta["metrics"]


def check_method(method: str, root: Path) -> None:
    """Every check of a method plugin."""
    checkpoint = None
    from ticketkit.registry import get_method

    if get_method(method).load().source == "checkpoint":
        checkpoint = dense_checkpoint(root / "dense")
    check_finds_ticket(method, root, checkpoint)
    check_resumes_exactly(method, root, checkpoint)
