"""Provides the natbox-wide lock: one natbox at a time reads, decides and writes the firewall.

Every read-modify-write (add, remove, apply, restore, recover, a rollback by the watchdog) holds it
from the read it decides on to the read-back that proves the result, so two natboxes (the TUI, a CLI,
a playbook) never build on a ruleset the other is changing. It is an flock on a file in the state
directory, so a natbox that dies releases it at once; the file names the holder for the message the
next one prints. It nests within one process (the engine's add takes it, then recovery and the
transaction take it again) and serialises threads of one process.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from natbox.errors import NatboxError
from natbox.paths import (
    StateFileError,
    check_trusted_fd,
    ensure_dir,
    env_seconds,
    flock_until,
    state_dir,
)

DEFAULT_WAIT = 30.0

_local = threading.RLock()
_depth = 0
_fd: int | None = None


class BusyError(NatboxError):
    """Another natbox holds the lock for longer than this one waits."""


def wait_seconds() -> float:
    """How long to wait for another natbox (NATBOX_WAIT, default 30 s)."""
    return env_seconds("NATBOX_WAIT", DEFAULT_WAIT, 0, 3600)


def _holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 512, 0).decode("utf-8", "replace").split("\n", 2)
        pid, since, what = raw[0], float(raw[1]), raw[2].strip()
        when = time.strftime("%H:%M:%S", time.localtime(since))
        return f"pid {int(pid)}, {what}, since {when}"
    except (OSError, ValueError, IndexError):
        return "pid unknown"


@contextmanager
def held(what: str, wait: float | None = None) -> Iterator[None]:
    """Hold the natbox lock while changing the firewall; `what` names the change for others."""
    global _depth, _fd
    limit = wait_seconds() if wait is None else wait
    got = _local.acquire(timeout=limit) if limit > 0 else _local.acquire(blocking=False)
    if not got:
        raise BusyError(
            "another part of this natbox is changing the firewall", "wait and try again"
        )
    try:
        if _depth == 0:
            _fd = _take(what, limit)
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0 and _fd is not None:
                os.close(_fd)  # closing the descriptor releases the flock
                _fd = None
    finally:
        _local.release()


def _take(what: str, limit: float) -> int:
    path = ensure_dir(state_dir()) / "lock"
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateFileError(
                f"refusing {path}: it is a symbolic link", f"remove it: rm {path}"
            ) from None
        raise StateFileError(f"cannot open {path}: {exc.strerror}", f"check {path}") from None
    try:
        check_trusted_fd(fd, path)
    except StateFileError:
        os.close(fd)
        raise
    try:
        taken = flock_until(fd, limit)
    except OSError:
        os.close(fd)
        raise
    if not taken:
        holder = _holder(fd)
        os.close(fd)
        raise BusyError(
            f"another natbox is changing the firewall ({holder})",
            "wait for it to finish (NATBOX_WAIT sets how long natbox waits)",
        )
    body = f"{os.getpid()}\n{time.time()}\n{what}\n".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, body, 0)
    return fd


def is_held() -> bool:
    """Whether this process holds the lock (for assertions in the transaction code)."""
    return _depth > 0
