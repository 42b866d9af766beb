"""The diagnosis as pure functions: each check fires on its broken fact and stays quiet when healthy."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from natbox import hostshapes
from natbox.checks import Severity, diagnose, exit_code, preflight, raise_if_blocked, worst
from natbox.errors import NatboxError
from natbox.facts import Facts
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


# ---------------------------------------------------------------- path-aware checks on real host shapes


def with_natbox(foreign: str, fwd: Forward | None = None, *, first: bool = True) -> str:
    """A host's rules plus natbox's forward, its jumps first (as natbox inserts them) or last."""
    from natbox.plan import build_plan

    plan = build_plan(fwd or seed(name="web"))
    text = foreign
    for table in ("filter", "nat"):
        lines = [
            line
            for line in plan.restore_text()
            .split(f"*{table}\n", 1)[-1]
            .split("COMMIT")[0]
            .splitlines()
            if line.startswith(("-A", "-I"))
        ]
        if not lines:
            continue
        jumps = [
            ln.replace("-I ", "-A ", 1).replace(" 1 -m", " -m")
            for ln in lines
            if ln.startswith("-I")
        ]
        own = [ln for ln in lines if ln.startswith("-A")]
        chains = sorted({ln.split()[1] for ln in own})
        decl = "".join(f":{c} - [0:0]\n" for c in chains)
        if f"*{table}\n" not in text:
            text += f"*{table}\nCOMMIT\n"
        head, rest = text.split(f"*{table}\n", 1)
        body, tail = rest.split("COMMIT\n", 1)
        decls = [ln for ln in body.splitlines() if ln.startswith(":")]
        rules = [ln for ln in body.splitlines() if ln.startswith("-A")]
        builtins = [ln for ln in rules if ln.split()[1] in ("PREROUTING", "FORWARD", "POSTROUTING")]
        others = [ln for ln in rules if ln not in builtins]
        ordered = jumps + builtins if first else builtins + jumps
        text = (
            head
            + f"*{table}\n"
            + "\n".join(decls)
            + "\n"
            + decl
            + "\n".join(ordered + others + own)
            + "\nCOMMIT\n"
            + tail
        )
    return text


def test_plan_helper_builds_a_valid_ruleset() -> None:
    rs = parse_save(with_natbox(hostshapes.docker_host()))
    assert rs.chain("filter", "FORWARD").rules[0].owner == "natbox"  # type: ignore[union-attr]
    late = parse_save(with_natbox(hostshapes.docker_host(), first=False))
    assert late.chain("filter", "FORWARD").rules[0].owner == "docker"  # type: ignore[union-attr]


def test_kube_node_has_no_false_conflicts() -> None:
    rs = parse_save(hostshapes.kube_node(2000))
    assert serious(preflight(seed(), rs, healthy())) == {}
    rs = parse_save(with_natbox(hostshapes.kube_node(2000), first=False))
    web = seed(name="web")
    assert serious(diagnose(web, rs, healthy(), existing=True)) == {}, "natbox's jump after kube's"
    rs = parse_save((FIX / "nft-kube-scale.save").read_text())
    assert "foreign-dnat" not in ids(diagnose(web, rs, healthy(), existing=True))


def test_kube_nodeport_on_the_listen_port_is_found() -> None:
    rs = parse_save(hostshapes.kube_node(2000, nodeports={42: 31234}))
    fwd = Forward.from_text("192.168.1.30:31234", "10.0.2.50:80", snat="10.0.2.40")
    found = preflight(fwd, rs, healthy())
    dnat = [f for f in found if f.id == "foreign-dnat"]
    assert len(dnat) == 1 and dnat[0].severity == "warning"
    assert "KUBE-NODEPORTS" in dnat[0].examples[0] and "(kube;" in dnat[0].examples[0]
    assert len(dnat[0].examples) == 2 and dnat[0].more == 0, "one line per endpoint DNAT"


def test_docker_published_port_is_found_and_unpublished_is_clean() -> None:
    fwd = Forward.from_text("192.168.1.30:8080", "10.0.2.50:80", snat="10.0.2.40")
    found = ids(preflight(fwd, parse_save(hostshapes.docker_host(published=8080)), healthy()))
    assert found["foreign-dnat"] == "warning"
    assert serious(preflight(fwd, parse_save(hostshapes.docker_host()), healthy())) == {}


def test_unknown_matches_are_info_only() -> None:
    rs = parse_save(
        "*nat\n:PREROUTING ACCEPT [0:0]\n"
        "-A PREROUTING -m set --match-set special dst -j DNAT --to-destination 10.9.9.9\n"
        "-A PREROUTING -p tcp -m mark --mark 0x1 -m tcp --dport 1234 -j DNAT --to-destination 10.9.9.8\n"
        "-A PREROUTING -p tcp -m mark --mark 0x1 -m tcp --dport 4321 -j DNAT --to-destination 10.9.9.7\n"
        "COMMIT\n"
    )
    found = preflight(seed(), rs, healthy())
    assert ids(found) == {"foreign-dnat-maybe": "info", "local-not-forwarded": "info"}
    maybe = next(f for f in found if f.id == "foreign-dnat-maybe")
    assert len(maybe.examples) == 2 and "cannot evaluate -m set" in maybe.examples[0]
    assert exit_code(found) == 0


def test_many_causes_make_one_finding_with_five_examples() -> None:
    rules = "".join(
        f"-A HAND -p tcp -m statistic --mode nth --every 300 --packet {i} -m tcp --dport 1234 -j DNAT "
        f"--to-destination 10.0.9.{i % 250}\n"
        for i in range(300)
    )
    rs = parse_save(
        f"*nat\n:PREROUTING ACCEPT [0:0]\n:HAND - [0:0]\n-A PREROUTING -j HAND\n{rules}COMMIT\n"
    )
    found = [f for f in preflight(seed(), rs, healthy()) if f.id == "foreign-dnat"]
    assert len(found) == 1 and len(found[0].examples) == 5 and found[0].more == 295
    assert found[0].lines()[-1] == "and 295 more"
    assert found[0].to_dict()["more"] == 295
    # Rules that only send particular clients elsewhere are info, one finding too.
    rs_text = rules.replace(
        "-m statistic --mode nth --every 300 --packet", "-s 10.1.1.0/24 -m comment --comment"
    )
    assert rs_text.count("-s 10.1.1.0/24") == 300
    found = [
        f
        for f in preflight(
            seed(),
            parse_save(
                f"*nat\n:PREROUTING ACCEPT [0:0]\n:HAND - [0:0]\n-A PREROUTING -j HAND\n{rs_text}COMMIT\n"
            ),
            healthy(),
        )
        if f.id.startswith("foreign-dnat")
    ]
    assert [(f.id, f.severity, f.more) for f in found] == [
        ("foreign-dnat-some-clients", "info", 295)
    ]


@pytest.mark.parametrize(
    ("chain", "spec", "expected"),
    [
        ("DOCKER-USER", "-d 10.0.2.50/32 -j DROP", "error"),
        ("DOCKER-USER", "-d 10.9.9.9/32 -j DROP", None),
        ("DOCKER-USER", "-s 10.0.2.50/32 -p tcp -m tcp --sport 80 -j REJECT", "error"),  # replies
        ("DOCKER-USER", "-m set --match-set bad src -j DROP", "info"),
    ],
)
def test_drop_inside_a_chain_reached_before_natbox(
    chain: str, spec: str, expected: str | None
) -> None:
    host = hostshapes.docker_host().replace(
        "-A DOCKER-USER -j RETURN", f"-A {chain} {spec}\n-A DOCKER-USER -j RETURN"
    )
    rs = parse_save(with_natbox(host, first=False))
    found = diagnose(seed(name="web"), rs, healthy(), existing=True)
    drops = {f.severity for f in found if f.id in ("drop-before-jump", "drop-maybe")}
    assert drops == ({expected} if expected else set()), ids(found)
    if expected == "error":
        f = next(f for f in found if f.id == "drop-before-jump")
        assert "via FORWARD" in f.examples[0] and "(docker" in f.examples[0]
    # With natbox's jump first (as natbox inserts it), nothing is ahead.
    assert not {
        f.id
        for f in diagnose(seed(name="web"), parse_save(with_natbox(host)), healthy(), existing=True)
    } & {"drop-before-jump", "drop-maybe"}


def test_ufw_route_reject_ahead_and_kube_forward_is_harmless() -> None:
    ufw = hostshapes.ufw_host(("-d 10.0.2.50/32 -p tcp -m tcp --dport 80 -j REJECT",))
    found = diagnose(
        seed(name="web"), parse_save(with_natbox(ufw, first=False)), healthy(), existing=True
    )
    f = next(f for f in found if f.id == "drop-before-jump")
    assert "via FORWARD -> ufw-before-forward)" in f.examples[0] and "(ufw;" in f.examples[0]
    clean = diagnose(
        seed(name="web"),
        parse_save(with_natbox(hostshapes.ufw_host(), first=False)),
        healthy(),
        existing=True,
    )
    assert serious(clean) == {} and ids(clean)["forward-policy-drop"] == "info"
    kube = with_natbox(hostshapes.kube_node(50), first=False)
    assert serious(diagnose(seed(name="web"), parse_save(kube), healthy(), existing=True)) == {}


def test_foreign_snat_before_natbox() -> None:
    host = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -d 10.0.2.0/24 -j SNAT --to-source 10.0.2.77\nCOMMIT\n"
    found = ids(
        diagnose(
            seed(name="web"), parse_save(with_natbox(host, first=False)), healthy(), existing=True
        )
    )
    assert found["foreign-snat"] == "warning"
    masq = host.replace("-j SNAT --to-source 10.0.2.77", "-j MASQUERADE")
    found = ids(
        diagnose(
            seed(name="web"), parse_save(with_natbox(masq, first=False)), healthy(), existing=True
        )
    )
    assert found.get("foreign-snat-first") == "info" and "foreign-snat" not in found
    assert "foreign-snat-first" not in ids(
        diagnose(seed(name="web"), parse_save(with_natbox(masq)), healthy(), existing=True)
    )


def test_evidence_before_probes() -> None:
    silent = healthy(backend_answers=None, unreplied=3, unreplied_examples=("tcp a → b",))
    f = next(f for f in preflight(seed(), EMPTY, silent) if f.id == "backend-silent")
    assert f.severity == "warning" and "got no reply" in f.message and f.examples == ("tcp a → b",)
    answered = healthy(backend_answers=True, unreplied=2)
    f = next(f for f in preflight(seed(), EMPTY, answered) if f.id == "backend-silent")
    assert "answers this box's own connect" in f.message
    # Replied flows outweigh a failed probe; a probe OUTPUT stops is info, not blame.
    assert "backend-silent" not in ids(
        preflight(seed(), EMPTY, healthy(backend_answers=False, replied=1))
    )
    blocked = preflight(
        seed(), EMPTY, healthy(backend_answers=None, probe_blocked="OUTPUT policy is DROP")
    )
    assert ids(blocked)["probe-blocked"] == "info" and exit_code(blocked) == 0
    assert "forwarded traffic does not pass OUTPUT" in next(
        f.message for f in blocked if f.id == "probe-blocked"
    )


def test_no_route_fix_is_about_the_route() -> None:
    f = next(f for f in preflight(seed(), EMPTY, healthy(route=None)) if f.id == "no-route")
    assert "ip route add" in f.fix and "--snat does not help" in f.fix


def test_worst_and_severity_names() -> None:
    assert worst([]) is None
    assert worst(preflight(seed(), EMPTY, healthy())) is Severity.INFO
    assert worst(preflight(seed(), EMPTY, healthy(route=None))) is Severity.ERROR
    assert Severity.WARNING == "warning" and Severity.ERROR.rank < Severity.INFO.rank


def serious(found: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {k: v for k, v in ids(found).items() if v != "info"}


def test_one_rule_is_one_cause_across_directions() -> None:
    host = hostshapes.docker_host().replace(
        "-A DOCKER-USER -j RETURN",
        "-A DOCKER-USER -d 10.0.2.0/24 -j DROP\n-A DOCKER-USER -j RETURN",
    )
    found = ids(
        diagnose(
            seed(name="web"), parse_save(with_natbox(host, first=False)), healthy(), existing=True
        )
    )
    assert found["drop-before-jump"] == "error" and "drop-some-clients" not in found


def test_foreign_dnat_before_natbox_jump_is_an_error_behind_it_a_warning() -> None:
    fwd = Forward.from_text("192.168.1.30:8080", "10.0.2.50:80", snat="10.0.2.40")
    late = parse_save(with_natbox(hostshapes.docker_host(published=8080), first=False))
    f = next(f for f in preflight(fwd, late, healthy()) if f.id == "foreign-dnat")
    assert f.severity == "error" and "before natbox's jump" in f.message
    early = parse_save(with_natbox(hostshapes.docker_host(published=8080)))
    f = next(f for f in preflight(fwd, early, healthy()) if f.id == "foreign-dnat")
    assert f.severity == "warning" and "would hide it" in f.message and "(docker)" in f.message
