"""Conntrack lines of every protocol and flag, read the same from /proc and from conntrack -L."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from natbox.conntrack import (
    Flow,
    ForwardIndex,
    Tuple,
    delete_message,
    parse_lines,
    parse_tuple,
    select,
    table_fill,
)
from natbox.errors import ValidationError
from natbox.model import Forward

FIX = Path(__file__).parent / "fixtures"


def load(name: str) -> list[Flow]:
    table = parse_lines((FIX / name).read_text().splitlines())
    assert table.skipped == 0
    return table.flows


@pytest.mark.parametrize(
    "name", ["nf_conntrack.txt", "conntrack-L-extended.txt", "conntrack-L.txt"]
)
def test_every_reader_format_gives_the_same_flows(name: str) -> None:
    flows = {f.key: f for f in load(name)}
    proc = {f.key: f for f in load("nf_conntrack.txt")}
    assert set(flows) == set(proc) and len(flows) == 8
    for key, f in flows.items():
        p = proc[key]
        assert (f.state, f.reply, f.flags, f.packets, f.bytes, f.extra) == (
            p.state,
            p.reply,
            p.flags,
            p.packets,
            p.bytes,
            p.extra,
        )


def test_the_forwarded_tcp_flow_shows_the_translation() -> None:
    (tcp,) = [f for f in load("nf_conntrack.txt") if f.proto == "tcp"]
    assert tcp.family == 4 and tcp.state == "TIME_WAIT" and tcp.flags == ("ASSURED",)
    assert (
        tcp.orig.src == "192.168.1.20" and tcp.orig.dst == "192.168.1.30" and tcp.orig.dport == 1234
    )
    assert tcp.reply.src == "10.0.2.50" and tcp.reply.dst == "10.0.2.40" and tcp.reply.sport == 80
    assert tcp.dnat and tcp.snat
    assert (
        tcp.path()
        == f"192.168.1.20:{tcp.orig.sport} → 192.168.1.30:1234 => 10.0.2.40:{tcp.reply.dport} → 10.0.2.50:80"
    )
    assert tcp.orig_packets and tcp.reply_bytes  # accounting was on in the lab


def test_icmp_ipv6_gre_unreplied() -> None:
    flows = load("nf_conntrack.txt")
    icmp = [f for f in flows if f.proto == "icmp"]
    assert len(icmp) == 2 and all(
        f.orig.sport is None and f.extra.startswith("type=8 code=0 id=") for f in icmp
    )
    assert not any(f.dnat or f.snat for f in icmp)
    (v6icmp,) = [f for f in flows if f.proto == "icmpv6"]
    assert v6icmp.family == 6 and v6icmp.orig.src == "::1"
    (v6udp,) = [f for f in flows if f.proto == "udp" and f.family == 6]
    assert (
        v6udp.flags == ("UNREPLIED",) and v6udp.path() == f"[::1]:{v6udp.orig.sport} → [::1]:5000"
    )
    (gre,) = [f for f in flows if f.proto == "gre"]
    assert gre.timeout == 29 and gre.flags == ("UNREPLIED",) and gre.orig.sport is None
    unreplied = [f for f in flows if f.proto == "udp" and f.orig.dport == 9999]
    assert unreplied[0].flags == ("UNREPLIED",) and not unreplied[0].dnat


def test_rare_shapes_and_malformed_lines_are_counted() -> None:
    table = parse_lines((FIX / "conntrack-rare.txt").read_text().splitlines())
    assert table.skipped == 2
    est, syn, v6, sctp, unknown = table.flows
    assert (
        est.flags == ("ASSURED", "OFFLOAD")
        and est.mark == 16
        and est.zone == 3
        and est.timeout == 431999
    )
    assert est.orig_packets is None and est.packets == 0
    assert (
        syn.state == "SYN_SENT"
        and syn.flags == ("UNREPLIED",)
        and syn.age == 12
        and syn.orig_bytes == 60
    )
    assert (
        v6.family == 6
        and v6.orig.src == "2001:db8::20"
        and v6.reply.src == "2001:db8::2:50"
        and v6.dnat
    )
    assert sctp.proto == "sctp" and sctp.state == "ESTABLISHED" and sctp.orig.dport == 6000
    assert unknown.proto == "unknown" and unknown.orig == Tuple("10.0.0.1", "10.0.0.2")


def test_match_forwards_and_select() -> None:
    flows = load("nf_conntrack.txt")
    web = Forward.from_text(
        "192.168.1.30:1234", "10.0.2.50:80", proto="both", name="web", snat="10.0.2.40"
    )
    index = ForwardIndex([web])
    mine = select(flows, index=index, forward="web")
    assert sorted(f.proto for f in mine) == ["tcp", "udp"]
    assert [f.proto for f in select(flows, index=index, forward="web", proto="tcp")] == ["tcp"]
    assert [f.state for f in select(flows, state="time_wait")] == ["TIME_WAIT"]
    by_bytes = select(flows, sort="bytes")
    assert by_bytes[0].bytes == max(f.bytes for f in flows)
    assert len(select(flows, sort="timeout", limit=3)) == 3
    tcp_only = ForwardIndex(
        [Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", name="t", snat="10.0.2.40")]
    )
    assert [f.proto for f in flows if tcp_only(f) == "t"] == ["tcp"]
    assert select(flows, forward="t") == [], "without an index no flow belongs to a forward"


def _attrs(buf: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while buf:
        length, kind = struct.unpack_from("=HH", buf)
        out[kind & 0x7FFF] = buf[4:length]
        buf = buf[(length + 3) & ~3 :]
    return out


def test_delete_message_encodes_the_original_tuple() -> None:
    flow = parse_tuple("udp", "192.168.1.20:40000", "192.168.1.30:1234")
    msg = delete_message(flow, seq=7)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", msg)
    assert length == len(msg) and kind == (1 << 8) | 2 and flags == 0x5 and seq == 7
    family = msg[16]
    assert family == socket.AF_INET
    top = _attrs(msg[20:])
    orig = _attrs(top[1])
    ip, proto = _attrs(orig[1]), _attrs(orig[2])
    assert ip[1] == socket.inet_aton("192.168.1.20") and ip[2] == socket.inet_aton("192.168.1.30")
    assert (
        proto[1] == b"\x11"
        and proto[2] == struct.pack("!H", 40000)
        and proto[3] == struct.pack("!H", 1234)
    )


def test_delete_message_icmp_and_ipv6() -> None:
    flows = load("nf_conntrack.txt")
    (icmp,) = [f for f in flows if f.proto == "icmp" and f.orig.src == "192.168.1.20"]
    proto = _attrs(_attrs(_attrs(delete_message(icmp)[20:])[1])[2])
    assert proto[5] == b"\x08" and proto[6] == b"\x00" and len(proto[4]) == 2
    (v6,) = [f for f in flows if f.proto == "udp" and f.family == 6]
    msg = delete_message(v6)
    assert msg[16] == socket.AF_INET6
    ip = _attrs(_attrs(_attrs(msg[20:])[1])[1])
    assert ip[3] == socket.inet_pton(socket.AF_INET6, "::1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("icmp", "1.2.3.4:1", "1.2.3.5:2"), "--tuple takes tcp or udp"),
        (("tcp", "1.2.3.4", "1.2.3.5:2"), "has no port"),
        (("tcp", "1.2.3.4:1-5", "1.2.3.5:2"), "single ports"),
    ],
)
def test_bad_tuples(args: tuple[str, str, str], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_tuple(*args)
    assert message in info.value.message


def test_table_fill_reads_sysctls(tmp_path: Path) -> None:
    for name, value in (
        ("nf_conntrack_count", "42"),
        ("nf_conntrack_max", "262144"),
        ("nf_conntrack_acct", "1"),
    ):
        (tmp_path / name).write_text(value + "\n")
    fill = table_fill(tmp_path)
    assert (fill.count, fill.max, fill.accounting, fill.timestamps) == (42, 262144, True, False)


def test_reader_falls_back_to_conntrack_L(tmp_path: Path) -> None:
    from natbox.conntrack import read_flows
    from natbox.runner import RecordingRunner, Result

    text = (FIX / "conntrack-L-extended.txt").read_text()
    runner = RecordingRunner(answers={"conntrack -L": Result(("conntrack",), 0, text, "")})
    table = read_flows(runner, proc=tmp_path / "no-such-file")
    assert table.source == "conntrack -L" and len(table.flows) == 8
    assert runner.calls[0][0] == ["conntrack", "-L", "-o", "extended"]


@pytest.mark.parametrize(
    "name", ["nf_conntrack.txt", "conntrack-L-extended.txt", "conntrack-L.txt"]
)
def test_json_text_is_to_dict(name: str) -> None:
    import json

    for f in load(name):
        for fwd in (None, "web"):
            assert json.loads(f.to_json(fwd)) == f.to_dict(fwd)
            assert json.loads(f.to_json(fwd, plain=True)) == f.to_dict(fwd)


def test_json_text_escapes_what_it_must() -> None:
    import json

    odd = parse_lines(
        [
            'ipv4 2 udp 17 29 src=1.2.3.4 dst=5.6.7.8 sport=1 dport=2 src=5.6.7.8 dst=1.2.3.4 sport=2 dport=1 secctx="x" zone=0'
        ]
    )
    assert not odd.plain
    (flow,) = odd.flows
    assert json.loads(flow.to_json())["orig"]["sport"] == 1


def test_select_sorts_each_way() -> None:
    flows = load("nf_conntrack.txt")
    soon = select(flows, sort="timeout")
    assert [f.timeout for f in soon] == sorted(f.timeout for f in flows)
    late = select(flows, sort="timeout", reverse=True)
    assert [f.timeout for f in late] == sorted((f.timeout for f in flows), reverse=True)
    big = select(flows, sort="bytes")
    assert [f.bytes for f in big] == sorted((f.bytes for f in flows), reverse=True)
    assert select(flows, reverse=True) == flows[::-1]


def test_filter_fields_and_words() -> None:
    from natbox.conntrack.select import FlowFilter, row_text

    flt = FlowFilter.parse("Web proto:UDP state:established fwd:web port:1234 x:y")
    assert flt.terms == ("web", "x:y")
    assert (flt.proto, flt.state, flt.forward, flt.port) == ("udp", "ESTABLISHED", "web", "1234")
    assert not FlowFilter.parse("  ") and FlowFilter.parse("port:1")
    # typing on narrows (filter the rows found), a changed field does not
    assert FlowFilter.parse("192.168.1.2").narrows(FlowFilter.parse("192.168.1"))
    assert FlowFilter.parse("192 udp").narrows(FlowFilter.parse("192"))
    assert not FlowFilter.parse("port:12").narrows(FlowFilter.parse("port:1"))
    assert not FlowFilter.parse("19").narrows(FlowFilter.parse("192"))
    flows = load("nf_conntrack.txt")
    index = ForwardIndex([Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", snat="10.0.2.40")])
    udp = [f for f in flows if f.proto == "udp"]
    assert FlowFilter.parse("proto:udp").apply(flows, index) == udp
    # the row's text: what the viewer shows, both tuples with ports, nothing hidden
    shown = {row_text(f, index(f)) for f in flows}
    assert not any("mark" in t or "zone" in t or "use=" in t for t in shown)
    hits = FlowFilter.parse(":1234").apply(flows, index)
    assert hits and all(f.orig.dport == 1234 for f in hits)
    pairs = FlowFilter.parse("10.0.2.40").apply_pairs(
        [(f, row_text(f, index(f))) for f in flows], index
    )
    assert pairs and [f for f, _ in pairs] == [f for f in flows if "10.0.2.40" in f.path()]


def test_compact_path_keeps_both_tuples() -> None:
    from widgets.flow_table import compact_path

    (flow,) = [f for f in load("nf_conntrack.txt") if f.orig.dport == 1234 and f.proto == "udp"]
    full = compact_path(flow)
    assert (
        full
        == flow.path()
        == "192.168.1.20:40200 → 192.168.1.30:1234 => 10.0.2.40:40200 → 10.0.2.50:80"
    )
    assert (
        compact_path(flow, 66)
        == "192.168.1.20:40200 → 192.168.1.30:1234 => 10.0.2.40 → 10.0.2.50:80"
    )
    assert compact_path(flow, 51) == "192.168.1.20:40200 → .30:1234 => 10.0.2.40 → .50:80"
    assert len(compact_path(flow, 30)) == 30 and compact_path(flow, 30).endswith("…")


def test_rows_carry_the_reply_tuple() -> None:
    for f in load("nf_conntrack.txt"):
        assert f.reply == Tuple(*f.reply)  # read from the row's own fields
        if f.proto in ("tcp", "udp"):
            assert f.reply.sport is not None and f.reply.dport is not None
