"""The ctnetlink dump decoder: a real dump (tests/fixtures/make_ctnetlink_fixtures.py captured it
with `conntrack -L -o extended` and /proc/net/nf_conntrack of the same flows) read field by field
like conntrack's own text; its lines exactly as natbox prints parsed flows; and hand-made messages
for the shapes a small lab does not make."""

from __future__ import annotations

import errno
import json
import re
import socket
import struct
import time
from pathlib import Path

import pytest

from natbox.conntrack import Flow, ForwardIndex, dump, parse_text, select, text_lines
from natbox.conntrack.flow import Decoded
from natbox.errors import NatboxError, NotRootError
from natbox.model import Forward

FIX = Path(__file__).parent / "fixtures" / "ctnetlink"
META = json.loads((FIX / "meta.json").read_text())
WEB = Forward.from_text(
    "192.168.1.30:1234", "10.0.2.50:80", proto="both", name="web", snat="10.0.2.40"
)
INDEX = ForwardIndex([WEB])


def decode(kind: str = "row", **kw: object) -> list[object]:
    dec = dump.Decoder(kind, now_ns=META["now_ns"], **kw)  # type: ignore[arg-type]
    out = dec.feed((FIX / "dump.bin").read_bytes())
    assert dec.done and not dec.error and dec.skipped == 0
    return out


def rows() -> list[Flow]:
    out = decode()
    assert all(isinstance(f, Decoded) for f in out)
    return out  # type: ignore[return-value]


def parsed(name: str) -> dict[tuple[str, ...], Flow]:
    table = parse_text((FIX / name).read_text())
    assert table.skipped == 0
    return {f.key: f for f in table.flows}


def test_the_fixture_has_every_shape() -> None:
    flows = rows()
    assert len(flows) == 11
    assert {f.proto for f in flows} == {"tcp", "udp", "icmp", "icmpv6", "gre", "unknown"}
    assert {f.family for f in flows} == {4, 6}
    assert {f.state for f in flows if f.proto == "tcp"} == {"TIME_WAIT", "SYN_SENT"}
    assert any(f.mark == 42 for f in flows) and any(f.zone == 7 for f in flows)
    assert any(f.dnat and f.snat for f in flows)
    assert any("UNREPLIED" in f.flags for f in flows) and any("ASSURED" in f.flags for f in flows)
    assert all(f.orig_packets is not None and f.age is not None for f in flows)


@pytest.mark.parametrize("name", ["extended.txt", "nf_conntrack.txt"])
def test_every_flow_reads_as_the_kernels_text(name: str) -> None:
    """Field by field against `conntrack -L -o extended` and /proc of the same flows."""
    want = parsed(name)
    got = {f.key: f for f in rows()}
    assert set(got) == set(want)
    for key, f in got.items():
        w = want[key]
        assert (f.family, f.proto, f.state, f.orig, f.reply) == (
            w.family,
            w.proto,
            w.state,
            w.orig,
            w.reply,
        ), key
        assert (f.flags, f.mark, f.zone, f.extra, f.dnat, f.snat) == (
            w.flags,
            w.mark,
            w.zone,
            w.extra,
            w.dnat,
            w.snat,
        ), key
        assert (f.orig_packets, f.orig_bytes, f.reply_packets, f.reply_bytes) == (
            w.orig_packets,
            w.orig_bytes,
            w.reply_packets,
            w.reply_bytes,
        ), key
        # read moments apart: the clock moved
        assert abs(f.timeout - w.timeout) <= 1 and abs((f.age or 0) - (w.age or 0)) <= 2, key
        assert f.path() == w.path() and f.key == w.key


def test_the_mark_zone_and_translation_are_read() -> None:
    by_port = {f.orig.dport: f for f in rows() if f.proto == "udp"}
    assert by_port[7777].mark == 42 and by_port[7778].zone == 7 and by_port[7778].mark == 0
    web = by_port[1234]
    assert web.orig == ("192.168.1.20", "192.168.1.30", web.orig.sport, 1234)
    assert web.reply == ("10.0.2.50", "10.0.2.40", 80, web.orig.sport)
    assert (
        web.path()
        == f"192.168.1.20:{web.orig.sport} → 192.168.1.30:1234 => 10.0.2.40:{web.orig.sport} → 10.0.2.50:80"
    )
    (icmp6,) = [f for f in rows() if f.proto == "icmpv6"]
    assert icmp6.orig.src == "::1" and icmp6.extra.startswith("type=128 code=0 id=")


_TIMEOUT = re.compile(r'"timeout":\d+|^(\w+ +\S+ +)\d+', re.MULTILINE)


def _no_timeouts(text: str) -> str:
    return _TIMEOUT.sub(lambda m: f"{m.group(1) or ''}T", text)


@pytest.mark.parametrize("accounting", [False, True])
def test_lines_are_what_natbox_prints_for_parsed_flows(accounting: bool) -> None:
    """The decoder's text and JSON lines equal select.text_lines / Flow.to_json, for decoded rows
    and for the same flows parsed from /proc."""
    owners = INDEX.packed()
    flows = rows()
    text = decode("text", accounting=accounting, owners=owners)
    assert text == text_lines(flows, INDEX, accounting).splitlines(keepends=True)
    js = decode("json", owners=owners)
    assert js == [f.to_json(INDEX(f)) for f in flows]
    assert [json.loads(x) for x in js] == [f.to_dict(INDEX(f)) for f in flows]
    proc = parsed("nf_conntrack.txt")
    in_order = [proc[f.key] for f in flows]
    assert _no_timeouts("".join(text)) == _no_timeouts(text_lines(in_order, INDEX, accounting))
    from_proc = [_no_timeouts(f.to_json(INDEX(f))) for f in in_order]
    # /proc and the dump were read a second apart: ages may differ by one
    age = re.compile(r'"age":\d+')
    assert [age.sub("", _no_timeouts(x)) for x in js] == [age.sub("", x) for x in from_proc]
    assert sum(INDEX(f) == "web" for f in flows) == 2


@pytest.mark.parametrize("kind", ["text", "json"])
def test_lines_made_before_the_forwards_are_known_finish_the_same(kind: str) -> None:
    owners = INDEX.packed()
    dec = dump.Decoder(kind, now_ns=META["now_ns"])
    open_lines = dec.feed((FIX / "dump.bin").read_bytes())
    assert len(dec.keys) == len(open_lines) == 11
    assert dump.finish(kind, open_lines, dec.keys, owners) == decode(kind, owners=owners)
    assert dump.finish(kind, open_lines, dec.keys, {}) == decode(kind, owners={})


def test_a_dump_split_in_datagrams_reads_the_same() -> None:
    data = (FIX / "dump.bin").read_bytes()
    dec = dump.Decoder(now_ns=META["now_ns"])
    out: list[Flow] = []
    off = 0
    while off < len(data):  # one message per datagram, each shape met again and again
        size = struct.unpack_from("=I", data, off)[0]
        assert dump.ends(data[off : off + size]) == (off + size == len(data))
        out += dec.feed(data[off : off + size])
        off += size
    assert out == rows() and dec.done


def test_decoded_rows_sort_filter_and_find_like_parsed_ones() -> None:
    flows = rows()
    by_bytes = select(flows, sort="bytes")
    assert [f.bytes for f in by_bytes] == sorted((f.bytes for f in flows), reverse=True)
    by_packets = select(flows, sort="packets")
    assert by_packets[0].packets == max(f.packets for f in flows) == 12
    assert sorted(f.proto for f in select(flows, index=INDEX, forward="web")) == ["tcp", "udp"]
    assert [f.state for f in select(flows, state="syn_sent")] == ["SYN_SENT"]
    (web_tcp,) = [f for f in flows if f.proto == "tcp" and f.dnat]
    assert web_tcp.flags == ("ASSURED",) and web_tcp.packets == 12
    assert Flow.to_dict(web_tcp) == web_tcp.to_dict()  # the parsed row's rest, rebuilt
    assert web_tcp._rest()[2] == "" and "mark=0" in web_tcp._rest()[-1]


# -- hand-made messages: shapes a lab does not make ------------------------------------------


def attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    length = 4 + len(payload)
    return (
        struct.pack("=HH", length, kind | (0x8000 if nested else 0))
        + payload
        + b"\0" * (-length % 4)
    )


def tuple_attr(kind: int, src: str, dst: str, proto: int, ports: tuple[int, int] | None) -> bytes:
    v6 = ":" in src
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    ip = attr(3 if v6 else 1, socket.inet_pton(fam, src)) + attr(
        4 if v6 else 2, socket.inet_pton(fam, dst)
    )
    p = attr(1, bytes([proto]))
    if ports:
        p += attr(2, struct.pack("!H", ports[0])) + attr(3, struct.pack("!H", ports[1]))
    return attr(kind, attr(1, ip, True) + attr(2, p, True), True)


def message(*attrs: bytes, family: int = socket.AF_INET, kind: int = 0x100) -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), kind, 0x2, 1, 0) + body


def udp(*extra: bytes, sport: int = 1000) -> bytes:
    return message(
        tuple_attr(1, "10.0.0.1", "10.0.0.2", 17, (sport, 53)),
        tuple_attr(2, "10.0.0.2", "10.0.0.1", 17, (53, sport)),
        attr(3, struct.pack("!I", 0x2)),  # SEEN_REPLY
        attr(7, struct.pack("!I", 30)),
        *extra,
    )


DONE = struct.pack("=IHHII", 20, 3, 0x2, 1, 0) + b"\0" * 4


def test_same_length_other_shape_is_not_mistaken() -> None:
    """A mark and a zone take the same bytes: the mask of header bytes tells them apart."""
    marked = udp(attr(8, struct.pack("!I", 5)))
    zoned = udp(attr(18, struct.pack("!H", 5)))
    assert len(marked) == len(zoned)
    dec = dump.Decoder()
    got = dec.feed(marked + zoned + marked + DONE)
    assert [(f.mark, f.zone) for f in got] == [(5, 0), (0, 5), (5, 0)]  # type: ignore[attr-defined]
    assert sum(map(len, dec.layouts.values())) == 2 and dec.done


def test_a_long_run_checked_32_at_a_time_still_stops_at_another_shape() -> None:
    marked = [udp(attr(8, struct.pack("!I", 5)), sport=1000 + i) for i in range(100)]
    zoned = udp(attr(18, struct.pack("!H", 5)), sport=999)
    for at in (0, 9, 40, 41, 70, 99):  # before, inside and at the edges of the 32-message blocks
        msgs = [*marked[:at], zoned, *marked[at:]]
        got = dump.Decoder().feed(b"".join(msgs) + DONE)
        assert [(f.mark, f.zone) for f in got] == [  # type: ignore[attr-defined]
            (0, 5) if i == at else (5, 0) for i in range(101)
        ], at
        assert [f.orig.sport for f in got] == [  # type: ignore[attr-defined]
            999 if i == at else 1000 + (i if i < at else i - 1) for i in range(101)
        ]


def test_protocol_states_and_unknown_ones() -> None:
    def with_state(proto: int, info: int, state: int) -> bytes:
        return message(
            tuple_attr(1, "10.0.0.1", "10.0.0.2", proto, (1, 2)),
            tuple_attr(2, "10.0.0.2", "10.0.0.1", proto, (2, 1)),
            attr(3, struct.pack("!I", 0x6)),
            attr(4, attr(info, attr(1, bytes([state])), True), True),
            attr(7, struct.pack("!I", 9)),
        )

    got = dump.Decoder().feed(
        with_state(132, 3, 4) + with_state(33, 2, 4) + with_state(6, 1, 3) + DONE
    )
    assert [(f.proto, f.state, f.flags) for f in got] == [  # type: ignore[attr-defined]
        ("sctp", "ESTABLISHED", ("ASSURED",)),
        ("dccp", "OPEN", ("ASSURED",)),
        ("tcp", "ESTABLISHED", ("ASSURED",)),
    ]
    with pytest.raises(dump.Unsupported):
        dump.Decoder().feed(with_state(6, 1, 42))  # a state newer than this code
    with pytest.raises(dump.Unsupported):
        dump.Decoder().feed(with_state(6, 2, 1))  # TCP with DCCP's protoinfo


def test_offload_flags_and_gre_keys() -> None:
    hw = udp(attr(3, struct.pack("!I", 0x2 | 0x4 | 0x4000 | 0x8000)))
    gre = message(
        tuple_attr(1, "10.0.0.1", "10.0.0.2", 47, (7, 8)),  # GRE keys ride in the port attrs
        tuple_attr(2, "10.0.0.2", "10.0.0.1", 47, (8, 7)),
        attr(3, struct.pack("!I", 0)),
        attr(7, struct.pack("!I", 29)),
    )
    flows = dump.Decoder().feed(hw + gre + DONE)
    assert flows[0].flags == ("HW_OFFLOAD",)  # type: ignore[attr-defined]
    assert flows[1].proto == "gre" and flows[1].orig.sport is None  # as /proc shows it
    assert flows[1].flags == ("UNREPLIED",)


def test_broken_messages_are_counted_and_skipped() -> None:
    good = udp()
    bad_attr = bytearray(udp(sport=2000))
    struct.pack_into("=H", bad_attr, 20, 999)  # the first attribute claims more than there is
    truncated = udp(sport=3000)[:-8]
    other = message(kind=0x101)  # not a flow: ignored
    dec = dump.Decoder()
    got = dec.feed(good + bytes(bad_attr) + other + good + DONE)
    assert len(got) == 2 and dec.skipped == 1 and dec.done
    dec = dump.Decoder()
    assert dec.feed(good + truncated) != [] and dec.skipped == 1 and not dec.done


def test_errors_and_the_end() -> None:
    error = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -errno.EPERM) + b"\0" * 16
    dec = dump.Decoder()
    assert dec.feed(error) == [] and dec.done and dec.error == errno.EPERM
    with pytest.raises(NotRootError):
        dump.check_error(dec.error, True)
    with pytest.raises(dump.Unavailable):
        dump.check_error(errno.EOPNOTSUPP, True)
    assert dump.ends(DONE) and dump.ends(error) and not dump.ends(udp())
    # A dump that fails midway ends with NLMSG_DONE carrying -errno: incomplete, said so.
    failed = struct.pack("=IHHIIi", 20, 3, 2, 1, 0, -errno.ENOBUFS)
    dec = dump.Decoder()
    assert len(dec.feed(udp() + failed)) == 1 and dec.done and dec.error == errno.ENOBUFS
    dec = dump.Decoder()
    assert dec.feed(udp() + DONE) and dec.done and dec.error == 0
    request = dump.dump_request()
    length, kind, flags = struct.unpack_from("=IHH", request)
    assert (length, kind, flags, request[16]) == (20, 0x101, 0x301, socket.AF_UNSPEC)


def test_ipv6_addresses_are_shortened_like_proc_ones() -> None:
    six = message(
        tuple_attr(1, "2001:db8::20", "2001:db8:1::30", 17, (40000, 1234)),
        tuple_attr(2, "2001:db8:2::50", "2001:db8:2::40", 17, (80, 40000)),
        attr(3, struct.pack("!I", 0x2)),
        attr(7, struct.pack("!I", 30)),
        family=socket.AF_INET6,
    )
    (f,) = dump.Decoder().feed(six + DONE)
    assert f.family == 6 and f.orig.src == "2001:db8::20"  # type: ignore[attr-defined]
    index = ForwardIndex(
        [
            Forward.from_text(
                "[2001:db8:1::30]:1234", "[2001:db8:2::50]:80", proto="udp", snat="2001:db8:2::40"
            )
        ]
    )
    (line,) = dump.Decoder("text", owners=index.packed()).feed(six + DONE)
    assert line == text_lines([f], index, False)  # type: ignore[list-item]
    assert "[2001:db8::20]:40000 → [2001:db8:1::30]:1234 => [2001:db8:2::40]:40000" in line
    assert index(f)  # type: ignore[arg-type]


def test_read_flows_falls_back_to_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    from natbox.conntrack import read

    def no_netlink(request: bytes | None = None) -> socket.socket:
        raise dump.Unavailable("no ctnetlink here")

    monkeypatch.setattr(dump, "open_dump", no_netlink)
    proc_read: list[bool] = []
    monkeypatch.setattr(
        read, "parse_text", lambda text: proc_read.append(True) or read.FlowRead([])
    )  # type: ignore[func-returns-value]
    monkeypatch.setattr("builtins.open", lambda *a, **k: __import__("io").StringIO(""))
    read.read_flows()
    assert proc_read
    monkeypatch.setenv(read.READER_ENV, "netlink")
    with pytest.raises(dump.Unavailable):
        read.read_flows()
    monkeypatch.setenv(read.READER_ENV, "bogus")
    with pytest.raises(read.NatboxError):
        read.read_flows()


def fake_kernel(monkeypatch: pytest.MonkeyPatch, *sent: bytes) -> socket.socket:
    """open_dump answered by datagrams queued on a socket pair (the caller closes the kernel's
    end when done: until then a receive past the last one waits, as on a real socket)."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for datagram in sent:
        kernel.send(datagram)
    monkeypatch.setattr(dump, "open_dump", lambda request=None: ours)
    return kernel


def error_msg(code: int) -> bytes:
    return struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -code) + b"\0" * 16


@pytest.mark.parametrize(
    ("datagram", "rows", "raises"),
    [
        # An NLMSG_ERROR after the flows of its datagram: the dump stopped midway, said so.
        (udp() + error_msg(errno.ENOBUFS), 0, "the kernel stopped the conntrack dump"),
        # NLMSG_DONE in the middle of its datagram: the end, whatever follows it.
        (udp() + DONE + udp(sport=2000), 1, None),
        (udp() + udp(sport=2000) + DONE + message(kind=0x101), 2, None),
    ],
    ids=["error-after-a-flow", "done-between-flows", "done-before-another-message"],
)
def test_an_end_anywhere_in_a_datagram_ends_the_dump_at_once(
    monkeypatch: pytest.MonkeyPatch, datagram: bytes, rows: int, raises: str | None
) -> None:
    """Not only the first or the last message of a datagram: the reader stops there, without
    waiting for a datagram that never comes (it waited for its 10 s receive timeout)."""
    kernel = fake_kernel(monkeypatch, udp(sport=500) + udp(sport=501), datagram)
    try:
        start = time.monotonic()
        got: list[object] = []
        if raises is None:
            for batch in dump.batches():
                got += batch
            assert len(got) == 2 + rows
        else:
            with pytest.raises(NatboxError, match=raises):
                for batch in dump.batches():
                    got += batch
        assert time.monotonic() - start < 3.0
    finally:
        kernel.close()


def test_a_refusal_after_a_message_that_is_no_flow_falls_back_to_proc_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The request refused (no flow came before the NLMSG_ERROR, even if something else did):
    read_flows reads /proc, and promptly."""
    from natbox.conntrack import read

    kernel = fake_kernel(monkeypatch, message(kind=0x101) + error_msg(errno.EOPNOTSUPP))
    try:
        proc_read: list[bool] = []
        monkeypatch.setattr(
            read, "parse_text", lambda text: proc_read.append(True) or read.FlowRead([])
        )  # type: ignore[func-returns-value]
        monkeypatch.setattr("builtins.open", lambda *a, **k: __import__("io").StringIO(""))
        start = time.monotonic()
        read.read_flows()
        assert proc_read and time.monotonic() - start < 3.0
    finally:
        kernel.close()


@pytest.mark.parametrize(
    ("family", "kind", "size"),
    [
        (socket.AF_INET, 1, 0),
        (socket.AF_INET, 2, 5),
        (socket.AF_INET, 1, 16),  # an IPv6-sized address in an IPv4 flow
        (socket.AF_INET6, 3, 4),
        (socket.AF_INET6, 4, 0),
    ],
)
@pytest.mark.parametrize("out", ["row", "text", "json"])
def test_an_address_of_a_size_proc_would_not_show_sends_the_reader_to_proc(
    monkeypatch: pytest.MonkeyPatch, family: int, kind: int, size: int, out: str
) -> None:
    """An address attribute of the wrong size: Unsupported (read_flows reads /proc), not an
    internal error from the address parser."""
    from natbox.conntrack import read

    v6 = family == socket.AF_INET6
    src, dst = ("2001:db8::1", "2001:db8::2") if v6 else ("10.0.0.1", "10.0.0.2")
    good = tuple_attr(1, src, dst, 17, (1000, 53))
    ip = attr(kind, b"\x0a" * size) + attr(
        kind + 1 if kind % 2 else kind - 1, socket.inet_pton(family, dst)
    )
    proto = attr(1, bytes([17])) + attr(2, struct.pack("!H", 53)) + attr(3, struct.pack("!H", 1000))
    odd = attr(2, attr(1, ip, True) + attr(2, proto, True), True)
    msg = message(good, odd, attr(3, struct.pack("!I", 0x2)), family=family)
    with pytest.raises(dump.Unsupported, match="address"):
        dump.Decoder(out, owners={}).feed(msg + DONE)
    kernel = fake_kernel(monkeypatch, msg + DONE)
    try:
        proc_read: list[bool] = []
        monkeypatch.setattr(
            read, "parse_text", lambda text: proc_read.append(True) or read.FlowRead([])
        )  # type: ignore[func-returns-value]
        monkeypatch.setattr("builtins.open", lambda *a, **k: __import__("io").StringIO(""))
        read.read_flows()
        assert proc_read
    finally:
        kernel.close()
