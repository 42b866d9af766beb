"""The four-rule set, rendered in the canonical iptables-save form, three ways."""

from __future__ import annotations

import shlex

from natbox.model import Forward
from natbox.plan import build_plan, save_quote

SEED_RULES = [
    '-A NATBOX-PREROUTING -d 192.168.1.30/32 -p tcp -m tcp --dport 1234 -m comment --comment "natbox:web" -j DNAT --to-destination 10.0.2.50:80',
    '-A NATBOX-POSTROUTING -d 10.0.2.50/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdst 192.168.1.30 --ctorigdstport 1234 -m comment --comment "natbox:web" -j SNAT --to-source 10.0.2.40',
    '-A NATBOX-FORWARD -d 10.0.2.50/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdst 192.168.1.30 --ctorigdstport 1234 -m comment --comment "natbox:web" -j ACCEPT',
    '-A NATBOX-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED --ctproto 6 --ctorigdst 192.168.1.30 --ctorigdstport 1234 -m comment --comment "natbox:web" -j ACCEPT',
]


def seed(**kw: object) -> Forward:
    kw.setdefault("name", "web")
    kw.setdefault("snat", "10.0.2.40")
    return Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", **kw)  # type: ignore[arg-type]


def test_seed_four_rules_exactly() -> None:
    plan = build_plan(seed())
    assert [r.save_line for r in plan.rules] == SEED_RULES
    assert [r.kind for r in plan.rules] == ["dnat", "snat", "accept", "return"]


def test_restore_text_filter_first_with_setup() -> None:
    text = build_plan(seed()).restore_text()
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines[1] == "-N NATBOX-FORWARD"
    assert lines[2] == "-I FORWARD 1 -m comment --comment natbox -j NATBOX-FORWARD"
    assert lines.index("*nat") > lines.index("COMMIT")
    assert "-I PREROUTING 1 -m comment --comment natbox -j NATBOX-PREROUTING" in lines
    assert "-I POSTROUTING 1 -m comment --comment natbox -j NATBOX-POSTROUTING" in lines
    assert text.count("COMMIT") == 2 and text.endswith("COMMIT\n")


def test_restore_text_without_setup_declares_no_chain() -> None:
    # Declaring an existing chain in --noflush mode would flush it.
    text = build_plan(seed()).restore_text(setup_tables=())
    assert ":NATBOX" not in text and "-I " not in text
    assert [line for line in text.splitlines() if line.startswith("-A")] == [
        SEED_RULES[2],
        SEED_RULES[3],
        SEED_RULES[0],
        SEED_RULES[1],
    ]


def test_mss_clamp_sits_before_the_accepts() -> None:
    plan = build_plan(seed(mss_clamp=True))
    fwd_chain = [r for r in plan.rules if r.chain == "NATBOX-FORWARD"]
    assert [r.kind for r in fwd_chain] == ["mss", "accept", "return"]
    assert fwd_chain[0].save_line == (
        "-A NATBOX-FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -m conntrack --ctproto 6 "
        '--ctorigdst 192.168.1.30 --ctorigdstport 1234 -m comment --comment "natbox:web" '
        "-j TCPMSS --clamp-mss-to-pmtu"
    )


def test_both_protocols_and_sources() -> None:
    plan = build_plan(seed(proto="both", sources=["192.168.1.0/24", "172.16.0.0/12"]))
    dnats = [r.save_line for r in plan.rules if r.kind == "dnat"]
    assert len(dnats) == 4  # two protocols x two sources
    assert dnats[0].startswith("-A NATBOX-PREROUTING -s 192.168.1.0/24 -d 192.168.1.30/32 -p tcp")
    assert any("--ctproto 17" in r.save_line for r in plan.rules if r.kind == "return")
    assert sum(r.kind == "snat" for r in plan.rules) == 2


def test_port_range_maps_one_to_one() -> None:
    f = Forward.from_text(
        "192.168.1.30:1000-1010", "10.0.2.50:2000-2010", snat="10.0.2.40", name="r"
    )
    dnat = build_plan(f).rules[0].save_line
    assert dnat.endswith(
        '--dport 1000:1010 -m comment --comment "natbox:r" -j DNAT --to-destination 10.0.2.50:2000-2010/1000'
    )
    snat = build_plan(f).rules[1].save_line
    assert "--dport 2000:2010" in snat and "--ctorigdstport 1000:1010" in snat


def test_masquerade() -> None:
    f = Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", masquerade=True, name="m")
    post = [r for r in build_plan(f).rules if r.chain == "NATBOX-POSTROUTING"]
    assert post[0].kind == "masquerade" and post[0].save_line.endswith('"natbox:m" -j MASQUERADE')


def test_commands_are_copyable_shell() -> None:
    lines = build_plan(seed()).command_lines()
    assert lines[0] == "iptables -w -t filter -N NATBOX-FORWARD"
    assert (
        lines[1]
        == "iptables -w -t filter -I FORWARD 1 -m comment --comment natbox -j NATBOX-FORWARD"
    )
    dnat = next(line for line in lines if "-j DNAT" in line)
    argv = shlex.split(dnat)
    assert argv[:6] == ["iptables", "-w", "-t", "nat", "-A", "NATBOX-PREROUTING"]
    assert "natbox:web" in argv  # unquoted by the shell, one token


def test_plain_language_one_line_per_rule_plus_scope() -> None:
    plan = build_plan(seed())
    lines = plan.plain()
    assert len(lines) == len(plan.rules) + 1
    assert "192.168.1.30:1234 → 10.0.2.50:80" in lines[0]
    assert "10.0.2.40" in lines[1]
    assert lines[-1].startswith("scope")


def test_save_quote_matches_iptables() -> None:
    # Observed with iptables-save 1.8.9 (nft and legacy).
    assert save_quote("natbox") == "natbox"
    assert save_quote("a-b") == "a-b" and save_quote("a_b") == "a_b"
    assert save_quote("a.b") == '"a.b"' and save_quote("natbox:web") == '"natbox:web"'
    assert save_quote('a"b') == '"a\\"b"' and save_quote("a\\b") == '"a\\\\b"'
    assert save_quote("") == '""'


def test_local_adds_the_output_dnat_and_its_chain() -> None:
    plan = build_plan(seed(local=True, proto="both"))
    local = [r.save_line for r in plan.rules if r.kind == "local"]
    assert local == [
        '-A NATBOX-OUTPUT -d 192.168.1.30/32 -p tcp -m tcp --dport 1234 -m comment --comment "natbox:web" -j DNAT --to-destination 10.0.2.50:80',
        '-A NATBOX-OUTPUT -d 192.168.1.30/32 -p udp -m udp --dport 1234 -m comment --comment "natbox:web" -j DNAT --to-destination 10.0.2.50:80',
    ]
    text = plan.restore_text()
    assert "-N NATBOX-OUTPUT" in text
    assert "-I OUTPUT 1 -m comment --comment natbox -j NATBOX-OUTPUT" in text
    assert "NATBOX-OUTPUT" not in build_plan(seed()).restore_text(), "created only when needed"
