"""Provides the conntrack table: a fast reader, Flow parsing, flows matched to forwards, and kill.

Reading: /proc/net/nf_conntrack (the kernel formats it; one compiled regex parses the TCP/UDP bulk),
or `conntrack -L -o extended` where the kernel has no such file (same line format). Killing: one
ctnetlink IPCTNL_MSG_CT_DELETE by tuple, written here (no scan of the table, unlike `conntrack -D`).
"""

from __future__ import annotations

import errno
import gc
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from natbox.errors import NatboxError, NotFoundError, NotRootError, ValidationError
from natbox.model import Forward
from natbox.runner import Runner

PROC_CONNTRACK = Path("/proc/net/nf_conntrack")
PROC_NETFILTER = Path("/proc/sys/net/netfilter")

# One pass over the whole text: TCP/UDP lines (the bulk of any big table) are split into the fields
# that bulk work needs (filter, forward lookup, key); the rest of the line is kept whole and parsed
# on access. Any other line lands whole in the last group and takes the generic path.
_LINE = re.compile(
    r"^(?:ipv[46]\s+\d+\s+)?(?:(tcp|udp)\s+\d+\s+(\d+)\s+(?:([A-Z_]+)\s+)?"
    r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)(.*)|(.+))$",
    re.MULTILINE,
)
_REST = re.compile(
    r"(?: packets=(\d+) bytes=(\d+))?( \[UNREPLIED\])? src=(\S+) dst=(\S+)(?: sport=(\d+) dport=(\d+))?"
    r"(?: packets=(\d+) bytes=(\d+))?(.*)"
)
_FLAGS = re.compile(r"\[([A-Z_]+)\]")
_L3 = {"ipv4": 4, "ipv6": 6}
# Field positions in a Flow row (the groups of _LINE) and in its rest (the groups of _REST).
_PROTO, _TIMEOUT, _STATE, _S1, _D1, _SP1, _DP1, _REST_OF, _OTHER = range(9)
_P1, _B1, _UNREP, _S2, _D2, _SP2, _DP2, _P2, _B2, _TAIL = range(10)


class Tuple(NamedTuple):
    """One direction of a flow. Ports are None for protocols without them (ICMP: id/type/code)."""

    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None

    def __str__(self) -> str:
        return f"{_hostport(self.src, self.sport)} → {_hostport(self.dst, self.dport)}"


def _hostport(ip: str, port: int | None) -> str:
    if port is None:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _short_ip(ip: str) -> str:
    # /proc prints IPv6 fully expanded; conntrack -L compressed. One form for both.
    return str(ipaddress.IPv6Address(ip)) if ":" in ip else ip


def _opt_int(text: str) -> int | None:
    return int(text) if text else None


class Flow(tuple[str, ...]):
    """One conntrack entry with both tuples, kept as the fields the kernel printed.

    A row is made in one regex pass and converted on access: a 100k-flow table is parsed at the
    speed of reading it, and a viewer pays for numbers only on the rows it shows or sorts by.
    """

    __slots__ = ()

    @classmethod
    def make(
        cls,
        proto: str,
        timeout: int,
        state: str | None,
        orig: Tuple,
        reply: Tuple,
        *,
        counters: tuple[int | None, int | None, int | None, int | None] = (None, None, None, None),
        unreplied: bool = False,
        tail: str = "",
    ) -> Flow:
        """Build a row from values (the generic parser and `--tuple` use this)."""

        def s(v: object) -> str:
            return "" if v is None else str(v)

        c1 = f" packets={counters[0]} bytes={counters[1]}" if counters[0] is not None else ""
        c2 = f" packets={counters[2]} bytes={counters[3]}" if counters[2] is not None else ""
        ports = f" sport={reply.sport} dport={reply.dport}" if reply.sport is not None else ""
        rest = f"{c1}{' [UNREPLIED]' if unreplied else ''} src={reply.src} dst={reply.dst}{ports}{c2}{tail}"
        return cls(
            (
                proto,
                str(timeout),
                s(state),
                orig.src,
                orig.dst,
                s(orig.sport),
                s(orig.dport),
                rest,
                "",
            )
        )

    def _rest(self) -> tuple[str, ...]:
        m = _REST.match(self[_REST_OF])
        if m is None:  # cannot happen for rows made by the parser; keeps types honest
            raise ValueError(f"unparsable conntrack row: {self!r}")
        return m.groups(default="")

    @property
    def proto(self) -> str:
        """Layer-4 protocol name as the kernel prints it (tcp, udp, icmp, icmpv6, gre, ...)."""
        return self[_PROTO]

    @property
    def family(self) -> int:
        """4 or 6."""
        return 6 if ":" in self[_S1] else 4

    @property
    def timeout(self) -> int:
        """Seconds until the kernel forgets the flow."""
        return int(self[_TIMEOUT])

    @property
    def state(self) -> str | None:
        """TCP (or SCTP/DCCP) state; None for stateless protocols."""
        return self[_STATE] or None

    @property
    def orig(self) -> Tuple:
        """The original direction: client → address it asked for."""
        return Tuple(
            _short_ip(self[_S1]), _short_ip(self[_D1]), _opt_int(self[_SP1]), _opt_int(self[_DP1])
        )

    @property
    def reply(self) -> Tuple:
        """The reply direction as the kernel expects it: backend → SNAT source."""
        r = self._rest()
        return Tuple(_short_ip(r[_S2]), _short_ip(r[_D2]), _opt_int(r[_SP2]), _opt_int(r[_DP2]))

    @property
    def flags(self) -> tuple[str, ...]:
        """UNREPLIED, ASSURED, OFFLOAD, ..."""
        r = self._rest()
        found = tuple(_FLAGS.findall(r[_TAIL])) if "[" in r[_TAIL] else ()
        return ("UNREPLIED", *found) if r[_UNREP] else found

    def _tail_int(self, key: str) -> int | None:
        tail = self._rest()[_TAIL]
        at = tail.find(" " + key + "=")
        if at < 0 and tail.startswith(key + "="):
            at = -1
        elif at < 0:
            return None
        rest = tail[at + len(key) + 2 :]
        return int(rest.split(" ", 1)[0])

    @property
    def mark(self) -> int:
        """The connection mark."""
        return self._tail_int("mark") or 0

    @property
    def zone(self) -> int:
        """The conntrack zone (0 when none)."""
        return self._tail_int("zone") or 0

    @property
    def age(self) -> int | None:
        """Seconds since the flow started (only with net.netfilter.nf_conntrack_timestamp=1)."""
        return self._tail_int("delta-time")

    @property
    def extra(self) -> str:
        """Protocol details that are not ports, e.g. `type=8 code=0 id=4711` for ICMP."""
        tail = self._rest()[_TAIL]
        if "type=" not in tail:
            return ""
        return " ".join(t for t in tail.split() if t.startswith(("type=", "code=", "id=")))

    @property
    def orig_packets(self) -> int | None:
        """Packets client → server (None without accounting)."""
        return _opt_int(self._rest()[_P1])

    @property
    def orig_bytes(self) -> int | None:
        """Bytes client → server (None without accounting)."""
        return _opt_int(self._rest()[_B1])

    @property
    def reply_packets(self) -> int | None:
        """Packets server → client (None without accounting)."""
        return _opt_int(self._rest()[_P2])

    @property
    def reply_bytes(self) -> int | None:
        """Bytes server → client (None without accounting)."""
        return _opt_int(self._rest()[_B2])

    @property
    def packets(self) -> int:
        """Packets both ways (0 without accounting)."""
        r = self._rest()
        return int(r[_P1] or 0) + int(r[_P2] or 0)

    @property
    def bytes(self) -> int:
        """Bytes both ways (0 without accounting)."""
        r = self._rest()
        return int(r[_B1] or 0) + int(r[_B2] or 0)

    @property
    def key(self) -> tuple[str, ...]:
        """What identifies a flow across refreshes (the kernel's own key: original tuple + zone)."""
        src, dst = self[_S1], self[_D1]
        if ":" in src:
            src, dst = _short_ip(src), _short_ip(dst)
        return (self[_PROTO], src, dst, self[_SP1], self[_DP1], str(self.zone))

    @property
    def dnat(self) -> bool:
        """The destination was rewritten: replies come from somewhere else than the client asked."""
        r = self._rest()
        return r[_S2] != self[_D1] or r[_SP2] != self[_DP1]

    @property
    def snat(self) -> bool:
        """The source was rewritten: the server answers an address other than the client's."""
        r = self._rest()
        return r[_D2] != self[_S1] or r[_DP2] != self[_SP1]

    def path(self) -> str:
        """client → listen => snat-source → backend, the translation made visible."""
        o = self.orig
        client, listen = _hostport(o.src, o.sport), _hostport(o.dst, o.dport)
        if not (self.dnat or self.snat):
            return f"{client} → {listen}"
        r = self.reply
        # The server sees the reply tuple reversed: from reply.dst to reply.src.
        return f"{client} → {listen} => {_hostport(r.dst, r.dport)} → {_hostport(r.src, r.sport)}"

    def to_dict(self, forward: str | None = None) -> dict[str, object]:
        """JSON-ready, both tuples in full."""
        return {
            "family": f"ipv{self.family}",
            "proto": self.proto,
            "state": self.state,
            "timeout": self.timeout,
            "orig": self.orig._asdict(),
            "reply": self.reply._asdict(),
            "flags": list(self.flags),
            "mark": self.mark,
            "zone": self.zone,
            "orig_packets": self.orig_packets,
            "orig_bytes": self.orig_bytes,
            "reply_packets": self.reply_packets,
            "reply_bytes": self.reply_bytes,
            "age": self.age,
            "extra": self.extra,
            "dnat": self.dnat,
            "snat": self.snat,
            "forward": forward,
        }


def parse_generic(line: str) -> Flow:
    """Parse any conntrack line token by token (ICMP, GRE, SCTP, unknown protocols)."""
    tokens = line.replace(",", " ").split()
    i = 2 if tokens[0] in _L3 else 0
    proto = tokens[i]
    int(tokens[i + 1])  # protocol number: must be numeric, else the line is malformed
    timeout = int(tokens[i + 2])
    state: str | None = None
    tuples: list[dict[str, str]] = []
    counters: list[list[int | None]] = []
    tail: list[str] = []
    extra: list[str] = []
    unreplied = False
    for tok in tokens[i + 3 :]:
        if tok.startswith("["):
            if tok == "[UNREPLIED]":
                unreplied = True
            else:
                tail.append(tok)
            continue
        key, eq, value = tok.partition("=")
        if not eq:
            if not tuples and state is None:
                state = tok
            continue
        if key == "src":
            tuples.append({})
            counters.append([None, None])
        if key in ("src", "dst", "sport", "dport") and tuples and key not in tuples[-1]:
            tuples[-1][key] = value
        elif key in ("type", "code", "id") and len(tuples) == 1:
            extra.append(tok)
        elif key == "packets" and counters:
            counters[-1][0] = int(value)
        elif key == "bytes" and counters:
            counters[-1][1] = int(value)
        elif key in ("mark", "zone", "delta-time"):
            tail.append(tok)
    if len(tuples) < 2:
        raise ValueError("a flow needs two tuples")

    def tup(d: dict[str, str]) -> Tuple:
        sp, dp = d.get("sport"), d.get("dport")
        return Tuple(d["src"], d["dst"], int(sp) if sp else None, int(dp) if dp else None)

    return Flow.make(
        proto,
        timeout,
        state,
        tup(tuples[0]),
        tup(tuples[1]),
        counters=(counters[0][0], counters[0][1], counters[1][0], counters[1][1]),
        unreplied=unreplied,
        tail=" " + " ".join(extra + tail) if extra or tail else "",
    )


@dataclass
class Table:
    """What one read of the conntrack table gave."""

    flows: list[Flow]
    skipped: int = 0
    """Malformed lines, skipped and counted (never fatal)."""
    source: str = ""


CHUNK = 32 * 1024
"""Characters parsed per regex call (~200 lines): the regex holds the GIL for one call, so a big
table is parsed in slices and a UI thread waits at most one slice (~1 ms) for its turn."""


def parse_text(text: str) -> Table:
    """Parse conntrack output (proc or `conntrack -L [-o extended]` format) in one regex pass."""
    # 100k rows of small objects would trigger the cyclic GC dozens of times; none of them can form
    # a cycle, so it stays off for the bulk build (measured: build 4x faster).
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        table = Table([], 0)
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
    finally:
        if gc_was_on:
            gc.enable()


def _parse_rows(rows: list[tuple[str, ...]], table: Table, pool: dict[str, str]) -> None:
    new = tuple.__new__
    append = table.flows.append
    share = pool.setdefault
    for row in rows:
        if not row[_OTHER]:
            p, t, st, s1, d1, sp, dp, rest, _ = row
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
                        "",
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


def parse_lines(lines: Iterable[str]) -> Table:
    """Parse conntrack lines (see parse_text)."""
    return parse_text("\n".join(lines))


def read_flows(runner: Runner | None = None, proc: Path = PROC_CONNTRACK) -> Table:
    """Read the whole table: /proc when the kernel has it, else `conntrack -L -o extended`."""
    try:
        with open(proc, encoding="ascii", errors="replace") as fh:
            text = fh.read()
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


class ForwardIndex:
    """Which natbox forward a flow belongs to: its original destination is the forward's listen
    ip:port/proto. Looked up on the raw fields, so tagging 100k flows converts nothing."""

    def __init__(self, forwards: Iterable[Forward] = ()) -> None:
        self._index: dict[tuple[str, str, str], str] = {}
        for fwd in forwards:
            for proto in fwd.protocols:
                for port in range(fwd.listen.port, fwd.listen.port_end + 1):
                    # /proc prints IPv6 fully expanded, conntrack -L compressed: index both.
                    for form in {str(fwd.listen.ip), fwd.listen.ip.exploded}:
                        self._index[(proto, form, str(port))] = fwd.name

    def __call__(self, flow: Flow) -> str | None:
        return self._index.get((flow[_PROTO], flow[_D1], flow[_DP1])) if self._index else None


SORT_KEYS = ("age", "bytes", "packets", "timeout")


def select(
    flows: Iterable[Flow],
    *,
    index: ForwardIndex | None = None,
    forward: str | None = None,
    proto: str | None = None,
    state: str | None = None,
    sort: str | None = None,
    limit: int | None = None,
) -> list[Flow]:
    """Filter and sort flows as `natbox conntrack` and the viewer do."""
    owner = index or ForwardIndex()
    out = [
        f
        for f in flows
        if (forward is None or owner(f) == forward)
        and (proto is None or f.proto == proto)
        and (state is None or (f.state or "").upper() == state.upper())
    ]
    if sort == "age":
        out.sort(key=lambda f: -1 if f.age is None else f.age, reverse=True)
    elif sort == "bytes":
        out.sort(key=lambda f: f.bytes, reverse=True)
    elif sort == "packets":
        out.sort(key=lambda f: f.packets, reverse=True)
    elif sort == "timeout":
        out.sort(key=lambda f: f.timeout)
    return out[:limit] if limit is not None else out


# ---------------------------------------------------------------- ctnetlink delete

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_CTNETLINK = 1
_IPCTNL_MSG_CT_DELETE = 2
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NLMSG_ERROR = 2
_NLA_F_NESTED = 0x8000
_CTA_TUPLE_ORIG, _CTA_ZONE = 1, 18
_CTA_TUPLE_IP, _CTA_TUPLE_PROTO = 1, 2
_CTA_IP_V4_SRC, _CTA_IP_V4_DST, _CTA_IP_V6_SRC, _CTA_IP_V6_DST = 1, 2, 3, 4
_CTA_PROTO_NUM, _CTA_PROTO_SRC_PORT, _CTA_PROTO_DST_PORT = 1, 2, 3
_CTA_PROTO_ICMP_ID, _CTA_PROTO_ICMP_TYPE, _CTA_PROTO_ICMP_CODE = 4, 5, 6
_CTA_PROTO_ICMPV6_ID, _CTA_PROTO_ICMPV6_TYPE, _CTA_PROTO_ICMPV6_CODE = 7, 8, 9
PROTO_NUMBERS = {
    "tcp": 6,
    "udp": 17,
    "icmp": 1,
    "icmpv6": 58,
    "sctp": 132,
    "dccp": 33,
    "gre": 47,
    "udplite": 136,
}


def _attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    length = 4 + len(payload)
    pad = (4 - length % 4) % 4
    return (
        struct.pack("=HH", length, kind | (_NLA_F_NESTED if nested else 0)) + payload + b"\0" * pad
    )


def delete_message(flow: Flow, seq: int = 1) -> bytes:
    """The IPCTNL_MSG_CT_DELETE netlink message for `flow`'s original tuple and zone."""
    if flow.family == 6:
        fam, src_t, dst_t = socket.AF_INET6, _CTA_IP_V6_SRC, _CTA_IP_V6_DST
        src, dst = (ipaddress.IPv6Address(a).packed for a in (flow.orig.src, flow.orig.dst))
    else:
        fam, src_t, dst_t = socket.AF_INET, _CTA_IP_V4_SRC, _CTA_IP_V4_DST
        src, dst = (ipaddress.IPv4Address(a).packed for a in (flow.orig.src, flow.orig.dst))
    num = PROTO_NUMBERS.get(flow.proto)
    if num is None:
        raise ValidationError(f"cannot kill a {flow.proto} flow by tuple", "use conntrack -D")
    proto = _attr(_CTA_PROTO_NUM, struct.pack("B", num))
    if flow.orig.sport is not None and flow.orig.dport is not None:
        proto += _attr(_CTA_PROTO_SRC_PORT, struct.pack("!H", flow.orig.sport))
        proto += _attr(_CTA_PROTO_DST_PORT, struct.pack("!H", flow.orig.dport))
    elif flow.proto in ("icmp", "icmpv6"):
        info = dict(kv.split("=") for kv in flow.extra.split())
        ids = (
            (_CTA_PROTO_ICMP_ID, _CTA_PROTO_ICMP_TYPE, _CTA_PROTO_ICMP_CODE)
            if flow.proto == "icmp"
            else (_CTA_PROTO_ICMPV6_ID, _CTA_PROTO_ICMPV6_TYPE, _CTA_PROTO_ICMPV6_CODE)
        )
        proto += _attr(ids[0], struct.pack("!H", int(info.get("id", "0"))))
        proto += _attr(ids[1], struct.pack("B", int(info.get("type", "0"))))
        proto += _attr(ids[2], struct.pack("B", int(info.get("code", "0"))))
    tuple_orig = _attr(
        _CTA_TUPLE_ORIG,
        _attr(_CTA_TUPLE_IP, _attr(src_t, src) + _attr(dst_t, dst), nested=True)
        + _attr(_CTA_TUPLE_PROTO, proto, nested=True),
        nested=True,
    )
    body = struct.pack("=BBH", fam, 0, 0) + tuple_orig
    if flow.zone:
        body += _attr(_CTA_ZONE, struct.pack("!H", flow.zone))
    kind = (_NFNL_SUBSYS_CTNETLINK << 8) | _IPCTNL_MSG_CT_DELETE
    return struct.pack("=IHHII", 16 + len(body), kind, _NLM_F_REQUEST | _NLM_F_ACK, seq, 0) + body


def kill(flows: Sequence[Flow]) -> int:
    """Delete these flows by tuple over ctnetlink; returns how many the kernel deleted."""
    if not flows:
        return 0
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
    except PermissionError:
        raise NotRootError("delete conntrack entries") from None
    deleted = 0
    with sock:
        sock.bind((0, 0))
        for seq, flow in enumerate(flows, 1):
            sock.send(delete_message(flow, seq))
            err = _ack(sock)
            if err == 0:
                deleted += 1
            elif err == errno.EPERM:
                raise NotRootError("delete conntrack entries")
            elif err != errno.ENOENT:  # gone already (expired meanwhile) is fine
                raise NatboxError(f"the kernel refused to delete a flow: {os.strerror(err)}", "")
    return deleted


def _ack(sock: socket.socket) -> int:
    data = sock.recv(65536)
    _length, kind = struct.unpack_from("=IH", data)
    if kind != _NLMSG_ERROR:
        return 0
    code: int = struct.unpack_from("=i", data, 16)[0]
    return -code


def parse_tuple(proto: str, src: str, dst: str) -> Flow:
    """A flow stub from `PROTO SRC:SPORT DST:DPORT`, for `natbox conntrack kill --tuple`."""
    if proto not in ("tcp", "udp"):
        raise ValidationError(
            f"--tuple takes tcp or udp, not {proto!r}", "use --forward for others"
        )
    from natbox.model import Endpoint  # local: keeps this module's import surface small

    a, b = Endpoint.parse(src, "source"), Endpoint.parse(dst, "destination")
    if a.is_range or b.is_range:
        raise ValidationError("--tuple takes single ports, not ranges", "give SRC:SPORT DST:DPORT")
    tup = Tuple(str(a.ip), str(b.ip), a.port, b.port)
    return Flow.make(proto, 0, None, tup, tup)


def find(flows: Iterable[Flow], wanted: Flow) -> Flow:
    """The flow whose original tuple is `wanted`'s."""
    for f in flows:
        if f.proto == wanted.proto and f.orig == wanted.orig:
            return f
    raise NotFoundError(f"no {wanted.proto} flow {wanted.orig}", "natbox conntrack lists them")
