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

The dashboard does not save the whole ruleset for its first frame (#13): it lists just the chains it
shows (`iptables-nft -t TABLE -S CHAIN -v`, ~4 ms each, in parallel, where one save of a
10,000-rule box is ~250 ms of a CPU that Python's imports then compete for), each only once netlink
says the chain exists (iptables-nft prints a default policy for a built-in chain of a table that
is not there, and older versions may create the table), and turns their lines into the save's
(SHOWN_CHAINS, _EarlyChains). Anything unexpected (a built-in's name on a native chain, a failed
listing, counters not certain) and the first read falls back to the save. Lines naming natbox
outside those chains (tampering()), or a native rule that makes iptables disown a table, are not
in it: the dashboard reads the whole ruleset right after its first frame (Dashboard.complete is
False).
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


SHOWN_CHAINS: dict[str, tuple[str, ...]] = {
    "filter": ("FORWARD", "NATBOX-FORWARD"),
    "nat": (
        "PREROUTING",
        "OUTPUT",
        "POSTROUTING",
        "NATBOX-OUTPUT",
        "NATBOX-POSTROUTING",
        "NATBOX-PREROUTING",
    ),
}
"""The chains the dashboard shows, per table (ruleset.WATCHED and natbox's own, plan.OWN_CHAINS;
a test holds them equal), in the order iptables-nft-save prints them: its tables in a fixed order
(filter before nat, whatever order the kernel has them in), the built-ins in hook order, then
user chains by name."""


class _EarlyChains:
    """The dashboard's first read of one family: `iptables-nft -S CHAIN -v` of each chain it shows
    that exists, all started at once; once the thread is done, `shown` holds them as the lines of
    a save (what a save with -c holds for those chains), or None when any of them failed, and
    `errors` what they printed on stderr (the save's warnings, e.g. legacy tables present)."""

    __slots__ = ("errors", "procs", "shown", "thread")

    def __init__(self, tool: str, chains: dict[str, list[str]]) -> None:
        self.procs: list[tuple[str, str, subprocess.Popen[str]]] = []
        self.shown: list[str] | None = None
        self.errors = ""
        wanted = [(table, name) for table, names in chains.items() for name in names]
        for table, name in wanted:
            proc = _run([tool, "-t", table, "-S", name, "-v"])
            if proc is None:  # no such tool: none of it is taken (shown stays None)
                self.kill()
                self.procs = []
                break
            self.procs.append((table, name, proc))
        self.thread = threading.Thread(target=self._collect, args=(chains,), daemon=True)
        self.thread.start()

    def _collect(self, chains: dict[str, list[str]]) -> None:
        listed: dict[tuple[str, str], str] = {}
        errors: list[str] = []
        for table, name, proc in self.procs:
            try:
                out, err = proc.communicate()
            except (OSError, ValueError):
                return
            if proc.returncode != 0:
                return  # shown stays None: the read falls back to the save
            listed[(table, name)] = out
            errors.append(err)
        if len(listed) == sum(len(names) for names in chains.values()):
            try:
                self.shown = as_save(chains, listed)
            except ValueError:
                return  # a line not as expected (no counters): the save is read instead
            self.errors = "".join(dict.fromkeys(errors))

    def kill(self) -> None:
        """Stop the listings; their thread (if it runs) reaps them."""
        for _, _, proc in self.procs:
            proc.kill()
        if not hasattr(self, "thread"):  # (before it started: reaped here)
            for _, _, proc in self.procs:
                proc.wait()


def as_save(chains: dict[str, list[str]], listed: dict[tuple[str, str], str]) -> list[str]:
    """`iptables -S CHAIN -v` listings (per (table, chain)) as the lines iptables-save -c prints
    for those chains: per table, the declarations (`:CHAIN POLICY [p:b]`), then the rules
    (`[p:b] -A ...`, the counters iptables put before the target taken out)."""
    out: list[str] = []
    for table, names in chains.items():
        out.append(f"*{table}\n")
        rules: list[str] = []
        # iptables-nft makes built-in chains on first use, and its save declares all of a table's
        # (`:FORWARD ACCEPT [0:0]`) whether they are there or not: so do these lines.
        known = SHOWN_CHAINS.get(table, ())
        order = [n for n in known if n in names or not n.startswith("NATBOX-")]
        for name in order + [n for n in names if n not in known]:
            if name not in names:
                out.append(f":{name} ACCEPT [0:0]\n")
                continue
            for line in listed[(table, name)].split("\n"):
                if line.startswith("-P "):
                    rule, counters = _counters(line)
                    _, chain, policy = rule.split()[:3]
                    out.append(f":{chain} {policy} {counters}\n")
                elif line.startswith("-N "):
                    out.append(f":{line[3:].strip()} - [0:0]\n")
                elif line.startswith("-A "):
                    rule, counters = _counters(line)
                    rules.append(f"{counters} {rule}\n")
        out.extend(rules)
        out.append("COMMIT\n")
    return out


def _counters(line: str) -> tuple[str, str]:
    """A `-S -v` line without its counters (the one ` -c PKTS BYTES` outside quotes) and them in
    the save's form, `[PKTS:BYTES]`. ValueError when there is none, or more than one (an
    interface name with spaces is printed unquoted): the save is read instead, counters and
    rules are never guessed."""
    found: list[int] = []
    quoted = False
    escaped = False
    for at, char in enumerate(line):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True  # iptables escapes `"` and `\` inside quotes
        elif char == '"':
            quoted = not quoted
        elif not quoted and char == " " and line.startswith(" -c ", at):
            parts = line[at + 4 :].split(" ", 2)
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                found.append(at)
    if len(found) != 1:
        raise ValueError(f"{len(found)} counters in {line!r}")
    at = found[0]
    parts = line[at + 4 :].split(" ", 2)
    rest = " " + parts[2] if len(parts) > 2 else ""
    return line[:at] + rest, f"[{parts[0]}:{parts[1]}]"


_started: dict[tuple[str, ...], _Early | _EarlyChains] = {}
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
    if args == DASHBOARD:
        for family, prefix in ((4, "ip"), (6, "ip6")):
            present = chains_present(family, SHOWN_CHAINS)
            if present is not None:
                _started[("-S", f"{prefix}tables-nft")] = _EarlyChains(
                    f"{prefix}tables-nft", present
                )
            elif (proc := _run([f"{prefix}tables-nft-save", "-c"])) is not None:
                # Netlink cannot tell (a chain iptables cannot own): the save, early, as before.
                _started[(f"{prefix}tables-nft-save", "-c")] = _Early(proc)
        return
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
    if isinstance(early, _EarlyChains):  # (not started under a save's argv)
        early.kill()
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


def shown(family: int, timeout: float) -> tuple[str, str] | None:
    """The chains the dashboard shows (SHOWN_CHAINS) of nft family `family` (4, 6), as the lines
    of a save, and what the listings printed on stderr: the listings start() began with the
    process, taken once, or listed now. None when they cannot be had (the caller saves the whole
    ruleset)."""
    tool = f"ip{'6' if family == 6 else ''}tables-nft"
    early = _started.pop(("-S", tool), None)
    if not isinstance(early, _EarlyChains):
        present = chains_present(family, SHOWN_CHAINS)
        if present is None:
            return None
        early = _EarlyChains(tool, present)
    early.thread.join(timeout)
    if early.thread.is_alive() or early.shown is None:
        early.kill()
        return None
    return "".join(early.shown), early.errors


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
        if isinstance(early, _EarlyChains):
            early.kill()
        else:
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


def chains_present(family: int, wanted: dict[str, tuple[str, ...]]) -> dict[str, list[str]] | None:
    """Which of the `wanted` chains (per table) exist in nftables family `family` (4, 6), asked
    over netlink (the table list, then one NFT_MSG_GETCHAIN per chain of a table that is there,
    ~0.05 ms each); each table that is there is in it, in `wanted`'s order, even with none of
    them. None when netlink cannot say, or a built-in's name is a chain iptables did not make (no
    hook: a native nft chain named PREROUTING, whose rules `iptables -S` would not show): the
    caller reads the whole ruleset instead."""
    tables = nft_tables()
    if tables is None:
        return None
    prefix = "ip6 " if family == 6 else "ip "
    order = [t for t in wanted if prefix + t in tables]
    nlmsg_type = (10 << 8) | 4  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETCHAIN
    nfproto = 2 if family == 4 else 10
    asked: dict[int, tuple[str, str]] = {}
    requests = b""
    for table in order:
        for name in wanted[table]:
            seq = len(asked) + 1
            asked[seq] = (table, name)
            attrs = _nla(1, table) + _nla(3, name)  # NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME
            length = 16 + 4 + len(attrs)
            requests += struct.pack("=IHHII", length, nlmsg_type, 1, seq, 0)  # NLM_F_REQUEST
            requests += struct.pack("=BBH", nfproto, 0, 0) + attrs
    found: set[int] = set()
    answered: set[int] = set()
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12) as sock:  # NETLINK_NETFILTER
            sock.settimeout(1.0)
            if requests:
                sock.send(requests)
            while len(answered) < len(asked):
                reply = sock.recv(65536)
                offset = 0
                while offset + 16 <= len(reply):
                    length, kind, _, seq, _ = struct.unpack_from("=IHHII", reply, offset)
                    if length < 16:
                        return None
                    if kind == 2:  # NLMSG_ERROR: an errno (ENOENT: no such chain)
                        (error,) = struct.unpack_from("=i", reply, offset + 16)
                        if error not in (0, -2):
                            return None
                    elif kind == (10 << 8) | 3:  # NFT_MSG_NEWCHAIN: it is there
                        name = asked.get(seq, ("", "NATBOX-"))[1]
                        hooked = _attr(reply, offset + 20, offset + length, 4) is not None  # HOOK
                        if not name.startswith("NATBOX-") and not hooked:
                            return None
                        found.add(seq)
                    answered.add(seq)
                    offset += (length + 3) & ~3
    except (OSError, struct.error):
        return None
    present: dict[str, list[str]] = {table: [] for table in order}
    for seq, (table, name) in asked.items():
        if seq in found:
            present[table].append(name)
    return present


def nft_tables() -> list[str] | None:
    """Every ip/ip6 nft table of this process's network namespace ("ip nat", ...), in the
    kernel's order, from one NFT_MSG_GETTABLE dump over netlink (~1 ms, no rules fetched); None
    where it cannot be read. A dump the kernel marks interrupted (a table came or went meanwhile)
    is asked again, once."""
    for _ in range(2):
        try:
            found = _dump_tables()
        except (OSError, struct.error):
            return None
        if found is not None:
            return found
    return None


_FAMILIES = {2: "ip", 10: "ip6"}  # NFPROTO_IPV4, NFPROTO_IPV6


def _dump_tables() -> list[str] | None:
    """One dump: the tables, or None when the kernel said it was interrupted (NLM_F_DUMP_INTR)."""
    request = struct.pack("=IHHII", 20, (10 << 8) | 1, 0x301, 1, 0)  # GETTABLE, REQUEST|DUMP
    request += struct.pack("=BBH", 0, 0, 0)  # nfgenmsg: every family
    found: list[str] = []
    interrupted = False
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12) as sock:  # NETLINK_NETFILTER
        sock.settimeout(1.0)
        sock.send(request)
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise OSError("netlink: no answer")
            offset = 0
            while offset + 16 <= len(data):
                length, kind, flags = struct.unpack_from("=IHH", data, offset)
                if length < 16 or kind == 2:  # malformed, or NLMSG_ERROR
                    raise OSError("netlink: error")
                interrupted = interrupted or bool(flags & 0x10)  # NLM_F_DUMP_INTR
                if kind == 3:  # NLMSG_DONE
                    return None if interrupted else found
                if kind == (10 << 8) and length >= 20:  # NFT_MSG_NEWTABLE
                    family = _FAMILIES.get(data[offset + 16])
                    name = _attr(data, offset + 20, offset + length, 1)  # NFTA_TABLE_NAME
                    if family and name is not None:
                        found.append(f"{family} {name}")
                offset += (length + 3) & ~3


def _attr(data: bytes, start: int, end: int, wanted: int) -> str | None:
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4:
            return None
        if kind & 0x3FFF == wanted:  # NLA_TYPE_MASK
            return data[start + 4 : start + length].split(b"\0", 1)[0].decode(errors="replace")
        start += (length + 3) & ~3
    return None


def _nla(kind: int, value: str) -> bytes:
    data = value.encode() + b"\0"
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)
