"""Errors a user can act on. The CLI turns them into one `Error: ...` line and an exit code.

`UsageError` (exit 2) means the input was wrong: a name, a value, a file. `JobError` (exit 1)
means the input was fine but the job could not finish. Anything else is a bug and keeps its
traceback behind TICKETKIT_DEBUG=1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TicketkitError(Exception):
    """Base class; `exit_code` is what the CLI returns."""

    exit_code = 2


class UsageError(TicketkitError):
    """Bad usage or bad input: unknown names, values out of range, unreadable files."""

    exit_code = 2


class JobError(TicketkitError):
    """The job itself failed (e.g. training diverged)."""

    exit_code = 1


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for the closest choice, or "" if nothing is close.

    Choices equally close are all named ("conv5": conv2, conv4, conv6 or conv8), in the given
    order: picking one of them would be a guess.
    """
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=4, cutoff=0.5)
    if not close:
        return ""
    best = _likeness(name, close[0])
    tied = [f"'{c}'" for c in choices if c in close and _likeness(name, c) == best]
    names = tied[0] if len(tied) == 1 else f"{', '.join(tied[:-1])} or {tied[-1]}"
    return f"; did you mean {names}?"


def _likeness(a: str, b: str) -> float:
    """difflib's similarity ratio, the measure `get_close_matches` ranks by."""
    return difflib.SequenceMatcher(None, a, b).ratio()


def unknown(
    kind: str, name: str, choices: Iterable[str], hint: str = "ticketkit plugins"
) -> UsageError:
    """The standard error for a name that is not registered."""
    choices = sorted(choices)
    return UsageError(f"unknown {kind} '{name}'{did_you_mean(name, choices)} (see `{hint}`)")
