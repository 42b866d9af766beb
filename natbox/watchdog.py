"""Provides the SSH-safe confirm window: apply, then roll back unless confirmed in time.

The countdown does not live in the TUI: a detached watchdog process (its own session, so the SIGHUP
of a dropped SSH connection never reaches it) holds the pending change on disk and removes the
forward at the deadline unless `confirm()` deleted the pending file first. It is started before the
rules are applied, so there is no moment when an unconfirmed forward has nobody watching it.

    python -m natbox.watchdog TOKEN      (started by arm(); not for people)
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from natbox.errors import NatboxError

DEFAULT_STATE_DIR = "/var/lib/natbox"


def state_dir() -> Path:
    """Where natbox keeps its state (NATBOX_STATE_DIR overrides, so tests never touch /var/lib)."""
    return Path(os.environ.get("NATBOX_STATE_DIR", DEFAULT_STATE_DIR))


def _pending_path() -> Path:
    return state_dir() / "pending.json"


@dataclass(frozen=True)
class Pending:
    """A change waiting for confirmation."""

    token: str
    name: str
    deadline: float
    backend: str | None
    watchdog_pid: int

    @property
    def seconds_left(self) -> float:
        """Seconds until the watchdog rolls the change back."""
        return max(0.0, self.deadline - time.time())


def pending() -> Pending | None:
    """The change waiting for confirmation, if any."""
    try:
        data = json.loads(_pending_path().read_text())
        return Pending(
            data["token"],
            data["name"],
            float(data["deadline"]),
            data.get("backend"),
            int(data.get("watchdog_pid", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(p: Pending) -> None:
    path = _pending_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(p.__dict__))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)  # atomic: the watchdog never reads half a file


def _clear(token: str) -> bool:
    """Claim and delete the pending file if it is `token`'s; True for exactly one caller.

    The claim is a rename, which only one process can win: confirm at the last moment and the
    watchdog at the deadline never both act.
    """
    path = _pending_path()
    claimed = path.with_name(f"claimed-{token}-{os.getpid()}")
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return False
    try:
        mine = json.loads(claimed.read_text()).get("token") == token
    except (OSError, ValueError):
        mine = False
    if not mine:
        os.rename(claimed, path)  # someone else's change: put it back
        return False
    claimed.unlink()
    return True


def _stop_watchdog(p: Pending) -> None:
    # Only the process natbox started for this token: check its command line before signalling.
    try:
        cmdline = Path(f"/proc/{p.watchdog_pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"natbox.watchdog" in cmdline and p.token.encode() in cmdline:
        try:
            os.kill(p.watchdog_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def arm(name: str, seconds: float, backend: str | None) -> Pending:
    """Start the watchdog for forward `name` (before it is applied); returns the pending change."""
    if seconds < 1:
        raise NatboxError(
            f"a confirm window of {seconds:g} s is too short", "give at least 1 second"
        )
    current = pending()
    if current is not None:
        raise NatboxError(
            f"forward {current.name} still waits for confirmation ({current.seconds_left:.0f} s left)",
            "natbox confirm (keep it) or natbox rollback (remove it) first",
        )
    token = secrets.token_hex(8)
    p = Pending(token, name, time.time() + seconds, backend, 0)
    _write(p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "natbox.watchdog", token],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    p = Pending(token, name, p.deadline, backend, proc.pid)
    _write(p)
    return p


def disarm(p: Pending) -> None:
    """Forget a pending change without touching the rules (the apply itself failed)."""
    if _clear(p.token):
        _stop_watchdog(p)


def confirm() -> str:
    """Keep the pending change; returns the forward's name."""
    p = pending()
    if p is None:
        raise NatboxError(
            "no change waits for confirmation", "it was confirmed or rolled back already"
        )
    if not _clear(p.token):
        raise NatboxError("the change was rolled back meanwhile", "natbox list shows what is there")
    _stop_watchdog(p)
    return p.name


def rollback() -> str:
    """Remove the pending forward now; returns its name."""
    p = pending()
    if p is None:
        raise NatboxError(
            "no change waits for confirmation", "natbox remove NAME removes a forward"
        )
    if _clear(p.token):
        _stop_watchdog(p)
        _remove(p)
    return p.name


def _remove(p: Pending) -> str:
    from natbox import txn
    from natbox.backends.detect import choose_backend
    from natbox.errors import NotFoundError

    backend, _ = choose_backend(p.backend)
    if p.name.startswith("apply:"):  # a whole `natbox apply`: put its forwards back as they were
        from natbox import converge

        return converge.rollback_saved(backend)
    from natbox import tables

    try:
        with tables.tracked(backend):
            txn.remove(backend, p.name)
    except NotFoundError:
        return f"{p.name} was not there (the apply had failed or it was removed)"
    return f"rolled back {p.name}"


def _log(text: str) -> None:
    try:
        with open(state_dir() / "watchdog.log", "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
    except OSError:
        pass


def watch(token: str) -> int:
    """The watchdog's life: wait for the deadline, roll back unless confirmed."""
    while True:
        p = pending()
        if p is None or p.token != token:
            return 0  # confirmed or rolled back by someone else
        if p.seconds_left <= 0:
            break
        time.sleep(min(0.2, p.seconds_left))
    if not _clear(token):
        return 0
    try:
        _log(_remove(p))
    except NatboxError as exc:
        _log(f"rollback of {p.name} failed: {exc.one_line()}")
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise SystemExit(watch(sys.argv[1]))
