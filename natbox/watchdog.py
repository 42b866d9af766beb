"""Provides the SSH-safe confirm window: apply, then roll back unless confirmed in time.

The countdown does not live in the TUI: a detached watchdog process (its own session, so the SIGHUP
of a dropped SSH connection never reaches it) holds the pending change on disk and removes the
forward at the deadline unless `confirm()` deleted the pending file first. It is started before the
rules are applied, so there is no moment when an unconfirmed forward has nobody watching it.

    python -m natbox.watchdog TOKEN      (started by arm(); not for people)
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from natbox import lock
from natbox.backends.detect import choose_backend
from natbox.errors import NatboxError, shown
from natbox.paths import StateFileError, read_json, rollback_record, state_dir, write_json

# converge, tables and txn are imported where a rollback or a confirmation needs them: every
# natbox command runs supervise(), which with nothing pending needs none of them.

MIN_WINDOW, MAX_WINDOW = 5.0, 3600.0
"""What `--confirm` accepts (the engine takes down to 1 s, for tests of the TUI's countdown)."""
STILL_ARMED = (
    "the confirm window is still open: `natbox confirm` keeps the change, else it is rolled back"
)
"""Said when a change is in the kernel but its record failed: the watchdog still counts down."""
HEARTBEAT = 1.0
"""How often a watchdog proves it is alive; one silent for STALE seconds is taken for dead."""
STALE = 5.0


def _pending_path() -> Path:
    return state_dir() / "pending.json"


def _beat_path(token: str) -> Path:
    return state_dir() / f"watchdog-{token}.beat"


def parse_window(text: str, low: float = MIN_WINDOW) -> float:
    """A confirm window from the command line: finite seconds in [low, 3600]."""
    try:
        value = float(text) if text.isascii() and len(text) <= 20 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not low <= value <= MAX_WINDOW:
        raise NatboxError(
            f"a confirm window of {shown(text)} s is not a number of seconds from {low:g} to "
            f"{MAX_WINDOW:g}",
            "like --confirm 30",
        )
    return value


@dataclass(frozen=True)
class Pending:
    """A change waiting for confirmation."""

    token: str
    name: str
    deadline: float
    backend: str | None
    watchdog_pid: int
    watchdog_start: int = 0
    """The watchdog's start time (clock ticks since boot, /proc/PID/stat): a reused pid is not it."""
    window: float = 0.0
    """The confirm window in seconds, for messages."""

    @property
    def seconds_left(self) -> float:
        """Seconds until the watchdog rolls the change back."""
        return max(0.0, self.deadline - time.time())


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "token": str,
    "name": str,
    "deadline": float,
    "backend": (str, type(None)),
    "watchdog_pid": int,
    "watchdog_start": int,
    "window": float,
}


def pending() -> Pending | None:
    """The change waiting for confirmation, if any (StateFileError for a file natbox cannot trust)."""
    data = read_json(_pending_path(), limit=64 * 1024)
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) != set(_FIELDS):
        raise StateFileError(
            f"{_pending_path()} is not a pending change natbox wrote",
            "look at it, then delete it (natbox list shows the forwards)",
        )
    for key, kind in _FIELDS.items():
        value = data[key]
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if isinstance(value, bool) or not ok:
            raise StateFileError(
                f"{_pending_path()}: {key} has the wrong type", "look at it, then delete it"
            )
    if not math.isfinite(data["deadline"]) or not str(data["token"]).isalnum():
        raise StateFileError(f"{_pending_path()}: bad deadline or token", "delete it")
    return Pending(**data)


def _write(p: Pending) -> None:
    write_json(_pending_path(), asdict(p))  # atomic: the watchdog never reads half a file


def process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (None when there is no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if not fields or fields[0] in ("Z", "X"):
        return None  # a zombie (nobody reaped it yet) is dead all the same
    try:
        return int(fields[19])  # field 22 of stat; fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def alive(p: Pending) -> bool:
    """Whether the watchdog for `p` is running and beating."""
    if p.watchdog_pid <= 0 or process_start(p.watchdog_pid) != p.watchdog_start:
        return False
    try:
        beat = _beat_path(p.token).stat().st_mtime
    except OSError:
        return time.time() - (p.deadline - p.window) < STALE  # just started
    return time.time() - beat < STALE


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
    except (OSError, ValueError, AttributeError):
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


def _spawn(token: str) -> tuple[int, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "natbox.watchdog", token],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    return proc.pid, process_start(proc.pid) or 0


def arm(name: str, seconds: float, backend: str | None) -> Pending:
    """Start the watchdog for forward `name` (before it is applied); returns the pending change."""
    if not math.isfinite(seconds) or not 1 <= seconds <= MAX_WINDOW:
        raise NatboxError(
            f"a confirm window of {seconds:g} s is not possible",
            f"give {MIN_WINDOW:g} to {MAX_WINDOW:g} seconds",
        )
    supervise()
    current = pending()
    if current is not None:
        raise NatboxError(
            f"forward {current.name} still waits for confirmation ({current.seconds_left:.0f} s left)",
            "natbox confirm (keep it) or natbox rollback (remove it) first",
        )
    import secrets

    token = secrets.token_hex(8)
    p = Pending(token, name, time.time() + seconds, backend, 0, 0, seconds)
    _write(p)
    pid, started = _spawn(token)
    p = Pending(token, name, p.deadline, backend, pid, started, seconds)
    _write(p)
    return p


def disarm(p: Pending) -> None:
    """Forget a pending change without touching the rules (the apply itself failed)."""
    from natbox import converge

    if _clear(p.token):
        _stop_watchdog(p)
        _forget_beat(p.token)
        if converge.is_set_change(p.name):
            converge.forget_rollback()


def _forget_beat(token: str) -> None:
    try:
        _beat_path(token).unlink()
    except OSError:
        pass


def _outcome_path() -> Path:
    return state_dir() / "last-outcome.json"


def _record(p: Pending, kept: bool, text: str) -> None:
    try:
        write_json(_outcome_path(), {"token": p.token, "name": p.name, "kept": kept, "text": text})
    except (OSError, NatboxError):
        pass


def outcome(token: str) -> str | None:
    """What became of the pending change `token` ("web kept", "web rolled back: …"), if known."""
    try:
        data = read_json(_outcome_path(), limit=64 * 1024)
    except NatboxError:
        return None
    if isinstance(data, dict) and data.get("token") == token and isinstance(data.get("text"), str):
        return str(data["text"])
    return None


def confirm() -> str:
    """Keep the pending change; returns the forward's name, followed by a note in parentheses when
    the change is kept but something around it (the saved set) could not follow."""
    from natbox import converge

    supervise()
    p = pending()
    if p is None:
        raise NatboxError(
            "no change waits for confirmation", "it was confirmed or rolled back already"
        )
    if p.seconds_left <= 0:
        raise NatboxError(
            f"too late: the confirm window of {p.name} ended",
            "it is being rolled back; add it again",
        )
    if not _clear(p.token):
        raise NatboxError("the change was rolled back meanwhile", "natbox list shows what is there")
    notes: list[str] = []
    if converge.is_set_change(p.name):
        # The rollback record goes first, right after the claim: a record left behind by a crash
        # here would read as an interrupted rollback and undo the change the user kept.
        try:
            notes = converge.kept()  # nothing to put back; an edit's saved entry follows it
        except NatboxError as exc:
            notes = [exc.message]
    _stop_watchdog(p)
    _forget_beat(p.token)
    # Kept is kept: a note never turns into an error (the TUI would say "rolled back").
    said = f"{p.name} ({'; '.join(notes)})" if notes else p.name
    _record(p, True, f"{said} kept")
    return said


def rollback() -> str:
    """Remove the pending forward now; returns its name."""
    p = pending()
    if p is None:
        raise NatboxError(
            "no change waits for confirmation", "natbox remove NAME removes a forward"
        )
    _stop_watchdog(p)
    _roll_back(p, f"{p.name} rolled back on request")
    return p.name


def _roll_back(p: Pending, text: str) -> str | None:
    """Remove `p`'s forward if this process wins the claim; the removal is journaled before the
    claim, so a natbox that dies anywhere in here leaves a journal the next natbox completes."""
    from natbox import converge, tables, txn

    backend, _ = choose_backend(p.backend)
    if converge.is_set_change(p.name):  # `natbox apply`, edit, enable, disable: put back as it was
        # Lock first, claim second: a busy lock leaves the change pending (and its watchdog
        # retrying), never claimed and forgotten. A death after the claim leaves the rollback
        # record without a pending change, which supervise() finishes.
        with lock.held(f"rolling back {p.name}"):
            if not _clear(p.token):
                return None  # confirmed (or rolled back) by someone else first
            _forget_beat(p.token)
            text = f"{text}: {converge.rollback_saved(backend)}"
        _record(p, False, text)
        return text
    with tables.tracked(backend):  # an nft table natbox created goes again once empty
        result = txn.remove_claimed(backend, p.name, claim=lambda: _clear(p.token), missing_ok=True)
    _forget_beat(p.token)
    if result is None:
        return None  # confirmed (or rolled back) by someone else first
    if result.action == "missing":
        text = f"{text} ({p.name} was not there: the apply had failed or it was removed)"
    _record(p, False, text)
    return text


def supervise() -> str | None:
    """Make sure a pending change has a live watchdog; roll back an expired one whose watchdog died.

    Every natbox command and the dashboard call this, so a watchdog killed by SIGKILL, the OOM
    killer or a reboot of its session cannot leave an unconfirmed forward in place for good.
    Returns what it did, for the user (None when all was well).
    """
    p = pending()
    if p is None and rollback_record().exists() and os.geteuid() == 0:
        # A rollback claimed its change and died before it finished: finish it.
        from natbox import converge

        backend, _ = choose_backend(None)
        with lock.held("finishing a rollback"):
            return f"finished an interrupted rollback: {converge.rollback_saved(backend)}"
    if p is None or alive(p):
        return None
    if os.geteuid() != 0:
        return f"the confirm watchdog of {p.name} is not running; run natbox as root to fix it"
    if p.seconds_left > 0:
        pid, started = _spawn(p.token)
        current = pending()
        if current is None or current.token != p.token:
            return None
        _write(Pending(p.token, p.name, p.deadline, p.backend, pid, started, p.window))
        return (
            f"the confirm watchdog of {p.name} had died; a new one rolls it back in "
            f"{p.seconds_left:.0f} s unless confirmed"
        )
    done = _roll_back(
        p, f"{p.name} rolled back: not confirmed within {p.window:g} s (its watchdog had died)"
    )
    return done


def _log(text: str) -> None:
    try:
        with open(state_dir() / "watchdog.log", "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
    except OSError:
        pass


def watch(token: str) -> int:
    """The watchdog's life: beat, wait for the deadline, roll back unless confirmed."""
    # What the rollback needs is loaded now, not at the deadline (commands load it lazily).
    from natbox import converge, tables, txn  # noqa: F401

    beat = _beat_path(token)
    while True:
        try:
            p = pending()
        except NatboxError as exc:
            _log(f"watchdog {token} stops: {exc.one_line()}")
            return 1
        if p is None or p.token != token:
            _forget_beat(token)
            return 0  # confirmed or rolled back by someone else
        try:
            beat.touch()
        except OSError:
            pass
        if p.seconds_left <= 0:
            break
        time.sleep(min(0.2, p.seconds_left))
    while True:
        try:
            done = _roll_back(p, f"{p.name} rolled back: not confirmed within {p.window:g} s")
            break
        except lock.BusyError as exc:  # another natbox is busy: the change stays pending; retry
            _log(f"rollback of {p.name} waits: {exc.one_line()}")
            try:
                beat.touch()
            except OSError:
                pass
            current = pending()
            if current is None or current.token != token:
                return 0
        except NatboxError as exc:
            _log(f"rollback of {p.name} failed: {exc.one_line()}")
            return 1
    if done:
        _log(done)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise SystemExit(watch(sys.argv[1]))
