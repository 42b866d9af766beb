"""Path-aware rule analysis on real dumps and generated kube/Docker/ufw hosts."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest

from natbox import hostshapes
from natbox.model import Forward
from natbox.pathmatch import Match, Packet, parse_rule, verdict, walk
from natbox.ruleset import parse_save

FIX = Path(__file__).parent / "fixtures"
FWD = Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", snat="10.0.2.40")


def pkt(port: int = 1234, **kw: object) -> Packet:
    base: dict[str, object] = {
        "proto": "tcp",
        "dst": (ip_network("192.168.1.30/32"),),
        "dport": (port, port),
        "iif": "lan0",
        "dst_local": True,
    }
    base.update(kw)
    return Packet(**base)  # type: ignore[arg-type]


def m(spec: str, p: Packet | None = None) -> Match:
    return parse_rule(f"-A X {spec}").evaluate(p or pkt())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("-d 192.168.1.30/32 -j DNAT", Match.ALL),
        ("-d 192.168.1.0/24 -j DNAT", Match.ALL),
        ("! -d 192.168.1.30/32 -j DNAT", Match.NONE),
        ("-d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j X", Match.NONE),
        ("-s 10.0.0.0/8 -j DROP", Match.SOME),
        ("-p udp -j DROP", Match.NONE),
        ("-p tcp -m tcp --dport 1200:1300 -j DNAT", Match.ALL),
        ("-p tcp -m tcp ! --dport 1234 -j DNAT", Match.NONE),
        ("-p tcp -m multiport --dports 22,1000:1300 -j DNAT", Match.ALL),
        ("-p tcp -m multiport --dports 22,80 -j DNAT", Match.NONE),
        ("-i docker0 -j RETURN", Match.NONE),
        ("! -i docker0 -p tcp -m tcp --dport 1234 -j DNAT", Match.ALL),
        ("-i lan+ -j DROP", Match.ALL),
        ("-m addrtype --dst-type LOCAL -j DOCKER", Match.ALL),
        ("-m addrtype ! --dst-type LOCAL -j DOCKER", Match.NONE),
        ("-m conntrack --ctstate INVALID -j DROP", Match.NONE),
        ("-m conntrack --ctstate NEW -j DROP", Match.ALL),
        ("-m set --match-set blocked dst -j DNAT", Match.MAYBE),
        ("-m mark --mark 0x4000/0x4000 -j ACCEPT", Match.MAYBE),
        ("-m recent --rcheck --seconds 60 --name x -j DROP", Match.MAYBE),
        ('-m comment --comment "a -d 1.2.3.4 comment" -j DROP', Match.ALL),
        ("-m statistic --mode random --probability 0.5 -j X", Match.SOME),
        ("-m physdev --physdev-is-bridged -j ACCEPT", Match.MAYBE),
    ],
)
def test_rule_matches(spec: str, expected: Match) -> None:
    assert m(spec) is expected


def test_port_range_partly_covered_is_some() -> None:
    wide = pkt(dport=(1230, 1240))
    assert m("-p tcp -m tcp --dport 1234 -j DNAT", wide) is Match.SOME
    assert m("-p tcp -m tcp --dport 1000:2000 -j DNAT", wide) is Match.ALL


def test_clients_limited_by_from() -> None:
    lan = pkt(src=(ip_network("192.168.1.0/24"),))
    assert m("-s 10.0.0.0/8 -j DNAT", lan) is Match.NONE
    assert m("-s 192.168.0.0/16 -j DNAT", lan) is Match.ALL


def test_kube_fixture_dnats_are_behind_cluster_ips() -> None:
    rs = parse_save((FIX / "nft-kube-scale.save").read_text())
    dnats = [h for h in walk(rs, "nat", "PREROUTING", pkt()) if h.target == "DNAT"]
    assert [h.rule.chain for h in dnats] == ["NATBOX-PREROUTING"], "only natbox's own DNAT"
    # A cluster IP does reach its endpoints, through both statistic branches.
    svc = pkt(80, dst=(ip_network("10.96.0.5/32"),), dst_local=False)
    reached = [h.rule.chain for h in walk(rs, "nat", "PREROUTING", svc) if h.target == "DNAT"]
    assert reached == ["KUBE-SEP-0000000000000005A", "KUBE-SEP-0000000000000005B"]


def test_generated_kube_node_nodeport_is_found() -> None:
    rs = parse_save(hostshapes.kube_node(2000, nodeports={7: 31234}))
    assert not [h for h in walk(rs, "nat", "PREROUTING", pkt()) if h.target == "DNAT"]
    hits = [h for h in walk(rs, "nat", "PREROUTING", pkt(31234)) if h.target == "DNAT"]
    assert {h.match for h in hits} == {Match.SOME, Match.ALL}
    assert hits[0].path == (
        "PREROUTING -> KUBE-SERVICES -> KUBE-NODEPORTS -> KUBE-EXT-0000000000000007 -> "
        "KUBE-SVC-0000000000000007 -> KUBE-SEP-000000000000007A"
    )
    # From another box's address (not LOCAL), the NodePort does not apply.
    remote = pkt(31234, dst=(ip_network("192.168.1.99/32"),), dst_local=False)
    assert not [h for h in walk(rs, "nat", "PREROUTING", remote) if h.target == "DNAT"]


def test_docker_published_port() -> None:
    rs = parse_save(hostshapes.docker_host(published=1234))
    hits = [h for h in walk(rs, "nat", "PREROUTING", pkt()) if h.target == "DNAT"]
    assert len(hits) == 1 and hits[0].match is Match.ALL and hits[0].path == "PREROUTING -> DOCKER"
    assert not [h for h in walk(rs, "nat", "PREROUTING", pkt(4321)) if h.target == "DNAT"]


def test_output_policy_drop_stops_the_probe() -> None:
    rs = parse_save(hostshapes.restrictive_output())
    probe = Packet(
        "tcp", dst=(ip_network("10.0.2.50/32"),), dport=(80, 80), oif="dmz0", src_local=True
    )
    v = verdict(rs, "filter", "OUTPUT", probe)
    assert v.verdict == "DROP" and v.decided_by is None
    dns = probe.with_(proto="udp", dport=(53, 53))
    assert verdict(rs, "filter", "OUTPUT", dns).verdict == "ACCEPT"


def test_return_and_goto() -> None:
    rs = parse_save(
        "*filter\n:FORWARD ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n"
        "-A FORWARD -j A\n-A FORWARD -g B\n-A FORWARD -j DROP\n"
        "-A A -j RETURN\n-A A -j DROP\n-A B -p udp -j DROP\nCOMMIT\n"
    )
    hits = [(h.rule.chain, h.target) for h in walk(rs, "filter", "FORWARD", pkt())]
    # A returns at once (its DROP is never met); the goto to B does not come back to FORWARD.
    assert hits == [("FORWARD", "A"), ("A", "RETURN"), ("FORWARD", "B")]


def test_address_matching_agrees_with_the_ipaddress_module() -> None:
    """-s/-d are matched by integer spans (fast at kube-proxy's thousands of rules): on random
    networks and packets, the answer is what ipaddress's subnet_of/overlaps say it must be."""
    import ipaddress
    import random

    from natbox.pathmatch import Match, _net, _nets_match, _span

    rng = random.Random(7)

    def net4() -> str:
        addr = ipaddress.IPv4Address(rng.choice([0x0A000000, 0xC0A80100]) + rng.randrange(1 << 12))
        bits = rng.choice([0, 8, 16, 20, 24, 28, 30, 31, 32])
        return f"{addr}/{bits}" if rng.random() < 0.8 else str(addr)

    def oracle(have: tuple[ipaddress.IPv4Network, ...] | None, rule: str) -> Match:
        net = ipaddress.ip_network(rule, strict=False)
        if net.prefixlen == 0:
            return Match.ALL if not have or any(n.version == 4 for n in have) else Match.NONE
        if have is None:
            return Match.SOME
        inside = sum(1 for n in have if n.subnet_of(net))
        if any(n.overlaps(net) and not n.subnet_of(net) for n in have):
            return Match.SOME
        if inside and inside < len(have):
            return Match.SOME
        return Match.ALL if inside else Match.NONE

    seen = set()
    for _ in range(3000):
        rule = net4()
        have = (
            None
            if rng.random() < 0.05
            else tuple(ipaddress.ip_network(net4(), strict=False) for _ in range(rng.randrange(3)))
        )
        spans = None if have is None else tuple(_span(n) for n in have)
        got = _nets_match(spans, _net(rule))
        assert got is oracle(have, rule), (have, rule)
        seen.add(got)
    assert seen == {Match.ALL, Match.SOME, Match.NONE}
    v6 = (_span(ipaddress.ip_network("2001:db8::/64")),)
    assert _nets_match(v6, _net("2001:db8::/32")) is Match.ALL
    assert _nets_match(v6, _net("10.0.0.0/8")) is Match.NONE
    assert _nets_match(v6, _net("::/0")) is Match.ALL
    for bad in ("10.0.0.256/8", "10.0.0.1/33", "nonsense"):
        with pytest.raises(ValueError):
            _net(bad)
