"""Parsing real iptables-save dumps (made by tests/fixtures/make_fixtures.sh) and reading forwards back."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from natbox.errors import NatboxError
from natbox.model import Forward, Ruleset
from natbox.plan import build_plan
from natbox.ruleset import (
    classify_owner,
    forward_states,
    parse_save,
    rule_comment,
    shown_lines,
    tampering,
)
from natbox.status import WATCHED, _chains, _forward_dict, _rule_dict, foreign_rules

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(params=["nft", "legacy"])
def dump(request: pytest.FixtureRequest) -> str:
    return (FIX / f"{request.param}-foreign-and-natbox.save").read_text()


def test_tables_chains_policies(dump: str) -> None:
    rs = parse_save(dump)
    assert set(rs.tables) == {"filter", "nat"}
    fwd = rs.chain("filter", "FORWARD")
    assert fwd is not None and fwd.policy == "DROP" and fwd.builtin
    docker_user = rs.chain("filter", "DOCKER-USER")
    assert docker_user is not None and docker_user.policy is None
    # natbox's jump is first in FORWARD, before kube's and Docker's.
    assert fwd.rules[0].text == "-A FORWARD -m comment --comment natbox -j NATBOX-FORWARD"
    assert fwd.rules[0].owner == "natbox"


def test_owners(dump: str) -> None:
    rs = parse_save(dump)
    owners = {r.owner for r in rs.rules()}
    assert {"natbox", "natbox:web", "natbox:dns", "docker", "kube", "other"} <= owners
    hand = [r for r in rs.rules() if "hand made: ssh" in r.text]
    assert len(hand) == 1 and hand[0].owner == "other"
    assert rule_comment(hand[0].text) == "hand made: ssh to the dmz"


def test_warning_line_is_kept() -> None:
    rs = parse_save((FIX / "nft-foreign-and-natbox.save").read_text())
    assert any("iptables-legacy tables present" in w for w in rs.warnings)


def test_verbatim_text_rerenders_byte_exactly(dump: str) -> None:
    rs = parse_save(dump)
    rule_lines = [line.split(" ", 1)[1] for line in dump.splitlines() if line.startswith("[")]
    assert [r.text for r in rs.rules()] == rule_lines


def test_forwards_reconstructed_and_intact(dump: str) -> None:
    states = {s.name: s for s in forward_states(parse_save(dump))}
    assert set(states) == {"web", "dns"}
    web, dns = states["web"], states["dns"]
    assert web.intact and dns.intact, (web.problems, dns.problems)
    assert web.forward == Forward.from_text(
        "192.168.1.30:1234", "10.0.2.50:80", name="web", snat="10.0.2.40", mss_clamp=True
    )
    assert dns.forward is not None and dns.forward.proto == "udp"
    assert [n.with_prefixlen for n in dns.forward.sources] == ["192.168.1.0/24"]


def test_tampered_forward_is_reported() -> None:
    dump = (FIX / "nft-foreign-and-natbox.save").read_text()
    snat_line = next(line for line in dump.splitlines() if '"natbox:web" -j SNAT' in line)
    states = {s.name: s for s in forward_states(parse_save(dump.replace(snat_line + "\n", "")))}
    assert not states["web"].intact
    assert len(states["web"].problems) == 1 and "no SNAT source" in states["web"].problems[0]
    assert states["dns"].intact


def test_counters_are_read() -> None:
    text = "*nat\n:PREROUTING ACCEPT [7:420]\n[3:180] -A PREROUTING -j ACCEPT\nCOMMIT\n"
    rs = parse_save(text)
    chain = rs.chain("nat", "PREROUTING")
    assert chain is not None and (chain.packets, chain.bytes) == (7, 420)
    assert (chain.rules[0].packets, chain.rules[0].bytes) == (3, 180)


def test_kube_at_scale() -> None:
    rs = parse_save((FIX / "nft-kube-scale.save").read_text())
    kube = [r for r in rs.rules("nat") if r.owner == "kube"]
    assert len(kube) >= 1500
    assert forward_states(rs)  # natbox's forwards still found among the crowd


def test_plan_equals_its_parse() -> None:
    fwd = Forward.from_text(
        "192.168.1.30:1000-1010",
        "10.0.2.50:2000-2010",
        proto="both",
        name="r",
        masquerade=True,
        sources=["10.9.0.0/16"],
    )
    plan = build_plan(fwd)
    text = "".join(
        f"*{t}\n" + "".join(r.save_line + "\n" for r in plan.table_rules(t)) + "COMMIT\n"
        for t in ("filter", "nat")
    )
    (state,) = forward_states(parse_save(text))
    assert state.intact and state.forward == fwd


@pytest.mark.parametrize("bad", ["-A FORWARD -j ACCEPT\n", "*nat\nnonsense\nCOMMIT\n"])
def test_garbage_is_one_clear_error(bad: str) -> None:
    with pytest.raises(NatboxError) as info:
        parse_save(bad)
    assert "iptables-save line" in info.value.message


@pytest.mark.parametrize(
    ("chain", "text", "owner"),
    [
        ("FORWARD", "-A FORWARD -j DOCKER-USER", "docker"),
        ("DOCKER", "-A DOCKER -j RETURN", "docker"),
        ("KUBE-SERVICES", "-A KUBE-SERVICES -j ACCEPT", "kube"),
        ("FORWARD", "-A FORWARD -m comment --comment natbox -j NATBOX-FORWARD", "natbox"),
        # natbox's jumps are exactly these: one from INPUT or with a match is a look-alike.
        ("INPUT", "-A INPUT -m comment --comment natbox -j NATBOX-FORWARD", "forged"),
        ("FORWARD", "-A FORWARD -i lo -m comment --comment natbox -j NATBOX-FORWARD", "forged"),
        (
            "NATBOX-FORWARD",
            '-A NATBOX-FORWARD -m comment --comment "natbox:x" -j ACCEPT',
            "natbox:x",
        ),
        # A natbox tag where natbox never writes one is a look-alike, never a forward's rule.
        ("INPUT", '-A INPUT -m comment --comment "natbox:x" -j ACCEPT', "forged"),
        (
            "FORWARD",
            "-A FORWARD -s 172.16.9.9/32 -m comment --comment natbox:web -j DROP",
            "forged",
        ),
        ("FORWARD", "-A FORWARD -m comment --comment natbox -j DROP", "forged"),
        ("INPUT", '-A INPUT -m comment --comment "natboxer" -j ACCEPT', "other"),
        ("INPUT", "-A INPUT -p tcp -j ACCEPT", "other"),
    ],
)
def test_classify_owner(chain: str, text: str, owner: str) -> None:
    assert classify_owner(chain, text) == owner


def test_local_forward_reads_back() -> None:
    fwd = Forward.from_text(
        "192.168.1.30:1234", "10.0.2.50:80", name="l", snat="10.0.2.40", local=True
    )
    plan = build_plan(fwd)
    text = "".join(
        f"*{t}\n" + "".join(r.save_line + "\n" for r in plan.table_rules(t)) + "COMMIT\n"
        for t in ("filter", "nat")
    )
    (state,) = forward_states(parse_save(text))
    assert state.intact and state.forward == fwd and state.forward.local


def test_forwards_are_grouped_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """#18: reading 1,000 forwards visits each rule once, not once per forward (was quadratic)."""
    from benchmarks.boxes import forwards, save_text
    from natbox.model import Ruleset

    rs = parse_save(save_text(forwards(1000)))
    total = sum(1 for _ in rs.rules())
    visits = 0
    real_rules = Ruleset.rules

    def counting_rules(self: Ruleset, table: str | None = None):  # type: ignore[no-untyped-def]
        nonlocal visits
        for rule in real_rules(self, table):
            visits += 1
            yield rule

    monkeypatch.setattr(Ruleset, "rules", counting_rules)
    states = forward_states(rs)
    assert len(states) == 1000 and all(s.intact for s in states)
    assert total == 4000 + 3  # four rules a forward, three jumps
    assert visits <= total
    visits = 0
    rs.forward_names()
    rs.forward_rules("fwd-7")  # what remove and the read-back proof ask: one pass each
    assert visits <= 2 * total


def test_conflicts_do_not_rebuild_every_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """#18: `add` checks its listen address against 1,000 forwards without planning each of them."""
    import natbox.ruleset as ruleset_module
    from benchmarks.boxes import forwards, save_text
    from natbox.errors import ConflictError
    from natbox.ruleset import conflicts

    rs = parse_save(save_text(forwards(1000)))
    planned = 0

    def counting_plan(fwd: Forward):  # type: ignore[no-untyped-def]
        nonlocal planned
        planned += 1
        return build_plan(fwd)

    monkeypatch.setattr(ruleset_module, "build_plan", counting_plan)
    new = Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", snat="10.0.2.40", name="new")
    conflicts(rs, new)  # free: no error
    taken = Forward.from_text("192.168.1.30:20999", "10.0.2.50:80", snat="10.0.2.40", name="x")
    with pytest.raises(ConflictError, match="already forwarded by fwd-999"):
        conflicts(rs, taken)
    assert planned == 0


def _shown(rs: Ruleset) -> object:
    """Everything `natbox list` prints from one family's ruleset (status.snapshot's parts)."""
    states = forward_states(rs)
    return (
        [(t, c, ch.policy) for t, cs in WATCHED.items() for c in cs if (ch := rs.chain(t, c))],
        _chains(rs, 4),
        [_forward_dict(s) for s in states],
        [_rule_dict(r) for r in foreign_rules(rs)],
        tampering(rs, states),
        rs.warnings,
        rs.incompatible,
    )


# What imitates or intrudes on natbox, anywhere: a forged tag in a kube chain and in mangle, a
# foreign jump into natbox's chain, a foreign rule inside it, a look-alike jump, a rule with no
# spec in a watched chain, a table iptables cannot show.
_INTRUDERS = {
    "*nat\n": "*nat\n:KUBE-X - [0:0]\n",
    "[0:0] -A NATBOX-PREROUTING -d 192.168.1.30/32 -p tcp": (
        '[0:0] -A KUBE-X -p tcp -m comment --comment "natbox:web" -j DNAT --to-destination 1.2.3.4\n'
        "[0:0] -A KUBE-X -j NATBOX-PREROUTING\n"
        "[0:0] -A NATBOX-PREROUTING -j RETURN\n"
        "[5:300] -A OUTPUT\n"
        "[0:0] -A OUTPUT -m comment --comment natbox -j NATBOX-PREROUTING\n"
        "[0:0] -A NATBOX-PREROUTING -d 192.168.1.30/32 -p tcp"
    ),
    "COMMIT\n": (
        "COMMIT\n# Table `mangle' is incompatible, use 'nft' tool.\n*mangle\n:PREROUTING ACCEPT [0:0]\n"
        "[0:0] -A PREROUTING -m comment --comment natbox -j MARK --set-mark 1\nCOMMIT\n"
    ),
}


@pytest.mark.parametrize(
    "name", ["nft-foreign-and-natbox", "legacy-foreign-and-natbox", "nft-kube-scale", "intruders"]
)
def test_listing_parse_shows_what_the_full_parse_shows(name: str) -> None:
    """`natbox list` parses only natbox's lines and the watched chains: it must print exactly what
    the whole ruleset would have given, warnings about intruders included."""
    if name == "intruders":
        text = (FIX / "nft-foreign-and-natbox.save").read_text()
        for old, new in _INTRUDERS.items():
            assert old in text
            text = text.replace(old, new, 1)
    else:
        text = (FIX / f"{name}.save").read_text()
    full, listing = parse_save(text), parse_save(text, natbox_only=True, keep=WATCHED)
    assert _shown(listing) == _shown(full)
    assert len(list(listing.rules())) < len(list(full.rules()))
    # natbox.prefetch keeps only shown_lines() of the save while it streams: the same listing.
    lines = list(shown_lines(text.splitlines(keepends=True), WATCHED))
    streamed = parse_save("".join(lines), natbox_only=True, keep=WATCHED)
    assert _shown(streamed) == _shown(listing) and streamed.warnings == listing.warnings
    assert len(lines) < len(text.splitlines())
    if name == "intruders":
        warnings = tampering(full)
        assert len(warnings) == 6, warnings
        assert any("OUTPUT" == r.text.split()[-1] for r in foreign_rules(full))


def test_a_line_break_inside_a_comment_never_makes_a_rule() -> None:
    """iptables-save prints a comment's form feed (or \\x1c, \\x85, \\u2028) as it is: only "\\n" ends
    a line, or a comment could forge a rule, a natbox tag or a COMMIT (both parses agree)."""
    text = (
        "*filter\n:FORWARD ACCEPT [0:0]\n:KUBE-X - [0:0]\n"
        '-A KUBE-X -m comment --comment "a\x0c-A FORWARD -j ACCEPT\x1cCOMMIT" -j RETURN\n'
        "COMMIT\n"
    )
    for rs in (
        parse_save(text),
        parse_save(text, natbox_only=True, keep=WATCHED),
        # as natbox.prefetch reads the save's pipe: lines end at "\n" only
        parse_save("".join(shown_lines(io.StringIO(text, newline=""), WATCHED))),
    ):
        forward = rs.chain("filter", "FORWARD")
        assert forward is not None and forward.rules == []
    (rule,) = parse_save(text).rules("filter")
    assert rule.chain == "KUBE-X" and "\x0c" in rule.text
