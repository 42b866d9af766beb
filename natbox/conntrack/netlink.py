"""Provides kill: one ctnetlink IPCTNL_MSG_CT_DELETE by tuple per flow (no scan of the table,
unlike `conntrack -D`)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence

from natbox.conntrack.flow import Flow
from natbox.errors import NatboxError, NotRootError, ValidationError

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


_CTA_FILTER = 25
_CTA_FILTER_ORIG_FLAGS, _CTA_FILTER_REPLY_FLAGS = 1, 2
_FILTER_IP_DST, _FILTER_PROTO_NUM, _FILTER_PROTO_DST_PORT = 1 << 1, 1 << 3, 1 << 5


def dump_filter(ip: str, proto: str, port: int | None = None) -> tuple[int, bytes]:
    """(family, attributes) that ask a dump for the flows whose original tuple goes to `ip`
    (`proto`, and `port` if given) only (CTA_FILTER, Linux 5.8+). The kernel does the matching;
    an older kernel ignores the filter and sends the whole table: callers check every flow."""
    addr = ipaddress.ip_address(ip)
    fam, dst_t = (
        (socket.AF_INET6, _CTA_IP_V6_DST) if addr.version == 6 else (socket.AF_INET, _CTA_IP_V4_DST)
    )
    flags = _FILTER_IP_DST | _FILTER_PROTO_NUM
    proto_attrs = _attr(_CTA_PROTO_NUM, struct.pack("B", PROTO_NUMBERS[proto]))
    if port is not None:
        flags |= _FILTER_PROTO_DST_PORT
        proto_attrs += _attr(_CTA_PROTO_DST_PORT, struct.pack("!H", port))
    tuple_orig = _attr(
        _CTA_TUPLE_ORIG,
        _attr(_CTA_TUPLE_IP, _attr(dst_t, addr.packed), nested=True)
        + _attr(_CTA_TUPLE_PROTO, proto_attrs, nested=True),
        nested=True,
    )
    filter_ = _attr(
        _CTA_FILTER,
        _attr(_CTA_FILTER_ORIG_FLAGS, struct.pack("=I", flags))
        + _attr(_CTA_FILTER_REPLY_FLAGS, struct.pack("=I", 0)),
        nested=True,
    )
    return fam, tuple_orig + filter_


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
