"""The lock that keeps one process training in a run directory at a time.

Two identical commands started together hash to the same run directory; without a lock both
trained in it, `metrics.jsonl` got every epoch twice and `results.csv` two rows. The lock is
`fcntl.flock` on `<run>/.lock`, so the kernel drops it when its holder exits, however it exits
(a killed process leaves no stale lock to clean up by hand). The holder writes its pid, host and
start time into the file so that the refused process can name it. The file itself stays: an
unlinked lock file can be locked by one process while another creates and locks a new one.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ticketkit.errors import UsageError

LOCK_NAME = ".lock"

# run directory -> open descriptor holding its lock: a process that claims a directory it
# already holds (a job resumed in the same process) takes it again instead of refusing itself
_held: dict[Path, int] = {}


def acquire(root: Path) -> None:
    """Lock the run directory `root` (which must exist) for this process, or raise a
    UsageError naming the process that holds it."""
    key = root.resolve()
    if key in _held:
        return
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)  # the umask applies
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(
            f"run directory {root} is in use: {holder(path)} trains in it; wait for it to "
            "finish (the same command then returns its result), or pick another --name or --out"
        ) from None
    except OSError as exc:  # a file system without locks (some network mounts)
        os.close(fd)
        raise UsageError(
            f"cannot lock the run directory {root} ({exc.strerror}); pass an --out on a "
            "local file system"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    _held[key] = fd


def release(root: Path) -> None:
    """Give the lock back (a no-op if this process does not hold it); the file is emptied
    first, so that it never names a process that no longer trains there."""
    fd = _held.pop(root.resolve(), None)
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor drops the flock


def holder(path: Path) -> str:
    """Who holds the lock, as the holder wrote it. The holder writes right after it locks, so
    an empty file is read again for a moment before giving up on the details."""
    for _ in range(20):
        try:
            record = json.loads(path.read_text() or "null")
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict):
            return (
                f"ticketkit process {record.get('pid')} on {record.get('host')} "
                f"(started {record.get('started')})"
            )
        time.sleep(0.05)
    return "another ticketkit process"
