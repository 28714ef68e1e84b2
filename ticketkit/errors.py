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
    """Return "; did you mean 'x'?" for the closest choice, or "" if nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown(
    kind: str, name: str, choices: Iterable[str], hint: str = "ticketkit plugins"
) -> UsageError:
    """The standard error for a name that is not registered."""
    choices = sorted(choices)
    return UsageError(f"unknown {kind} '{name}'{did_you_mean(name, choices)} (see `{hint}`)")
