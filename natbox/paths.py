"""Provides where natbox keeps its files, the one way it writes them, and the one way it reads them.

natbox runs as root and acts on what its state files say (at boot, `natbox restore` applies
forwards.json; `natbox recover` acts on journal.json), so a file anyone else could have written is
refused, never trusted: it must be a regular file (no symlink, FIFO or device), owned by root (or
the user running natbox), not writable by group or others, in a directory with the same properties,
and of bounded size.

Every write is atomic and durable: a temporary file in the same directory, 0600, fsynced, renamed
over the target, the directory fsynced.

Locations are overridable so tests never touch the host's /etc or /var/lib: NATBOX_STATE_DIR
(/var/lib/natbox), NATBOX_CONFIG_DIR (/etc/natbox), NATBOX_UNIT_DIR (/etc/systemd/system),
NATBOX_SYSCTL_DIR (/etc/sysctl.d).
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from natbox.errors import NatboxError, shown

MAX_STATE_BYTES = 16 * 1024 * 1024
"""The largest state file natbox reads (10,000 saved forwards take about 3 MB)."""


class StateFileError(NatboxError):
    """A state or config file natbox refuses to trust or cannot read."""


class StateWriteError(StateFileError):
    """A state or config file natbox could not write or delete (a full disk, a read-only mount,
    permissions): said with what the kernel has then (see `writes`)."""

    def __init__(self, message: str, hint: str = "", *, committed: bool = False) -> None:
        super().__init__(message, hint)
        self.committed = committed
        """The change is in the kernel (only its record failed): a confirm window stays armed."""


@contextmanager
def writes(what: str, then: str, *, committed: bool = False) -> Iterator[None]:
    """Turn an OSError of the state files written inside into one StateWriteError: `what` says
    what is true of the kernel then and what was not written, `then` what to do about it;
    `committed`: the change is in the kernel already."""
    try:
        yield
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise StateWriteError(
            f"{what} ({where}{exc.strerror or exc})", then, committed=committed
        ) from None


def state_dir() -> Path:
    """Where natbox keeps its runtime state: journal, pending change, lock."""
    return Path(os.environ.get("NATBOX_STATE_DIR") or "/var/lib/natbox")


def rollback_record() -> Path:
    """Where a confirm window's rollback record lives (natbox.converge writes it): here, so that
    watchdog.supervise, which every command runs, can look for it without importing converge."""
    return state_dir() / "apply-rollback.json"


def config_dir() -> Path:
    """Where the saved forwards live."""
    return Path(os.environ.get("NATBOX_CONFIG_DIR") or "/etc/natbox")


def unit_dir() -> Path:
    """Where the systemd unit goes."""
    return Path(os.environ.get("NATBOX_UNIT_DIR") or "/etc/systemd/system")


def sysctl_dir() -> Path:
    """Where the ip_forward drop-in goes."""
    return Path(os.environ.get("NATBOX_SYSCTL_DIR") or "/etc/sysctl.d")


def env_seconds(name: str, default: float, low: float, high: float) -> float:
    """A duration from the environment, validated like an option (finite, within [low, high])."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw) if raw.isascii() else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not low <= value <= high:
        raise NatboxError(
            f"{name}={shown(raw)} is not a number of seconds from {low:g} to {high:g}",
            f"unset it or set it like {name}={default:g}",
        )
    return value


def flock_until(fd: int, seconds: float) -> bool:
    """Take an exclusive flock on `fd`, retrying for up to `seconds`; False when it stayed taken."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def check_trusted_fd(fd: int, path: Path) -> None:
    """Refuse an open state file that is not a regular file natbox may trust (see the module)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise StateFileError(
            f"refusing {path}: it is not a regular file", "remove it; natbox writes a new one"
        )
    if not _trusted(st):
        raise StateFileError(
            f"refusing {path}: it is writable by other users or not owned by root",
            f"check who changed it, then chown root {path} && chmod 600 {path}",
        )


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    """Create `path` (and parents) if missing; refuse one that is not a trusted directory."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        st = os.stat(path)
    except (FileExistsError, NotADirectoryError):
        st = None
    except PermissionError:
        raise StateFileError(f"cannot create {path}", "run natbox with sudo") from None
    except OSError as exc:
        raise StateFileError(f"cannot create {path}: {exc.strerror}", "check the path") from None
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise StateFileError(
            f"{path} is not a directory", "remove it, or point NATBOX_STATE_DIR elsewhere"
        )
    if not _trusted(st):
        raise StateFileError(
            f"{path} is writable by other users or not owned by root",
            f"chown root {path} && chmod go-w {path}",
        )
    return path


def read_trusted(path: Path, limit: int = MAX_STATE_BYTES) -> str | None:
    """The text of a state file natbox may act on, or None when there is none.

    Raises StateFileError naming the file and the fix when it cannot be trusted or read.
    """
    try:
        dir_st = os.stat(path.parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"cannot read {path.parent}: {exc.strerror}", "check it") from None
    if not stat.S_ISDIR(dir_st.st_mode):
        raise StateFileError(f"{path.parent} is not a directory", "remove it or fix the path")
    if not _trusted(dir_st):
        raise StateFileError(
            f"refusing {path}: its directory is writable by other users or not owned by root",
            f"chown root {path.parent} && chmod go-w {path.parent}",
        )
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise StateFileError(f"cannot read {path}", "run natbox with sudo") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateFileError(
                f"refusing {path}: it is a symbolic link", f"replace it with a regular file: {path}"
            ) from None
        raise StateFileError(f"cannot read {path}: {exc.strerror}", "check the file") from None
    try:
        check_trusted_fd(fd, path)
        st = os.fstat(fd)
        if st.st_size > limit:
            raise StateFileError(
                f"refusing {path}: {st.st_size} bytes is more than natbox reads ({limit})",
                "check the file",
            )
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise StateFileError(f"refusing {path}: it keeps growing", "check the file")
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise StateFileError(f"{path} is not UTF-8 text", "remove it or fix it") from None


def read_json(path: Path, limit: int = MAX_STATE_BYTES) -> object | None:
    """The JSON value in a trusted state file (None when there is no file)."""
    text = read_trusted(path, limit)
    if text is None:
        return None
    try:
        value: object = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateFileError(
            f"{path} line {exc.lineno}: {exc.msg}", "fix the file, or remove it"
        ) from None
    except RecursionError:
        raise StateFileError(f"{path} is nested too deeply", "fix the file") from None
    return value


def write_text(path: Path, text: str, mode: int = 0o600, dir_mode: int = 0o700) -> Path:
    """Write `text` to `path` atomically and durably (the one writer natbox uses). An OSError
    names `path` (a full disk fails a write or fsync, which name no file)."""
    try:
        return _write_text(path, text, mode, dir_mode)
    except OSError as exc:
        if exc.filename is None or str(exc.filename).endswith(".tmp"):
            exc.filename = str(path)
        raise


def _write_text(path: Path, text: str, mode: int, dir_mode: int) -> Path:
    ensure_dir(path.parent, dir_mode)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    # The file is in place, whole and synced; the directory's sync only makes its name survive a
    # power cut sooner. If that fails, the write stands (saying it failed would be false: a
    # journal said "not written" would still be found and acted on by the next command).
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def write_json(path: Path, data: object, mode: int = 0o600, dir_mode: int = 0o700) -> Path:
    """Write `data` as JSON, atomically and durably."""
    return write_text(path, json.dumps(data, indent=2) + "\n", mode, dir_mode)


def remove(path: Path) -> None:
    """Delete a state file if it is there."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
