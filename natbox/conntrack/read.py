"""Provides the conntrack readers: /proc/net/nf_conntrack (or `conntrack -L`) into Flow rows, fast.

Also how full the table is and the accounting switch (plain /proc/sys reads and writes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from natbox import gcpause
from natbox.conntrack.flow import _LINE, _OTHER, Flow, parse_generic
from natbox.errors import NatboxError, NotRootError
from natbox.runner import Runner

PROC_CONNTRACK = Path("/proc/net/nf_conntrack")
PROC_NETFILTER = Path("/proc/sys/net/netfilter")


@dataclass
class FlowRead:
    """What one read of the conntrack table gave."""

    flows: list[Flow]
    skipped: int = 0
    """Malformed lines, skipped and counted (never fatal)."""
    source: str = ""
    plain: bool = False
    """No line holds a character JSON would escape (quote, backslash, control): Flow.to_json may
    skip its per-row check."""


_ESCAPED = re.compile(r'[\x00-\x09\x0b-\x1f"\\]')
CHUNK = 32 * 1024
"""Characters parsed per regex call (~200 lines): the regex holds the GIL for one call, so a big
table is parsed in slices and a UI thread waits at most one slice (~1 ms) for its turn."""


def parse_text(text: str) -> FlowRead:
    """Parse conntrack output (proc or `conntrack -L [-o extended]` format) in one regex pass."""
    # 100k rows of small objects would trigger the cyclic GC dozens of times; none of them can form
    # a cycle, so it stays off for the bulk build (measured: build 4x faster).
    with gcpause.paused():
        table = FlowRead([], 0, plain=_ESCAPED.search(text) is None)
        # Values that repeat across a big table (protocol, timeout, state, addresses, listen port)
        # are stored once; slice by slice, the duplicates are freed before the next slice.
        pool: dict[str, str] = {}
        start = 0
        while start < len(text):
            end = text.find("\n", start + CHUNK)
            end = len(text) if end < 0 else end + 1
            _parse_rows(_LINE.findall(text, start, end), table, pool)
            start = end
        return table


def _parse_rows(rows: list[tuple[str, ...]], table: FlowRead, pool: dict[str, str]) -> None:
    new = tuple.__new__
    append = table.flows.append
    share = pool.setdefault
    for row in rows:
        if not row[_OTHER]:
            p, t, st, s1, d1, sp, dp, rest, s2, d2, sp2, dp2, _ = row
            append(
                new(
                    Flow,
                    (
                        share(p, p),
                        share(t, t),
                        share(st, st),
                        share(s1, s1),
                        share(d1, d1),
                        sp,
                        share(dp, dp),
                        rest,
                        share(s2, s2),
                        share(d2, d2),
                        share(sp2, sp2),
                        sp if dp2 == sp else dp2,
                    ),
                )
            )
            continue
        line = row[_OTHER]
        if line.startswith("conntrack v") or not line.strip():
            continue
        try:
            append(parse_generic(line))
        except (ValueError, IndexError, KeyError):
            table.skipped += 1


def parse_lines(lines: Iterable[str]) -> FlowRead:
    """Parse conntrack lines (see parse_text)."""
    return parse_text("\n".join(lines))


HEAD = 64 * 1024
"""Characters a first look reads (~400 flows: more than a screen), in about a millisecond."""


READER_ENV = "NATBOX_CONNTRACK_READER"
"""`netlink` or `proc` forces one reader (no fallback); unset, ctnetlink is tried first."""


def reader() -> str:
    """Which reader the environment asks for: "auto", "netlink" or "proc"."""
    value = os.environ.get(READER_ENV, "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("netlink", "ctnetlink"):
        return "netlink"
    if value == "proc":
        return "proc"
    raise NatboxError(f"{READER_ENV}={value!r} is not a reader", "use netlink, proc or auto")


def read_netlink() -> FlowRead:
    """The whole table over ctnetlink, as Decoded rows (see dump.py). Raises dump.Unavailable
    where the kernel has no ctnetlink and dump.Unsupported for a flow it cannot show as /proc
    would: the caller reads /proc instead."""
    from natbox.conntrack import dump

    with gcpause.paused():  # as in parse_text: 100k rows that cannot form cycles
        decoder = dump.Decoder("row")
        flows: list[Flow] = []
        for rows in dump.batches(decoder):
            flows += rows
        return FlowRead(flows, decoder.skipped, source="ctnetlink", plain=True)


def read_flows(
    runner: Runner | None = None, proc: Path = PROC_CONNTRACK, head: int | None = None
) -> FlowRead:
    """Read the whole table: over ctnetlink (the kernel's binary dump, decoded: `read_netlink`)
    where it can, else /proc, else `conntrack -L -o extended` where the kernel has no such file.

    With `head`, only the first `head` characters of /proc, whole lines only: the kernel formats the
    table as it is read, so a first screen of flows costs a millisecond, not the whole table's time.
    """
    choice = reader()
    if head is None and proc == PROC_CONNTRACK and choice != "proc":
        from natbox.conntrack import dump

        try:
            return read_netlink()
        except (dump.Unavailable, dump.Unsupported):
            if choice == "netlink":
                raise
    try:
        with open(proc, encoding="ascii", errors="replace") as fh:
            if head is None:
                text = fh.read()
            else:
                text = fh.read(head)
                text = text[: text.rfind("\n") + 1]
    except PermissionError:
        raise NotRootError("read the conntrack table") from None
    except FileNotFoundError:
        res = (runner or Runner()).run(["conntrack", "-L", "-o", "extended"])
        if not res.ok:
            if "ermission" in res.stderr or os.geteuid() != 0:
                raise NotRootError("read the conntrack table") from None
            raise NatboxError(
                f"conntrack -L failed: {res.first_error_line()}", "is nf_conntrack loaded?"
            ) from None
        table = parse_text(res.stdout)
        table.source = "conntrack -L"
        return table
    table = parse_text(text)
    table.source = str(proc)
    return table


@dataclass(frozen=True)
class Fill:
    """How full the table is, and whether byte/packet accounting is on."""

    count: int | None
    max: int | None
    accounting: bool
    timestamps: bool


def table_fill(root: Path = PROC_NETFILTER) -> Fill:
    """nf_conntrack_count/_max and the accounting switches (microseconds: plain file reads)."""

    def read(name: str) -> int | None:
        try:
            return int((root / name).read_text())
        except (OSError, ValueError):
            return None

    return Fill(
        read("nf_conntrack_count"),
        read("nf_conntrack_max"),
        read("nf_conntrack_acct") == 1,
        read("nf_conntrack_timestamp") == 1,
    )


def enable_accounting(root: Path = PROC_NETFILTER) -> None:
    """Turn on per-flow packet/byte counters for new flows (runtime sysctl)."""
    try:
        (root / "nf_conntrack_acct").write_text("1\n")
    except PermissionError:
        raise NotRootError("turn on conntrack accounting") from None
