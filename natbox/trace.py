"""Provides `natbox trace`: ask the kernel which rules a forward's packets really meet.

On hosts whose iptables is the nft flavour, natbox arms two TRACE rules in raw PREROUTING, scoped to
the forward (clients' packets to the listen address and port; the backend's replies), reads the
kernel's trace events with `xtables-monitor --trace`, and assembles them per packet: the
in-interface, every table:chain:rule it met with the verdict, where DNAT and SNAT rewrote it, the
out-interface, and, when it was dropped, the rule or the chain policy that dropped it, with its
owner. Native nftables chains (firewalld) show up too.

The armed rules are written to a state file (state_dir()/trace.json) *before* they go in and are
removed on exit and Ctrl-C; after a SIGKILL, `cleanup_stale()` (natbox recover) removes them.
On legacy-only hosts the kernel reports TRACE only through its log, which natbox does not read:
`unavailable()` says so in one line.

The parser and the assembler are pure and tested on real xtables-monitor output.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from natbox import paths
from natbox.backends.detect import detect
from natbox.errors import NatboxError
from natbox.model import Forward
from natbox.ruleset import classify_owner
from natbox.runner import Runner

STATE_FILE = "trace.json"
COMMENT = "natbox-trace"
IPTABLES_TABLES = frozenset({"filter", "nat", "mangle", "raw", "security"})
_FAMILY = {"1": "inet", "2": "ip", "3": "arp", "5": "netdev", "7": "bridge", "10": "ip6"}
_PACKET_RE = re.compile(r"^PACKET: (\d+) ([0-9a-f]+) (.*)$")
_TRACE_RE = re.compile(r"^TRACE: (\d+) ([0-9a-f]+) (\S+?)(?:\s+(-[46] -t .*))?$")
_RULE_PREFIX = re.compile(r"^-[46] -t (\S+) ")
# nftables' own verdict codes, as xtables-monitor prints them when it has no name for them.
_VERDICT_CODES = {
    "0xffffffff": "CONTINUE",
    "0xfffffffe": "BREAK",
    "0xfffffffd": "JUMP",
    "0xfffffffc": "GOTO",
    "0xfffffffb": "RETURN",
}
_DNAT_RE = re.compile(r"-j DNAT --to-destination (\S+)")
_SNAT_RE = re.compile(r"-j SNAT --to-source (\S+)")


class TraceUnavailable(NatboxError):
    """This host cannot trace (legacy iptables, or no xtables-monitor)."""


# ---------------------------------------------------------------- parsing and assembling (pure)


@dataclass(frozen=True)
class Header:
    """A PACKET line: what the packet looks like at one hook."""

    family: str
    fields: dict[str, str]
    flags: tuple[str, ...]

    @property
    def summary(self) -> str:
        """`tcp 192.168.1.20:40102 → 192.168.1.30:1234 SYN`."""
        f = self.fields
        proto = {"6": "tcp", "17": "udp", "1": "icmp"}.get(f.get("PROTO", ""), "")
        if not proto:
            proto = "tcp" if set(self.flags) & {"SYN", "ACK", "FIN", "RST", "PSH"} else "udp"
        src = f"{f.get('SRC', '?')}:{f['SPORT']}" if "SPORT" in f else f.get("SRC", "?")
        dst = f"{f.get('DST', '?')}:{f['DPORT']}" if "DPORT" in f else f.get("DST", "?")
        flags = f" {' '.join(self.flags)}" if self.flags else ""
        return f"{proto} {src} → {dst}{flags}"


def parse_header(family: str, rest: str) -> Header:
    """Split `IN=lan0 OUT= SRC=... SYN ACK` into fields and flags."""
    fields: dict[str, str] = {}
    flags: list[str] = []
    for tok in rest.split():
        key, eq, value = tok.partition("=")
        if eq:
            if value:
                fields[key] = value
        elif tok.isupper() and tok not in ("DF",):
            flags.append(tok)
    return Header(family, fields, tuple(flags))


@dataclass(frozen=True)
class Step:
    """One TRACE event: a rule (or a policy, or a return) a packet met in one table:chain."""

    family: str
    table: str
    chain: str
    kind: str
    """rule, policy or return."""
    verdict: str
    """CONTINUE, ACCEPT, DROP, JUMP, GOTO, RETURN, ..."""
    target: str = ""
    """The chain a JUMP/GOTO goes to."""
    rule: str = ""
    """The rule in iptables-save form (`-A CHAIN ...`), empty for policies and native nftables."""

    @property
    def native(self) -> bool:
        """A native nftables chain (not one of iptables-nft's tables)."""
        return self.family not in ("2", "10") or self.table not in IPTABLES_TABLES

    @property
    def owner(self) -> str:
        """Who wrote the rule: natbox, docker, kube, ufw, other (nftables for native chains)."""
        if self.native:
            return "nftables"
        if not self.rule:
            return "policy"
        owner = classify_owner(self.chain, self.rule)
        if owner.startswith("natbox"):
            return "natbox"
        if owner == "other" and self.chain.lower().startswith(("ufw", "firewalld", "shorewall")):
            return self.chain.lower().split("-")[0].split("_")[0]
        return owner

    @property
    def place(self) -> str:
        """`filter:FORWARD`, or `nftables inet fw/filter_fwd` for native chains."""
        if self.native:
            return f"nftables {_FAMILY.get(self.family, self.family)} {self.table}/{self.chain}"
        return f"{self.table}:{self.chain}"

    @property
    def drops(self) -> bool:
        """This step ends the packet."""
        return self.verdict in ("DROP", "REJECT")

    def describe(self) -> str:
        """What happened here, in words."""
        if self.kind == "policy":
            return f"policy {self.verdict}"
        if self.kind == "return":
            return "end of chain, back to the caller"
        if self.verdict == "RETURN":
            return f"RETURN  [{self.owner}]"
        if self.verdict in ("JUMP", "GOTO"):
            return f"{self.verdict.lower()} to {self.target}  [{self.owner}]"
        if m := _DNAT_RE.search(self.rule):
            return f"DNAT to {m.group(1)}  [{self.owner}]"
        if m := _SNAT_RE.search(self.rule):
            return f"SNAT to {m.group(1)}  [{self.owner}]"
        if " -j MASQUERADE" in self.rule:
            return f"MASQUERADE  [{self.owner}]"
        if " -j REJECT" in self.rule:
            return f"REJECT  [{self.owner}]"
        return f"{self.verdict}  [{self.owner}]"


def parse_step(line: str) -> Step | None:
    """Parse one ` TRACE: 2 id table:chain:kind:verdict[:target]  -4 -t table -A ...` line."""
    m = _TRACE_RE.match(line.strip())
    if m is None:
        return None
    family, where, rule = m.group(1), m.group(3), m.group(4) or ""
    parts = where.split(":")
    if len(parts) < 3:
        return None
    table, chain, kind = parts[:3]
    rest = parts[4:] if kind == "rule" else parts[3:]  # rules carry their handle (0x..) first
    verdict = _VERDICT_CODES.get(rest[0], rest[0]) if rest else ""
    target = rest[1] if len(rest) > 1 else ""
    rule = _RULE_PREFIX.sub("", rule).strip()
    return Step(family, table, chain, kind, verdict, target, rule)


@dataclass
class TracedPacket:
    """One packet's way through this box."""

    trace_id: str
    headers: list[tuple[int, Header]] = field(default_factory=list)
    """(index of the next step, header): what the packet looked like from that step on."""
    steps: list[Step] = field(default_factory=list)

    @property
    def first(self) -> Header:
        """The packet as it arrived."""
        return self.headers[0][1]

    @property
    def last(self) -> Header:
        """The packet as last seen."""
        return self.headers[-1][1]

    @property
    def dropped_by(self) -> Step | None:
        """The step that dropped it, if one did."""
        return next((s for s in self.steps if s.drops), None)

    def direction(self, fwd: Forward | None) -> str:
        """request (client → listen) or reply (backend → box)."""
        if fwd is not None and self.first.fields.get("SRC") == str(fwd.backend.ip):
            return "reply"
        return "request"

    def outcome(self) -> str:
        """The last line: dropped by what, or left through which interface."""
        step = self.dropped_by
        if step is not None:
            if step.native:
                return f"dropped by {step.place} ({step.describe()})"
            if step.kind == "policy":
                return f"dropped by the policy of {step.place}"
            return f"dropped by {step.place} rule: {step.rule}  [{step.owner}]"
        out = self.last.fields.get("OUT")
        if out:
            return f"forwarded out {out}"
        return "accepted here (no out-interface seen yet)"

    def lines(self, fwd: Forward | None = None) -> list[str]:
        """The packet's path as printed by the CLI and shown by the TUI (same words)."""
        first = self.first
        out = [
            f"{self.direction(fwd)}: {first.summary}, in {first.fields.get('IN', '?')}",
        ]
        shown = first
        hdrs = dict(self.headers)
        for i, step in enumerate(self.steps):
            h = hdrs.get(i)
            if h is not None and (
                h.fields.get("DST") != shown.fields.get("DST")
                or h.fields.get("SRC") != shown.fields.get("SRC")
                or h.fields.get("DPORT") != shown.fields.get("DPORT")
                or h.fields.get("OUT") != shown.fields.get("OUT")
            ):
                via = f", out {h.fields['OUT']}" if h.fields.get("OUT") else ""
                out.append(f"    now {h.summary}{via}")
                shown = h
            if COMMENT in step.rule or (step.table == "raw" and step.kind == "policy"):
                continue  # natbox's own trace rule and the raw table's pass
            out.append(f"  {step.place:<28} {step.describe()}")
        mark = "✗" if self.dropped_by else "✓"
        out.append(f"  {mark} {self.outcome()}")
        return out

    def to_dict(self, fwd: Forward | None = None) -> dict[str, object]:
        """JSON-ready."""
        return {
            "direction": self.direction(fwd),
            "packet": self.first.summary,
            "in": self.first.fields.get("IN"),
            "out": self.last.fields.get("OUT"),
            "steps": [
                {
                    "where": s.place,
                    "kind": s.kind,
                    "verdict": s.verdict,
                    "rule": s.rule,
                    "owner": s.owner,
                    "what": s.describe(),
                }
                for s in self.steps
                if COMMENT not in s.rule
            ],
            "dropped": self.dropped_by is not None,
            "outcome": self.outcome(),
        }


class Assembler:
    """Turns xtables-monitor --trace lines into TracedPackets, in the order they started."""

    def __init__(self) -> None:
        self.packets: list[TracedPacket] = []
        self._current: dict[str, TracedPacket] = {}
        self._pending: dict[str, Header] = {}

    def feed(self, line: str) -> TracedPacket | None:
        """Take one line; return the packet it added to (None for lines that are not events)."""
        text = line.strip()
        if m := _PACKET_RE.match(text):
            self._pending[m.group(2)] = parse_header(m.group(1), m.group(3))
            return None
        step = parse_step(text)
        if step is None:
            return None
        tid = _TRACE_RE.match(text).group(2)  # type: ignore[union-attr]  # parse_step matched it
        pkt = self._current.get(tid)
        starts = step.table == "raw" and step.chain == "PREROUTING" and COMMENT in step.rule
        if pkt is None or starts:
            pkt = TracedPacket(tid)
            self._current[tid] = pkt
            self.packets.append(pkt)
        header = self._pending.pop(tid, None)
        if header is not None:
            pkt.headers.append((len(pkt.steps), header))
        elif not pkt.headers:
            pkt.headers.append((0, Header("", {}, ())))
        pkt.steps.append(step)
        return pkt

    def feed_all(self, lines: Iterable[str]) -> list[TracedPacket]:
        """Feed every line; the packets."""
        for line in lines:
            self.feed(line)
        return self.packets


# ---------------------------------------------------------------- arming and reading (the kernel)


def trace_specs(fwd: Forward) -> list[list[str]]:
    """The TRACE rules' arguments (after `-A PREROUTING`): the clients' packets and the replies."""
    prefix = fwd.host_prefix
    back = fwd.backend.ipt_ports if fwd.backend.is_range else str(fwd.backend.port)
    tag = ["-m", "comment", "--comment", f"{COMMENT}:{fwd.name}", "-j", "TRACE"]
    out: list[list[str]] = []
    for proto in fwd.protocols:
        ports = fwd.listen.ipt_ports
        out.append(
            ["-d", f"{fwd.listen.ip}{prefix}", "-p", proto, "-m", proto, "--dport", ports, *tag]
        )
        out.append(
            ["-s", f"{fwd.backend.ip}{prefix}", "-p", proto, "-m", proto, "--sport", back, *tag]
        )
    return out


def _state_path() -> Path:
    return paths.state_dir() / STATE_FILE


def _tool(family: int) -> str:
    return "ip6tables-nft" if family == 6 else "iptables-nft"


def unavailable(runner: Runner | None = None) -> str | None:
    """Why this host cannot trace (None when it can)."""
    if shutil.which("xtables-monitor") is None or shutil.which("iptables-nft") is None:
        return "tracing needs xtables-monitor and iptables-nft (apt-get install iptables)"
    if detect(runner).active == "legacy":
        return (
            "tracing is not available: this host's iptables is the legacy flavour, whose TRACE "
            "events reach only the kernel log"
        )
    return None


def arm(fwd: Forward, runner: Runner | None = None) -> list[list[str]]:
    """Insert the TRACE rules (recorded in the state file first, so a crash can be cleaned up)."""
    runner = runner or Runner()
    specs = trace_specs(fwd)
    paths.write_json(_state_path(), {"pid": os.getpid(), "family": fwd.family, "rules": specs})
    tool = _tool(fwd.family)
    for spec in specs:
        res = runner.run([tool, "-t", "raw", "-I", "PREROUTING", "1", *spec])
        if not res.ok:
            disarm(runner)
            raise NatboxError(
                f"could not arm the trace: {res.first_error_line()}",
                "natbox doctor diagnoses without a trace",
            )
    return specs


def disarm(runner: Runner | None = None) -> int:
    """Remove the TRACE rules the state file lists (every copy), then the file. How many went."""
    runner = runner or Runner()
    data = paths.read_json(_state_path())
    if not isinstance(data, dict):
        paths.remove(_state_path())
        return 0
    tool = _tool(int(data.get("family", 4)))
    gone = 0
    for spec in data.get("rules", []):
        if not isinstance(spec, list) or COMMENT not in " ".join(map(str, spec)):
            continue  # only ever delete natbox's own trace rules
        for _ in range(16):
            if not runner.run([tool, "-t", "raw", "-D", "PREROUTING", *map(str, spec)]).ok:
                break
            gone += 1
    paths.remove(_state_path())
    return gone


def _tracing(pid: int) -> bool:
    """Whether `pid` is a natbox still running (its trace must not be pulled from under it)."""
    if pid == os.getpid():
        return True
    try:
        return b"natbox" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False  # gone (a reused pid is some other program: not natbox's trace)


def cleanup_stale(runner: Runner | None = None) -> str | None:
    """Remove trace rules a killed `natbox trace` left behind (natbox recover); say so."""
    data = paths.read_json(_state_path())
    if data is None:
        return None
    pid = data.get("pid") if isinstance(data, dict) else None
    if isinstance(pid, int) and _tracing(pid):
        return None  # a trace is running right now
    gone = disarm(runner)
    return f"removed {gone} TRACE rule(s) a killed natbox trace left behind"


@dataclass
class Result:
    """What one trace saw."""

    packets: list[TracedPacket]
    timed_out: bool


def run(
    fwd: Forward,
    *,
    timeout: float = 30.0,
    max_packets: int = 4,
    on_packet: Callable[[TracedPacket], None] | None = None,
    runner: Runner | None = None,
    stop: threading.Event | None = None,
) -> Result:
    """Arm, wait for the next connection (or the timeout), read its packets, disarm.

    Ends at the first drop, after a reply has been forwarded and 0.3 s passed quietly, after
    `max_packets` (the handshake and the first data), or at the timeout. `on_packet` is called with each packet once it is complete
    (a newer one started, or the trace ended). Setting `stop` ends it early (the TUI's Escape). The
    rules are removed on every way out.
    """
    runner = runner or Runner()
    why = unavailable(runner)
    if why is not None:
        raise TraceUnavailable(why, "natbox doctor diagnoses without a trace")
    asm = Assembler()
    reported = 0
    proc = subprocess.Popen(
        ["xtables-monitor", "--trace"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    try:
        time.sleep(0.1)  # let the monitor subscribe before the first traced packet
        arm(fwd, runner)
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = ""
        while True:
            now = time.monotonic()
            if now >= deadline or (stop is not None and stop.is_set()):
                return Result(asm.packets[:max_packets], True)
            ready, _, _ = select.select([fd], [], [], min(0.1, deadline - now))
            if ready:
                chunk = os.read(fd, 65536).decode(errors="replace")
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split("\n")
                for line in lines:
                    asm.feed(line)
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            while on_packet is not None and reported < min(len(asm.packets) - 1, max_packets):
                on_packet(asm.packets[reported])
                reported += 1
            pkts = asm.packets
            if any(p.dropped_by for p in pkts[:max_packets]) or len(pkts) > max_packets:
                break
            replied = any(p.direction(fwd) == "reply" and p.last.fields.get("OUT") for p in pkts)
            if len(pkts) == max_packets and quiet_since is not None and now - quiet_since >= 0.3:
                break
            if replied and quiet_since is not None and now - quiet_since >= 0.3:
                break
        return Result(asm.packets[:max_packets], False)
    finally:
        try:
            disarm(runner)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=2)
            while on_packet is not None and reported < min(len(asm.packets), max_packets):
                on_packet(asm.packets[reported])
                reported += 1
