"""Provides the crash journal: every apply and remove writes its intent before touching the kernel and
clears it after. A natbox that finds an unfinished entry completes or undoes it and says which, so the
ruleset is always the state before or the state after, never between.

`fault(point)` is the test-only hook for the fault-injection suite: with NATBOX_FAULT=<point> set,
natbox kills itself (SIGKILL) at that point, as a crash or `kill -9` would.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from natbox.model import Forward
from natbox.watchdog import state_dir


def fault(point: str) -> None:
    """Die here if the fault-injection suite asks for it (NATBOX_FAULT=point)."""
    if os.environ.get("NATBOX_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _path() -> Path:
    return state_dir() / "journal.json"


@dataclass(frozen=True)
class Entry:
    """An apply or remove that started."""

    op: str
    name: str
    forward: dict[str, object] | None
    started: float


def begin(op: str, name: str, forward: Forward | None) -> None:
    """Record the intent (durably) before the kernel is touched."""
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    body = {
        "op": op,
        "name": name,
        "forward": forward.to_dict() if forward else None,
        "started": time.time(),
    }
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(body))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def end() -> None:
    """The operation finished (or was undone): nothing to recover."""
    try:
        _path().unlink()
    except FileNotFoundError:
        pass


def pending() -> Entry | None:
    """The unfinished operation, if natbox died in one."""
    try:
        data = json.loads(_path().read_text())
        return Entry(
            str(data["op"]), str(data["name"]), data.get("forward"), float(data["started"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- set operations (natbox apply) ------------------------------------------------------------------
# A separate entry in its own file, so the single-forward recovery above never misreads it: it names
# the target of the whole change and the state before it, per forward (see converge.recover_set).


def _set_path() -> Path:
    return state_dir() / "journal-set.json"


def begin_set(body: dict[str, object]) -> None:
    """Record a set operation's intent (durably) before the kernel is touched."""
    path = _set_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps({**body, "started": time.time()}))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def pending_set() -> dict[str, object] | None:
    """The unfinished set operation, if natbox died in one."""
    try:
        data = json.loads(_set_path().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def end_set() -> None:
    """The set operation finished (or was undone)."""
    try:
        _set_path().unlink()
    except FileNotFoundError:
        pass
