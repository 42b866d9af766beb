"""Provides the early start of `natbox list`'s reads: its iptables-save runs while Python imports.

On a lived-in box `iptables-nft-save -c` takes ~0.2 s and natbox's imports ~0.07 s: started by the
entry point (natbox.__main__.run) before the command line module is imported, the save runs
alongside the imports instead of after them. Only `natbox list` (and `list --json`) with the
automatic backend starts one; only status.listing_read() takes it (Backend.read(early=True)), and
only when nothing happened in between: _supervise() discards it when it did anything, so a read
that must be fresh (an apply's, a rollback's) never sees one. Imports only what the saves need.
"""

from __future__ import annotations

import os
import subprocess

_started: dict[tuple[str, ...], subprocess.Popen[str]] = {}
_version: str | None = None

LISTING = (["list"], ["list", "--json"])
"""The command lines that start the saves early."""


def _run(argv: list[str]) -> subprocess.Popen[str] | None:
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "LC_ALL": "C"},  # as Runner runs them
        )
    except OSError:
        return None  # not installed: the read itself says so, as without the early start


def start(args: list[str]) -> None:
    """Start `natbox list`'s two saves (IPv4 and IPv6) when `args` is a listing command line and
    the backend is chosen automatically (the flavour as detect() finds it: `iptables -V`)."""
    if args not in LISTING or os.environ.get("NATBOX_BACKEND", "auto") != "auto":
        return
    try:
        version = subprocess.run(
            ["iptables", "-V"],
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return  # no `iptables`: detect() decides differently; the reads run as usual
    global _version
    _version = version
    flavour = "legacy" if "legacy" in version else "nft"
    for tool in (f"iptables-{flavour}-save", f"ip6tables-{flavour}-save"):
        if (proc := _run([tool, "-c"])) is not None:
            _started[(tool, "-c")] = proc


def take(argv: list[str], timeout: float) -> tuple[int, str, str] | None:
    """(returncode, stdout, stderr) of the early run of exactly `argv`, once; None when there is
    none (then the caller runs it itself)."""
    proc = _started.pop(tuple(argv), None)
    if proc is None:
        return None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    return proc.returncode, out, err


def iptables_version() -> str | None:
    """What `iptables -V` printed when start() asked (detect() need not ask again), or None."""
    return _version


def discard() -> None:
    """Forget the early runs (something changed, or may have, since they started)."""
    while _started:
        _, proc = _started.popitem()
        proc.kill()
        proc.communicate()
