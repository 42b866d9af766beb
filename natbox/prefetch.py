"""Provides the early start of `natbox list`'s and the dashboard's reads: their iptables-save runs
while Python imports.

On a lived-in box `iptables-nft-save -c` takes ~0.2 s and natbox's imports ~0.07 s (the dashboard's,
with Textual, ~0.3 s): started by the entry point (natbox.__main__.run) before the command line
module is imported, the save runs alongside the imports instead of after them, and a thread keeps
only the lines a listing's parse looks at while the save streams (ruleset.shown_lines: natbox's
rules and the NAT/FORWARD built-ins'). Only `natbox list` (and `list --json`) and `natbox` alone
(the dashboard) with the automatic backend start them; only a listing read takes them
(Backend.read(natbox_only=True, keep=WATCHED, early=True): status.listing_read, Engine.prefetch),
and only when nothing happened in between: _supervise() discards them when it did anything, and
the dashboard uses them only under the nft ruleset generation noted before they started, so a read
that must be fresh (an apply's, a rollback's) never sees one. Imports only what the saves need.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading


class _Early:
    """One early save: its process and the thread that keeps only the lines a listing's parse
    looks at while the save streams (ruleset.shown_lines)."""

    __slots__ = ("proc", "shown", "thread")

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.shown: list[str] | None = None
        self.thread = threading.Thread(target=self._keep_shown, daemon=True)
        self.thread.start()

    def _keep_shown(self) -> None:
        from natbox.ruleset import (
            WATCHED,
            shown_lines,  # imported by then, mostly: the save takes ~0.1 s
        )

        assert self.proc.stdout is not None
        try:
            self.shown = list(shown_lines(self.proc.stdout, WATCHED))
        except (OSError, ValueError):  # discard() killed it meanwhile: nobody will ask
            self.shown = None


_started: dict[tuple[str, ...], _Early] = {}
_version: str | None = None
_generation: int | None = None

LISTING = (["list"], ["list", "--json"])
"""The command lines that start the saves early."""
DASHBOARD: list[str] = []
"""`natbox` alone: the dashboard, whose first read starts early too (see Engine.prefetch)."""


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
    """Start the two saves (IPv4 and IPv6) of `natbox list` or the dashboard when `args` is one of
    their command lines and the backend is chosen automatically (the flavour as detect() finds it:
    `iptables -V`). The nft ruleset generation is noted first (`generation`)."""
    if (args not in LISTING and args != DASHBOARD) or os.environ.get(
        "NATBOX_BACKEND", "auto"
    ) != "auto":
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
    global _version, _generation
    _version = version
    flavour = "legacy" if "legacy" in version else "nft"
    _generation = nft_generation() if flavour == "nft" else None
    if args == DASHBOARD and _generation is None:
        return  # the dashboard takes early saves only with their generation (Engine.prefetch)
    for tool in (f"iptables-{flavour}-save", f"ip6tables-{flavour}-save"):
        if (proc := _run([tool, "-c"])) is not None:
            _started[(tool, "-c")] = _Early(proc)


def take(argv: list[str], timeout: float, keep: object = None) -> tuple[int, str, str] | None:
    """(returncode, stdout, stderr) of the early run of exactly `argv`, once; None when there is
    none (then the caller runs it itself). An early save holds only the lines a listing's parse
    looks at: it is handed out only to a natbox_only read with the listing's `keep`, WATCHED
    (status.listing_read, Engine.prefetch); any other read drops it and runs its own."""
    from natbox.ruleset import WATCHED

    early = _started.pop(tuple(argv), None)
    if early is None:
        return None
    proc = early.proc
    if keep == WATCHED:
        early.thread.join(timeout)
    if early.thread.is_alive() or early.shown is None or keep != WATCHED:
        proc.kill()
        proc.communicate()
        return None
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    return proc.returncode, "".join(early.shown), err


def generation() -> int | None:
    """The nft ruleset generation noted just before the early saves started (None: none started,
    or not an nft host): a read taken from them shows that generation's rules."""
    return _generation


def iptables_version() -> str | None:
    """What `iptables -V` printed when start() asked (detect() need not ask again), or None."""
    return _version


def discard() -> None:
    """Forget the early runs (something changed, or may have, since they started)."""
    global _generation
    _generation = None
    while _started:
        _, early = _started.popitem()
        early.proc.kill()
        early.proc.communicate()


def nft_generation() -> int | None:
    """The nftables ruleset generation (NFT_MSG_GETGEN over netlink): it changes with every rule
    change, iptables-nft's included, and costs one round trip. None where it cannot be read."""
    nlmsg_type = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN
    request = struct.pack("=IHHII", 20, nlmsg_type, 1, 1, 0) + struct.pack("=BBH", 0, 0, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12) as sock:  # NETLINK_NETFILTER
            sock.settimeout(1.0)
            sock.send(request)
            reply = sock.recv(4096)
    except OSError:
        return None
    offset = 16 + 4  # nlmsghdr, nfgenmsg; then attributes: NFTA_GEN_ID (1) is a big-endian u32
    while offset + 4 <= len(reply):
        length, kind = struct.unpack_from("=HH", reply, offset)
        if length < 4:
            break
        if kind & 0x7FFF == 1 and length >= 8:
            return int(struct.unpack_from(">I", reply, offset + 4)[0])
        offset += (length + 3) & ~3
    return None
