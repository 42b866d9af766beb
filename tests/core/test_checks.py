"""The diagnosis as pure functions: each check fires on its broken fact and stays quiet when healthy."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from natbox.checks import Facts, diagnose, exit_code, preflight, raise_if_blocked
from natbox.errors import NatboxError
from natbox.model import Forward
from natbox.ruleset import parse_save
from natbox.system import Route

FIX = Path(__file__).parent / "fixtures"
LOCAL = {IPv4Address("192.168.1.30"): "lan0", IPv4Address("10.0.2.40"): "dmz0"}
ROUTE = Route(IPv4Address("10.0.2.50"), "dmz0", IPv4Address("10.0.2.40"), None)
EMPTY = parse_save(
    "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"
)


def seed(**kw: object) -> Forward:
    kw.setdefault("snat", "10.0.2.40")
    return Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", **kw)  # type: ignore[arg-type]


def healthy(**kw: object) -> Facts:
    base: dict[str, object] = {
        "ip_forward": True,
        "local": LOCAL,
        "route": ROUTE,
        "mtus": {"lan0": 1500, "dmz0": 1500},
        "backend_answers": True,
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def ids(findings: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {f.id: f.severity for f in findings}


def test_healthy_is_silent() -> None:
    assert {k: v for k, v in ids(preflight(seed(), EMPTY, healthy())).items() if v != "info"} == {}
    assert exit_code(preflight(seed(), EMPTY, healthy())) == 0


@pytest.mark.parametrize(
    ("fwd_kw", "facts_kw", "expected"),
    [
        ({}, {"ip_forward": False}, ("ip-forward-off", "warning")),
        ({}, {"local": {IPv4Address("10.0.2.40"): "dmz0"}}, ("listen-not-local", "warning")),
        (
            {},
            {"listeners": frozenset({("0.0.0.0", 1234, "tcp")})},
            ("listen-port-in-use", "warning"),
        ),
        ({}, {"route": None, "route_error": "Network is unreachable"}, ("no-route", "error")),
        (
            {},
            {"route": Route(IPv4Address("10.0.2.50"), "lan0", IPv4Address("192.168.1.30"), None)},
            ("hairpin", "info"),
        ),
        ({"snat": "10.0.2.99"}, {}, ("snat-not-local", "error")),
        ({}, {"mtus": {"lan0": 1500, "dmz0": 1400}}, ("mtu-mismatch", "warning")),
        (
            {"sources": ["172.16.0.0/24"]},
            {"rp_filter": {"lan0": 1}, "client_routes": {"172.16.0.0/24": "dmz0"}},
            ("rp-filter-strict", "warning"),
        ),
        (
            {},
            {"backend_answers": False, "backend_error": "Connection refused"},
            ("backend-silent", "warning"),
        ),
        ({"proto": "udp"}, {"backend_answers": None}, ("backend-udp", "info")),
        (
            {},
            {"other_side": ["3 rules also sit in the legacy tables"]},
            ("both-flavours", "warning"),
        ),
        (
            {},
            {"nft_drops": ["inet firewalld/filter_FORWARD: policy drop"]},
            ("nft-forward-drop", "warning"),
        ),
        ({}, {"stale_flows": 4}, ("stale-flows", "info")),
    ],
)
def test_each_check_fires_on_its_fact(
    fwd_kw: dict[str, object], facts_kw: dict[str, object], expected: tuple[str, str]
) -> None:
    found = ids(preflight(seed(**fwd_kw), EMPTY, healthy(**facts_kw)))
    assert found.get(expected[0]) == expected[1], found


def test_local_is_pointed_to_and_silenced_by_the_option() -> None:
    assert ids(preflight(seed(), EMPTY, healthy())) == {"local-not-forwarded": "info"}
    assert ids(preflight(seed(local=True), EMPTY, healthy())) == {}


def test_mss_clamp_silences_the_mtu_check() -> None:
    assert "mtu-mismatch" not in ids(
        preflight(seed(mss_clamp=True), EMPTY, healthy(mtus={"lan0": 1500, "dmz0": 1400}))
    )


def test_ruleset_checks_on_real_dumps() -> None:
    rs = parse_save((FIX / "nft-foreign-and-natbox.save").read_text())
    found = ids(preflight(seed(), rs, healthy()))
    assert found["conflict"] == "error", "web already forwards 192.168.1.30:1234"
    assert found["forward-policy-drop"] == "info" and found["docker"] == "info"
    # An existing forward in that dump: healthy facts, no errors or warnings.
    web = Forward.from_text(
        "192.168.1.30:1234", "10.0.2.50:80", name="web", snat="10.0.2.40", mss_clamp=True
    )
    assert {
        k: v for k, v in ids(diagnose(web, rs, healthy(), existing=True)).items() if v != "info"
    } == {}


def test_drop_before_jump_and_foreign_dnat() -> None:
    text = (FIX / "nft-foreign-and-natbox.save").read_text()
    text = text.replace(
        "[0:0] -A FORWARD -m comment --comment natbox -j NATBOX-FORWARD",
        "[0:0] -A FORWARD -d 10.0.2.50/32 -j DROP\n[0:0] -A FORWARD -m comment --comment natbox -j NATBOX-FORWARD",
    )
    text = text.replace(
        "[0:0] -A PREROUTING -m comment --comment natbox -j NATBOX-PREROUTING",
        "[0:0] -A PREROUTING -d 192.168.1.30/32 -p tcp -m tcp --dport 1200:1300 -j DNAT --to-destination 10.0.2.60:80\n"
        "[0:0] -A PREROUTING -m comment --comment natbox -j NATBOX-PREROUTING",
    )
    assert text.count("DROP\n") >= 1
    rs = parse_save(text)
    web = Forward.from_text(
        "192.168.1.30:1234", "10.0.2.50:80", name="web", snat="10.0.2.40", mss_clamp=True
    )
    found = ids(diagnose(web, rs, healthy(), existing=True))
    assert found["drop-before-jump"] == "error"
    assert found["foreign-dnat"] == "error", "it sits before natbox's jump in PREROUTING"
    other = seed(name="o").__class__.from_text(
        "192.168.1.30:9999", "10.0.2.50:80", snat="10.0.2.40"
    )
    assert "foreign-dnat" not in ids(diagnose(other, rs, healthy(), existing=True))


def test_errors_block_with_the_fix_in_the_hint() -> None:
    findings = preflight(seed(), EMPTY, healthy(route=None))
    assert exit_code(findings) == 1
    with pytest.raises(NatboxError) as info:
        raise_if_blocked(findings)
    assert "no route" in info.value.message and "--force" in info.value.hint
