"""Doctor at scale: each distinct backend is routed and probed once, whatever the forward count."""

from __future__ import annotations

import threading

import pytest

from natbox import conntrack, facts
from natbox.model import Forward
from natbox.system import Route


def test_prefetch_probes_and_routes_each_backend_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"route": 0, "probe": 0}
    lock = threading.Lock()

    def fake_route(ip: object, runner: object = None) -> Route:
        with lock:
            calls["route"] += 1
        return Route(ip, "dmz0", None, None)  # type: ignore[arg-type]

    def fake_probe(fwd: Forward, timeout: float = 1.0) -> tuple[bool | None, str]:
        with lock:
            calls["probe"] += 1
        return (fwd.backend.ip.packed[-1] % 10 != 0, "")  # every tenth backend is down

    monkeypatch.setattr(facts, "route_to", fake_route)
    monkeypatch.setattr(facts, "backend_probe", fake_probe)
    forwards = [
        Forward.from_text(
            f"192.168.1.30:{2000 + i}",
            f"10.0.{i % 100 // 50}.{i % 100 + 1}:80",
            name=f"f{i}",
            snat="10.0.2.40",
        )
        for i in range(1000)
    ]
    box = facts.BoxFacts([], frozenset(), {}, [], [])
    facts.prefetch(box, forwards, probe=True)
    assert calls == {"route": 100, "probe": 100}
    answers = [box.probe(f)[0] for f in forwards]
    assert answers.count(False) == 100 and calls["probe"] == 100, "memoised"


def _line(
    proto: str,
    dst: str,
    dport: int,
    reply_src: str,
    flags: str = "[ASSURED] ",
    reply_port: int = 80,
) -> str:
    """One /proc/net/nf_conntrack line from 192.168.1.20 (or its IPv6 twin) to dst:dport."""
    family = "ipv6     10" if ":" in dst else "ipv4     2"
    num = "6" if proto == "tcp" else "17"
    client = "2001:0db8:0001:0000:0000:0000:0000:0020" if ":" in dst else "192.168.1.20"
    unreplied = "[UNREPLIED] " if "UNREPLIED" in flags else ""
    state = "ESTABLISHED " if proto == "tcp" else ""
    return (
        f"{family} {proto:<8} {num} 100 {state}src={client} dst={dst} sport=40000 dport={dport} "
        f"packets=1 bytes=60 {unreplied}src={reply_src} dst={client} sport={reply_port} dport=40000 "
        f"packets=1 bytes=60 {'' if unreplied else flags}mark=0 zone=0 use=2"
    )


def test_a_forwards_flows_are_its_listen_address_ports_and_protocols() -> None:
    v6 = "2001:0db8:0001:0000:0000:0000:0000:0030"  # as /proc prints it
    lines = [
        _line("tcp", "192.168.1.30", 1234, "10.0.2.50"),  # replied, DNATed to the backend
        _line("tcp", "192.168.1.30", 1234, "10.0.2.50", "[UNREPLIED]"),
        _line("tcp", "192.168.1.30", 1234, "192.168.1.30", reply_port=1234),  # not DNATed: stale
        _line("tcp", "192.168.1.30", 1234, "10.0.2.99"),  # DNATed elsewhere
        _line("udp", "192.168.1.30", 1234, "10.0.2.50"),  # other protocol
        _line("tcp", "192.168.1.30", 1235, "10.0.2.50"),  # other port
        _line("tcp", "192.168.1.31", 1234, "10.0.2.50"),  # other address
        _line("tcp", v6, 1234, "2001:0db8:0002:0000:0000:0000:0000:0050"),
    ]
    table = conntrack.parse_lines(lines).flows
    assert len(table) == len(lines)
    by_listen: dict[tuple[str, str, str], list[conntrack.Flow]] = {}
    for f in table:
        by_listen.setdefault(f.listen_key, []).append(f)
    box = facts.BoxFacts([], frozenset(), {}, [], table, by_listen=by_listen)
    for listen, backend, proto in [
        ("192.168.1.30:1234", "10.0.2.50:80", "tcp"),
        ("192.168.1.30:1234-1235", "10.0.2.50:80-81", "tcp"),
        ("192.168.1.30:1234", "10.0.2.50:80", "both"),
        ("192.168.1.30:1-65535", "10.0.2.50:1-65535", "tcp"),  # more ports than keys: a scan
        ("192.168.1.31:1234", "10.0.2.50:80", "udp"),
        ("[2001:db8:1::30]:1234", "[2001:db8:2::50]:80", "tcp"),
    ]:
        fwd = Forward.from_text(listen, backend, proto=proto, name="f", masquerade=True)
        ports = range(fwd.listen.port, fwd.listen.port_end + 1)
        want = [
            f
            for f in table
            if f.proto in fwd.protocols
            and f.orig.dst == str(fwd.listen.ip)
            and f.orig.dport in ports
        ]
        assert sorted(box.flows_for(fwd)) == sorted(want), listen
    seed = Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", name="seed", snat="10.0.2.40")
    replied, unreplied, examples = facts.evidence(seed, box.flows_for(seed))
    assert (replied, unreplied, len(examples)) == (1, 1, 1)
    assert facts.stale_flows(box.flows_for(seed)) == 1
    # /proc prints IPv6 expanded: the backend's replies are found in either form.
    six = Forward.from_text(
        "[2001:db8:1::30]:1234", "[2001:db8:2::50]:80", name="s6", masquerade=True
    )
    assert facts.evidence(six, box.flows_for(six))[:2] == (1, 0)
