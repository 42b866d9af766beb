"""Provides the ctnetlink dump reader: the conntrack table as the kernel's binary messages, decoded
straight into Flow rows, or into the very lines `natbox conntrack` prints (text or JSON), with no
text for the kernel to format and for us to parse again, and no per-flow objects for the lines.

One IPCTNL_MSG_CT_GET request with NLM_F_DUMP over a NETLINK_NETFILTER socket; the kernel answers
in datagrams of ~32 KiB (~200 flows each), received by a thread of their own (`datagrams`) while
the previous one is decoded, so a caller can stream them (`batches`, or the CLI).

Decoding is fast because a table has few shapes: every message of one shape (family, protocol,
which attributes, their sizes) has the same bytes at the same offsets except the values. The first
message of a shape is walked attribute by attribute (`_walk`); that makes a `_Layout`: a mask over
the bytes that must match (every attribute header, the message length and type, the family, the
protocol number), one struct that unpacks every value at once, and a small function made for the
shape (`_RUN`) that checks the mask (one big-integer AND, for 32 messages at once in a long run)
and turns the values into a row or a line. A message that matches no known shape is walked, and
its shape learnt.

What the rows hold is what /proc/net/nf_conntrack would print for the same flows (the readers are
interchangeable, tests/core/test_conntrack_dump.py and tests/lab/test_conntrack.py hold them to
it): the protocol and state names, flags, zone and delta-time as the kernel's ct_seq_show prints
them. A message whose state has no name here raises `Unsupported`, and the caller reads /proc.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

from natbox.conntrack.flow import Decoded
from natbox.errors import NatboxError, NotRootError

NETLINK_NETFILTER = 12
_NFNL_SUBSYS_CTNETLINK = 1
_IPCTNL_MSG_CT_NEW, _IPCTNL_MSG_CT_GET = 0, 1
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_AF_INET, _AF_INET6 = 2, 10

# enum ctattr_type and its nests (include/uapi/linux/netfilter/nfnetlink_conntrack.h)
_CTA_TUPLE_ORIG, _CTA_TUPLE_REPLY, _CTA_STATUS, _CTA_PROTOINFO = 1, 2, 3, 4
_CTA_TIMEOUT, _CTA_MARK, _CTA_COUNTERS_ORIG, _CTA_COUNTERS_REPLY = 7, 8, 9, 10
_CTA_ZONE, _CTA_TIMESTAMP = 18, 20
_CTA_TUPLE_IP, _CTA_TUPLE_PROTO = 1, 2
_CTA_IP_V4_SRC, _CTA_IP_V4_DST, _CTA_IP_V6_SRC, _CTA_IP_V6_DST = 1, 2, 3, 4
_ADDRESS_SIZE = {  # bytes of an address attribute, by the message's family
    _CTA_IP_V4_SRC: {_AF_INET: 4},
    _CTA_IP_V4_DST: {_AF_INET: 4},
    _CTA_IP_V6_SRC: {_AF_INET6: 16},
    _CTA_IP_V6_DST: {_AF_INET6: 16},
}
_CTA_PROTO_NUM, _CTA_PROTO_SRC_PORT, _CTA_PROTO_DST_PORT = 1, 2, 3
_CTA_PROTO_ICMP = {4: "id", 5: "type", 6: "code", 7: "id", 8: "type", 9: "code"}
_CTA_PROTOINFO_TCP, _CTA_PROTOINFO_DCCP, _CTA_PROTOINFO_SCTP = 1, 2, 3
_CTA_COUNTERS_PACKETS, _CTA_COUNTERS_BYTES = 1, 2
_CTA_TIMESTAMP_START = 1

# IPS_* status bits (nf_conntrack_common.h)
_IPS_SEEN_REPLY, _IPS_ASSURED, _IPS_OFFLOAD, _IPS_HW_OFFLOAD = 1 << 1, 1 << 2, 1 << 14, 1 << 15

# The names ct_seq_show prints: l4proto_name() and the protocols' print_conntrack tables.
_L4_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 132: "sctp", 136: "udplite", 58: "icmpv6"}
_WITH_PORTS = frozenset({"tcp", "udp", "udplite", "sctp", "dccp"})
_TCP_STATES = (
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
)
_DCCP_STATES = (  # kernels before 6.16, which had a DCCP tracker
    "NONE",
    "REQUEST",
    "RESPOND",
    "PARTOPEN",
    "OPEN",
    "CLOSEREQ",
    "CLOSING",
    "TIMEWAIT",
    "IGNORE",
    "INVALID",
)
_SCTP_STATES = (
    "NONE",
    "CLOSED",
    "COOKIE_WAIT",
    "COOKIE_ECHOED",
    "ESTABLISHED",
    "SHUTDOWN_SENT",
    "SHUTDOWN_RECD",
    "SHUTDOWN_ACK_SENT",
    "HEARTBEAT_SENT",
)

# The values a layout can extract (the names its `run` gives them).
_FIELDS = (
    "src1",
    "dst1",
    "sport1",
    "dport1",
    "src2",
    "dst2",
    "sport2",
    "dport2",
    "status",
    "timeout",
    "mark",
    "zone",
    "packets1",
    "bytes1",
    "packets2",
    "bytes2",
    "start",
    "state",
    "icmp_type",
    "icmp_code",
    "icmp_id",
)
_MAX_LAYOUTS = 256
"""Shapes learnt per read at most (a table has a handful; labels or helpers add a few)."""


_HINT = "NATBOX_CONNTRACK_READER=proc reads /proc/net/nf_conntrack instead"


class Unavailable(NatboxError):
    """ctnetlink cannot be used here (no NETLINK_NETFILTER, no nf_conntrack_netlink): read /proc."""

    def __init__(self, message: str) -> None:
        super().__init__(message, _HINT)


class Unsupported(NatboxError):
    """A flow this decoder cannot show exactly as /proc would: read /proc instead."""

    def __init__(self, message: str) -> None:
        super().__init__(f"cannot decode {message}", _HINT)


class Malformed(Exception):
    """A message whose attributes do not add up (never seen from a real kernel)."""


def dump_request(seq: int = 1, family: int = socket.AF_UNSPEC, attrs: bytes = b"") -> bytes:
    """The IPCTNL_MSG_CT_GET dump request: every family, or `family` with `attrs` (a filter)."""
    kind = (_NFNL_SUBSYS_CTNETLINK << 8) | _IPCTNL_MSG_CT_GET
    body = struct.pack("=BBH", family, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body


class _Layout:
    """One shape of message: which bytes must match, where the values are, and the functions
    that decode every message of this shape from an offset on (`runner`)."""

    __slots__ = (
        "family",
        "have",
        "length",
        "mask",
        "match",
        "names",
        "proto",
        "runners",
        "states",
        "unpack",
    )

    def __init__(
        self,
        msg: bytes,
        fixed: list[tuple[int, int]],
        values: list[tuple[int, str, str]],
        proto: str,
        states: tuple[str, ...] | None,
    ) -> None:
        self.length = len(msg)
        self.proto = proto
        self.states = states
        self.family = 6 if msg[16] == _AF_INET6 else 4
        mask = bytearray(len(msg))
        for at, size in fixed:
            mask[at : at + size] = b"\xff" * size
        self.mask = int.from_bytes(mask, "little")
        self.match = int.from_bytes(msg, "little") & self.mask
        fmt, pos, names = ">", 0, []
        for at, code, name in sorted(values):
            if at > pos:
                fmt += f"{at - pos}x"
            fmt += code
            pos = at + struct.calcsize(">" + code)
            names.append(name)
        if not set(names) <= set(_FIELDS):  # cannot happen: _walk names only these
            raise Malformed(f"unknown fields {set(names) - set(_FIELDS)}")
        self.names = names
        self.have = frozenset(names)
        self.unpack = struct.Struct(fmt).unpack_from
        self.runners: dict[tuple[str, bool, bool], Any] = {}

    def runner(self, kind: str, accounting: bool = False, keyed: bool = False) -> Any:
        """run(buf, off, end, add, keys, ctx) -> offset: decodes the messages of this shape from
        `off` on, as long as they come, and adds for each a Decoded row (kind "row"), a line of
        `natbox conntrack` (kind "text", counters shown when `accounting`) or its JSON (kind
        "json"). `keyed`: the lines stop before the forward's name, and `keys` gets what finds
        it (see `finish`): for lines made before natbox's rules are read.

        Made once per shape and kind: one struct call per message, and a field the shape lacks
        costs nothing."""
        run = self.runners.get((kind, accounting, keyed))
        if run is None:
            source = _RUN.format(
                values=", ".join(self.names),
                emit=_emit(self, kind, accounting, keyed),
                key=f"keys({_key(self) or None})" if keyed else "pass",
            )
            step = (self.length + 3) & ~3
            scope: dict[str, Any] = {
                "unpack": self.unpack,
                "length": self.length,
                "step": step,
                "mask": self.mask,
                "match": self.match,
                "BLOCK": _BLOCK,
                "block": step * _BLOCK,
                "block_mask": sum(self.mask << (8 * step * i) for i in range(_BLOCK)),
                "block_match": sum(self.match << (8 * step * i) for i in range(_BLOCK)),
                "fb": int.from_bytes,
                "new": tuple.__new__,
                "Decoded": Decoded,
                "PROTO": self.proto,
                "STATES": self.states,
                "STATES12": tuple(f"{n:<12}" for n in self.states or ()),
                "STATES_JSON": tuple(f'"{n}"' for n in self.states or ()),
            }
            # The source is the template, names from _FIELDS and words from this module's
            # tables: nothing a message carries becomes code.
            name = f"<ctnetlink {self.proto} {self.length} {kind}{' keyed' if keyed else ''}>"
            exec(compile(source, name, "exec"), scope)
            run = self.runners[(kind, accounting, keyed)] = scope["run"]
        return run


_RUN = """
def run(buf, off, end, add, keys, ctx):
    text, addr, flags, flags_json, owner, owner_json, now = ctx
    streak = 0
    while True:
        if streak >= 8 and off + block <= end:
            if fb(buf[off : off + block], "little") & block_mask == block_match:
                stop = off + block
            else:
                streak = -BLOCK  # shapes alternate here: check one by one for a while
                continue
        elif off + length <= end and fb(buf[off : off + length], "little") & mask == match:
            stop = off + step
            streak += 1
        else:
            return off
        while off < stop:
            {values}, = unpack(buf, off)
            add({emit})
            {key}
            off += step
"""
"""Checks the shape of BLOCK messages at once (one big-integer AND over ~5 KiB) once eight came
one by one: a big table is mostly long runs of one shape (measured: the check was a fifth of the
decoding, one message at a time)."""
_BLOCK = 32


def _key(lay: _Layout) -> str:
    """How a flow of this shape finds its forward: (protocol, packed listen address, port)."""
    return "(PROTO, dst1, dport1)" if "sport1" in lay.have else ""


_Part = tuple[bool, str]
"""A piece of an f-string being generated: (True, an expression[:spec]) or (False, literal text)."""


def _fstring(parts: list[_Part], quote: str) -> str:
    """The source of an f-string made of `parts`, quoted with `quote`."""
    out = []
    for is_value, piece in parts:
        if is_value:
            out.append("{" + piece + "}")
        else:
            for raw, escaped in (("\\", "\\\\"), (quote, "\\" + quote), ("\n", "\\n")):
                piece = piece.replace(raw, escaped)
            out.append(piece.replace("{", "{{").replace("}", "}}"))
    return "f" + quote + "".join(out) + quote


def _emit(lay: _Layout, kind: str, accounting: bool, keyed: bool = False) -> str:
    """The expression `run` adds for one message of shape `lay` (see _Layout.runner): the same
    text Decoded.to_json / select.text_lines make of the row, built without the row."""
    have, proto = lay.have, lay.proto
    stateful = lay.states is not None
    ports = "sport1" in have
    icmp = proto in ("icmp", "icmpv6") and {"icmp_type", "icmp_code", "icmp_id"} <= have

    def val(name: str, absent: str, spec: str = "") -> _Part:
        return (True, name + spec) if name in have else (False, absent)

    age = "max(0, now - start) // 1_000_000_000"
    extra: list[_Part] = [
        (False, "type="),
        (True, "icmp_type"),
        (False, " code="),
        (True, "icmp_code"),
        (False, " id="),
        (True, "icmp_id"),
    ]
    if kind == "row":

        def text(name: str, absent: str = "") -> str:
            return f"text[{name}]" if name in have else repr(absent)

        def count(name: str) -> str:
            return f"str({name})" if name in have else "''"

        fields = [
            repr(proto),
            text("timeout", "0"),
            "STATES[state]" if stateful else "''",
            "addr[src1]",
            "addr[dst1]",
            text("sport1"),
            text("dport1"),
            "''",
            "addr[src2]",
            "addr[dst2]",
            text("sport2"),
            text("dport2"),
            count("packets1"),
            count("bytes1"),
            count("packets2"),
            count("bytes2"),
            "flags[status]",
            text("mark", "0"),
            text("zone", "0"),
            f"str({age})" if "start" in have else "''",
            _fstring(extra, "'") if icmp else "''",
        ]
        return f"new(Decoded, ({', '.join(fields)}))"
    # What Flow.path / dnat / snat compare as text, compared raw (the same, value for value).
    same = "src2 == dst1 and dst2 == src1"
    dnat, snat = "src2 != dst1", "dst2 != src1"
    if ports:
        same += " and sport2 == dport1 and dport2 == sport1"
        dnat, snat = dnat + " or sport2 != dport1", snat + " or dport2 != sport1"
    key = _key(lay)
    if kind == "text":

        def hostport(ip: str, port: str) -> list[_Part]:
            if not ports:
                return [(True, f"addr[{ip}]")]
            if lay.family == 6:
                return [(False, "["), (True, f"addr[{ip}]"), (False, "]:"), (True, port)]
            return [(True, f"addr[{ip}]"), (False, ":"), (True, port)]

        plain = [*hostport("src1", "sport1"), (False, " → "), *hostport("dst1", "dport1")]
        nat = [*plain, (False, " => "), *hostport("dst2", "dport2"), (False, " → ")]
        nat += hostport("src2", "sport2")
        path = f"({_fstring(plain, chr(39))} if {same} else {_fstring(nat, chr(39))})"
        if not accounting:
            counters: list[_Part] = [(False, f"{'-':>7}{'-':>10}")]
        elif have & {"packets1", "packets2", "bytes1", "bytes2"}:
            counters = [
                (True, " + ".join(n if n in have else "0" for n in ("packets1", "packets2"))),
                (True, " + ".join(n if n in have else "0" for n in ("bytes1", "bytes2"))),
            ]
            counters = [(True, f"({counters[0][1]}):>7"), (True, f"({counters[1][1]}):>10")]
        else:
            counters = [(False, f"{0:>7}{0:>10}")]
        line: list[_Part] = [
            (False, f"{proto:<7}"),
            (True, "STATES12[state]") if stateful else (False, f"{'-':<12}"),
            val("timeout", f"{0:>6}", ":>6"),
            (False, "  "),
            (True, path + ":<62"),
            *counters,
            (False, "  "),
        ]
        if not keyed:
            line += [(True, f"owner.get({key}, '')") if key else (False, ""), (False, "\n")]
        return _fstring(line, '"')
    # kind == "json": Decoded.to_json's text, field for field.
    doc: list[_Part] = [
        (False, f'{{"family":"ipv{lay.family}","proto":"{proto}","state":'),
        (True, "STATES_JSON[state]") if stateful else (False, "null"),
        (False, ',"timeout":'),
        val("timeout", "0"),
        (False, ',"orig":{"src":"'),
        (True, "addr[src1]"),
        (False, '","dst":"'),
        (True, "addr[dst1]"),
        (False, '","sport":'),
        val("sport1", "null"),
        (False, ',"dport":'),
        val("dport1", "null"),
        (False, '},"reply":{"src":"'),
        (True, "addr[src2]"),
        (False, '","dst":"'),
        (True, "addr[dst2]"),
        (False, '","sport":'),
        val("sport2", "null"),
        (False, ',"dport":'),
        val("dport2", "null"),
        (False, '},"flags":['),
        (True, "flags_json[status]"),
        (False, '],"mark":'),
        val("mark", "0"),
        (False, ',"zone":'),
        val("zone", "0"),
        (False, ',"orig_packets":'),
        val("packets1", "null"),
        (False, ',"orig_bytes":'),
        val("bytes1", "null"),
        (False, ',"reply_packets":'),
        val("packets2", "null"),
        (False, ',"reply_bytes":'),
        val("bytes2", "null"),
        (False, ',"age":'),
        (True, age) if "start" in have else (False, "null"),
        (False, ',"extra":"'),
        *(extra if icmp else []),
        (False, '","dnat":'),
        (True, f'"true" if {dnat} else "false"'),
        (False, ',"snat":'),
        (True, f'"true" if {snat} else "false"'),
        (False, ',"forward":'),
    ]
    if not keyed:
        doc += [(True, f'owner_json.get({key}, "null")') if key else (False, "null"), (False, "}")]
    return _fstring(doc, "'")


def _attrs(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(type, start of payload, payload length, header offset) of each attribute in [start, end)."""
    at = start
    while at + 4 <= end:
        length, kind = struct.unpack_from("=HH", buf, at)
        if length < 4 or at + length > end:
            raise Malformed(f"attribute of length {length} at {at}")
        yield kind & _NLA_TYPE_MASK, at + 4, length - 4, at
        at += (length + 3) & ~3


def _walk(msg: bytes) -> _Layout:
    """Learn the shape of one message (the slow path: once per shape)."""
    fixed: list[tuple[int, int]] = [(0, 6), (16, 1)]  # length, type; the family
    values: list[tuple[int, str, str]] = []
    if msg[16] not in (_AF_INET, _AF_INET6):
        raise Unsupported(f"address family {msg[16]}")
    protos: list[int] = []
    ports = {"sport1", "dport1", "sport2", "dport2"}
    state_kind = 0

    def tuple_(start: int, end: int, d: str) -> None:
        for kind, at, size, hdr in _attrs(msg, start, end):
            fixed.append((hdr, 4))
            if kind == _CTA_TUPLE_IP:
                for ip_kind, ip_at, ip_size, ip_hdr in _attrs(msg, at, at + size):
                    fixed.append((ip_hdr, 4))
                    if ip_kind in _ADDRESS_SIZE and ip_size != _ADDRESS_SIZE[ip_kind].get(msg[16]):
                        # /proc prints an address of the flow's family; this is not one
                        raise Unsupported(
                            f"an address attribute of {ip_size} bytes in an "
                            f"IPv{6 if msg[16] == _AF_INET6 else 4} flow"
                        )
                    if ip_kind in (_CTA_IP_V4_SRC, _CTA_IP_V6_SRC):
                        values.append((ip_at, f"{ip_size}s", "src" + d))
                    elif ip_kind in (_CTA_IP_V4_DST, _CTA_IP_V6_DST):
                        values.append((ip_at, f"{ip_size}s", "dst" + d))
            elif kind == _CTA_TUPLE_PROTO:
                for p_kind, p_at, p_size, p_hdr in _attrs(msg, at, at + size):
                    fixed.append((p_hdr, 4))
                    if p_kind == _CTA_PROTO_NUM and p_size == 1:
                        fixed.append((p_at, 1))
                        protos.append(msg[p_at])
                    elif p_kind == _CTA_PROTO_SRC_PORT and p_size == 2:
                        values.append((p_at, "H", "sport" + d))
                    elif p_kind == _CTA_PROTO_DST_PORT and p_size == 2:
                        values.append((p_at, "H", "dport" + d))
                    elif p_kind in _CTA_PROTO_ICMP and d == "1":
                        code = "H" if _CTA_PROTO_ICMP[p_kind] == "id" else "B"
                        if p_size == struct.calcsize(">" + code):
                            values.append((p_at, code, "icmp_" + _CTA_PROTO_ICMP[p_kind]))

    def nested_u64(start: int, end: int, names: dict[int, str]) -> None:
        for kind, at, size, hdr in _attrs(msg, start, end):
            fixed.append((hdr, 4))
            if kind in names and size == 8:
                values.append((at, "Q", names[kind]))

    for kind, at, size, hdr in _attrs(msg, 20, len(msg)):
        fixed.append((hdr, 4))
        if kind == _CTA_TUPLE_ORIG:
            tuple_(at, at + size, "1")
        elif kind == _CTA_TUPLE_REPLY:
            tuple_(at, at + size, "2")
        elif kind in (_CTA_STATUS, _CTA_TIMEOUT, _CTA_MARK) and size == 4:
            values.append((at, "I", {3: "status", 7: "timeout", 8: "mark"}[kind]))
        elif kind == _CTA_ZONE and size == 2:
            values.append((at, "H", "zone"))
        elif kind == _CTA_COUNTERS_ORIG:
            nested_u64(at, at + size, {1: "packets1", 2: "bytes1"})
        elif kind == _CTA_COUNTERS_REPLY:
            nested_u64(at, at + size, {1: "packets2", 2: "bytes2"})
        elif kind == _CTA_TIMESTAMP:
            nested_u64(at, at + size, {_CTA_TIMESTAMP_START: "start"})
        elif kind == _CTA_PROTOINFO:
            for p_kind, p_at, p_size, p_hdr in _attrs(msg, at, at + size):
                fixed.append((p_hdr, 4))
                state_kind = p_kind
                for s_kind, s_at, s_size, s_hdr in _attrs(msg, p_at, p_at + p_size):
                    fixed.append((s_hdr, 4))
                    if s_kind == 1 and s_size == 1:  # CTA_PROTOINFO_{TCP,DCCP,SCTP}_STATE
                        values.append((s_at, "B", "state"))
    if len(protos) != 2 or protos[0] != protos[1]:
        raise Malformed("a flow needs both tuples with one protocol")
    names = {v[2] for v in values}
    if not {"src1", "dst1", "src2", "dst2", "status"} <= names:
        raise Malformed("a flow needs both tuples and a status")
    num = protos[0]
    proto = _L4_NAMES.get(num, "unknown")
    if num == 33 and ports <= names:
        proto = "dccp"  # a kernel with the DCCP tracker (it was removed in 6.16)
    if proto not in _WITH_PORTS:
        # /proc prints no ports for these (GRE's keys travel in the port attributes)
        values = [v for v in values if v[2] not in ports]
    elif not ports <= names:
        raise Malformed(f"a {proto} flow without ports")
    states: tuple[str, ...] | None = None
    if "state" in names:
        if (proto, state_kind) == ("tcp", _CTA_PROTOINFO_TCP):
            states = _TCP_STATES
        elif (proto, state_kind) == ("sctp", _CTA_PROTOINFO_SCTP):
            states = _SCTP_STATES
        elif (proto, state_kind) == ("dccp", _CTA_PROTOINFO_DCCP):
            states = _DCCP_STATES
        else:
            raise Unsupported(f"{proto} state (protoinfo {state_kind})")
    elif proto in ("tcp", "sctp", "dccp"):
        raise Unsupported(f"a {proto} flow without its state")
    return _Layout(msg, fixed, values, proto, states)


class _Text(dict[Any, str]):
    """Values to text, each made once per read: ports, timeouts, marks, addresses repeat."""

    def __init__(self, convert: Any) -> None:
        super().__init__()
        self.convert = convert

    def __missing__(self, key: Any) -> str:
        text: str = self.convert(key)
        self[key] = text
        return text


def _v6(packed: bytes) -> str:
    return str(ipaddress.IPv6Address(packed))


def _addr(packed: bytes) -> str:
    if len(packed) == 4:
        return socket.inet_ntoa(packed)
    if len(packed) == 16:
        return _v6(packed)
    raise Unsupported(f"an address of {len(packed)} bytes")  # _walk lets none through


def _flags(status: int) -> tuple[str, ...]:
    """The flags ct_seq_show prints: [UNREPLIED], then one of HW_OFFLOAD, OFFLOAD, ASSURED."""
    out = () if status & _IPS_SEEN_REPLY else ("UNREPLIED",)
    if status & _IPS_HW_OFFLOAD:
        return (*out, "HW_OFFLOAD")
    if status & _IPS_OFFLOAD:
        return (*out, "OFFLOAD")
    if status & _IPS_ASSURED:
        return (*out, "ASSURED")
    return out


Owners = dict[tuple[str, bytes, int], str]
"""Forward names by (protocol, packed listen address, port): ForwardIndex.packed()."""


def finish(kind: str, lines: list[str], keys: list[Any], owners: Owners) -> list[str]:
    """Lines made `keyed` (see _Layout.runner), completed with their forwards' names."""
    get = owners.get
    if kind == "json":
        named = {k: f'"{v}"' for k, v in owners.items()}.get
        return [f"{line}{named(key, 'null')}}}" for line, key in zip(lines, keys, strict=True)]
    return [f"{line}{get(key, '')}\n" for line, key in zip(lines, keys, strict=True)]


class Decoder:
    """Decodes ctnetlink dump datagrams into Decoded rows (kind "row"), lines of `natbox
    conntrack` ("text") or their JSON ("json"); learns shapes as it meets them.

    Lines name each flow's forward from `owners`; until `owners` is known (None), they are made
    without it, with `keys` to find it later (`finish`)."""

    def __init__(
        self,
        kind: str = "row",
        *,
        accounting: bool = False,
        owners: Owners | None = None,
        now_ns: int | None = None,
    ) -> None:
        self.kind = kind
        self.accounting = accounting
        self.owners = owners
        self.keys: list[Any] = []
        """What finds the forward of each line the last `feed` made without `owners`."""
        self.now_ns = time.time_ns() if now_ns is None else now_ns
        self.layouts: dict[int, list[_Layout]] = {}
        self.count = 0
        self.skipped = 0
        self.done = False
        self.error = 0
        self._text = _Text(str)
        self._addr = _Text(_addr)
        self._flags = _Text(_flags)
        self._flags_json = _Text(lambda status: ",".join(f'"{f}"' for f in _flags(status)))
        self._ctx: tuple[Any, ...] | None = None
        self._ctx_owners: Owners | None = None

    def _layout(self, msg: bytes) -> _Layout:
        same = self.layouts.setdefault(len(msg), [])
        for lay in same:
            if int.from_bytes(msg, "little") & lay.mask == lay.match:
                return lay
        lay = _walk(msg)
        if sum(map(len, self.layouts.values())) < _MAX_LAYOUTS:
            same.append(lay)
        return lay

    def feed(self, buf: bytes) -> list[Any]:
        """What one datagram holds (a row or a line per flow). Sets `done` at NLMSG_DONE and
        `error` (an errno) at an NLMSG_ERROR; counts messages it cannot read in `skipped`."""
        out: list[Any] = []
        add = out.append
        keyed = self.owners is None and self.kind != "row"
        self.keys = []
        keys = self.keys.append
        if self._ctx is None or self._ctx_owners is not self.owners:
            self._ctx_owners = self.owners
            owners = self.owners or {}
            self._ctx = (
                self._text,
                self._addr,
                self._flags,
                self._flags_json,
                owners,
                {k: f'"{v}"' for k, v in owners.items()},
                self.now_ns,
            )
        ctx = self._ctx
        end = len(buf)
        off = 0
        lay: _Layout | None = None
        while off < end:
            if lay is not None:
                run = lay.runner(self.kind, self.accounting, keyed)
                try:
                    off = run(buf, off, end, add, keys, ctx)
                except IndexError:  # a state beyond the names this code knows
                    raise Unsupported(f"a {lay.proto} state this reader has no name for") from None
                if off >= end:
                    break
            # Another shape, or not a flow: read the header.
            if off + 16 > end:
                self.skipped += 1
                break
            size, kind = struct.unpack_from("=IH", buf, off)
            if size < 16 or off + size > end:
                self.skipped += 1
                break
            if kind == _NLMSG_DONE:
                # A dump that fails midway (e.g. ENOBUFS) ends with NLMSG_DONE carrying -errno:
                # the table read is incomplete, not done.
                code = struct.unpack_from("=i", buf, off + 16)[0] if size >= 20 else 0
                if code < 0:
                    self.error = -code
                self.done = True
                break
            if kind == _NLMSG_ERROR:
                code = struct.unpack_from("=i", buf, off + 16)[0] if size >= 20 else 0
                self.error = -code or errno.EIO
                self.done = True
                break
            lay = None
            if kind == (_NFNL_SUBSYS_CTNETLINK << 8) | _IPCTNL_MSG_CT_NEW and size >= 20:
                try:
                    lay = self._layout(buf[off : off + size])
                    continue  # its run decodes this message first
                except Malformed:
                    self.skipped += 1
            off += (size + 3) & ~3
        self.count += len(out)
        return out


def open_dump(request: bytes | None = None) -> socket.socket:
    """A NETLINK_NETFILTER socket with the dump request sent. Unavailable when the kernel has no
    ctnetlink; NotRootError without CAP_NET_ADMIN."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except PermissionError:
        raise NotRootError("read the conntrack table") from None
    except OSError as exc:
        raise Unavailable(f"no NETLINK_NETFILTER socket: {exc.strerror}") from None
    try:
        sock.bind((0, 0))
        sock.send(request or dump_request())
    except OSError as exc:
        sock.close()
        raise Unavailable(f"ctnetlink: {exc.strerror}") from None
    return sock


_DONE_HEAD = struct.pack("=IH", 20, _NLMSG_DONE)


def ends(buf: bytes) -> bool:
    """Whether this datagram holds the end of the dump, from its headers at its edges: the kernel
    ends a dump with NLMSG_DONE (20 bytes, the last message of its datagram) or, refused, with an
    NLMSG_ERROR (the first, alone); the walk over the headers only confirms a datagram whose last
    bytes look like it. An end elsewhere in a datagram (never seen from a kernel) is the decoder's
    to find (`Decoder.done`): the caller stops, and `datagrams` stops receiving."""
    if len(buf) >= 16 and struct.unpack_from("=H", buf, 4)[0] == _NLMSG_ERROR:
        return True
    if buf[-20:-14] != _DONE_HEAD:
        return False
    off, end = 0, len(buf)
    while off + 16 <= end:
        size, kind = struct.unpack_from("=IH", buf, off)
        if kind in (_NLMSG_DONE, _NLMSG_ERROR) or size < 16:
            return True
        off += (size + 3) & ~3
    return False


_TIMEOUT = 10.0
"""Seconds without a datagram before a dump is given up (the kernel sends the next at once)."""


def datagrams(sock: socket.socket) -> Iterator[bytes]:
    """The dump's datagrams until its end, received by a thread of their own: the kernel fills the
    next one (~0.2 ms of its time each, ~0.1 s for 100,000 flows) while this thread decodes the
    last, on the other CPU. The caller should keep the switch interval short (the receiving thread
    needs the GIL for a moment after each datagram).

    The datagrams stop at an end `ends` sees, or when the caller stops taking them (its decoder
    met an NLMSG_DONE or NLMSG_ERROR anywhere, or it raised): the receiving thread is woken then,
    never left waiting for a datagram that does not come."""
    got: queue.SimpleQueue[bytes | BaseException] = queue.SimpleQueue()
    wake, woken = socket.socketpair()

    def receive_all() -> None:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(woken, select.POLLIN)
        stop = woken.fileno()
        try:
            while True:
                ready = poller.poll(int(_TIMEOUT * 1000))
                if any(fd == stop for fd, _ in ready):
                    return  # the caller has what it needs
                if not ready:  # it never is: the end is seen first
                    raise NatboxError(
                        f"the conntrack dump over ctnetlink sent nothing for {_TIMEOUT:.0f} s",
                        _HINT,
                    )
                data = receive(sock)
                got.put(data)
                if ends(data):
                    return
        except BaseException as exc:  # handed over, raised in the caller's thread
            got.put(exc)

    thread = threading.Thread(target=receive_all, name="ctnetlink dump", daemon=True)
    thread.start()
    try:
        while True:
            data = got.get()
            if isinstance(data, BaseException):
                raise data
            yield data
            if ends(data):
                return
    finally:
        wake.send(b"\0")  # a thread still waiting for a datagram stops now
        thread.join()
        wake.close()
        woken.close()


def receive(sock: socket.socket) -> bytes:
    """The next datagram of a dump."""
    try:
        return sock.recv(65536)
    except OSError as exc:
        raise NatboxError(
            f"reading the conntrack table over ctnetlink failed: {exc.strerror}", _HINT
        ) from None


def check_error(code: int, first: bool) -> None:
    """Raise for the errno an NLMSG_ERROR carried (`first`: before any flow came)."""
    if code == errno.EPERM:
        raise NotRootError("read the conntrack table")
    if first:  # the request itself was refused: no ctnetlink in this kernel
        raise Unavailable(f"ctnetlink: {os.strerror(code)}")
    raise NatboxError(
        f"the kernel stopped the conntrack dump: {os.strerror(code)}", "run the command again"
    )


def batches(decoder: Decoder | None = None, request: bytes | None = None) -> Iterator[list[Any]]:
    """The whole table (or what `request` asks for), one datagram at a time (a list of ~200 rows
    or lines, see Decoder)."""
    dec = decoder or Decoder()
    with open_dump(request) as sock:
        for data in datagrams(sock):
            rows = dec.feed(data)
            if dec.error:
                check_error(dec.error, dec.count == 0)
            if rows:
                yield rows
            if dec.done:
                break


def flows_to(ip: str, proto: str, ports: range) -> list[Any]:
    """The flows whose original tuple goes to `ip`, `proto`, a port in `ports`: the kernel filters
    the dump (one port: by port too), and every flow it sends is checked here as well, so a kernel
    that ignores or widens the filter costs time, never a wrong flow."""
    from natbox.conntrack.netlink import dump_filter

    family, attrs = dump_filter(ip, proto, ports[0] if len(ports) == 1 else None)
    want = str(ipaddress.ip_address(ip))
    found: list[Any] = []
    first, last = ports[0], ports[-1]
    for rows in batches(Decoder("row"), dump_request(family=family, attrs=attrs)):
        for flow in rows:
            key = flow.listen_key  # (proto, original destination, its port): no Tuple built
            if key[0] == proto and key[1] == want and key[2].isdigit():
                if first <= int(key[2]) <= last:
                    found.append(flow)
    return found
