"""The forwards-file loader (errors name file, line and field) and the set composer's exact undo."""

from __future__ import annotations

import copy
import json
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natbox.converge import compose
from natbox.declare import _save_lines, load, simulate
from natbox.errors import NatboxError
from natbox.export import dump
from natbox.model import Forward, IPAddress
from natbox.ruleset import parse_save

FIX = Path(__file__).parent / "fixtures"
WEB = Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", name="web", snat="10.0.2.40")
DNS = Forward.from_text(
    "192.168.1.30:5353", "10.0.2.50:53", name="dns", proto="udp", masquerade=True
)
WEB6 = Forward.from_text(
    "[2001:db8:1::30]:1234", "[2001:db8:2::50]:80", name="web6", snat="2001:db8:2::40"
)


def route(ip: IPAddress) -> IPAddress | None:
    return IPv4Address("10.0.2.40") if ip.version == 4 else ip_address("2001:db8:2::40")


def err(text: str, path: str = "f.json") -> str:
    with pytest.raises(NatboxError) as exc:
        load(path, text, route=route)
    line = exc.value.one_line()
    assert "\n" not in line
    return line


def test_round_trip_json_and_toml() -> None:
    for fmt in ("json", "toml"):
        text = dump([WEB, DNS, WEB6], fmt)
        assert load("x", text, route=route).forwards == [WEB, DNS, WEB6]
    assert json.loads(dump([WEB], "json")) == {"version": 1, "forwards": [WEB.to_dict()]}


def test_saved_file_is_an_apply_file() -> None:
    saved = json.dumps({"version": 1, "forwards": [WEB.to_dict()]}, indent=2)
    assert load("/etc/natbox/forwards.json", saved).forwards == [WEB]


def test_snat_derived_from_the_route_when_missing() -> None:
    wanted = load(
        "f",
        '{"forwards": [{"name": "w", "listen": "1.2.3.4:1", "backend": "10.0.2.50:2"}]}',
        route=route,
    )
    (entry,) = wanted.entries
    assert entry.snat_derived and entry.forward.snat == IPv4Address("10.0.2.40")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"forwards": [\n {"name": "w",\n  "listen": "1.2.3.4:1",\n  "backend": "10.0.2.50:0"}]}',
            "f.json line 4: field backend: port 0 is out of range",
        ),
        (
            '{"forwards": [\n {"name": "w", "listen": "1.2.3.4:1", "backend": "10.0.2.50:2",\n  "prto": "udp"}]}',
            "f.json line 3: field prto: unknown field (hint: did you mean 'proto'?",
        ),
        (
            '{"forwards": [\n {"name": "w", "listen": "1.2.3.4:1", "backend": "10.0.2.50:2",\n  "proto": "sctp"}]}',
            "line 3: field proto: 'sctp' is not one of tcp, udp, both",
        ),
        (
            '{"forwards": [\n {"name": "w", "listen": "1.2.3.4:1", "backend": "10.0.2.50:2",\n  "sources": ["10.0.0.1/8"]}]}',
            "line 3: field sources: 10.0.0.1/8 has host bits set (hint: did you mean 10.0.0.0/8?)",
        ),
        (
            '{"forwards": [\n {"name": "w", "listen": "1.2.3.4:1", "backend": "10.0.2.50:2"},\n {"name": "w", "listen": "1.2.3.4:2", "backend": "10.0.2.50:2"}]}',
            "line 3: field name: forward w is there twice (hint: line 2 has it too)",
        ),
        (
            '{"forwards": [\n {"name": "w", "listen": "1.2.3.4:1", "backend": "[2001:db8::1]:2"}]}',
            "line 2: field backend: listen 1.2.3.4:1 and backend [2001:db8::1]:2 are not the same IP version",
        ),
        (
            '{"forwards": [\n {"name": "w", "backend": "10.0.2.50:2"}]}',
            "line 2: field listen is missing",
        ),
        (
            '{"forwards": [\n {"name": "w", "listen": 1234, "backend": "10.0.2.50:2"}]}',
            "line 2: field listen: 1234 is not a string",
        ),
        ('{"version": 2, "forwards": []}', "f.json: version 2 is not 1"),
        ('{"forwards": [}', "f.json line 1: Expecting value"),
        ('{"forwardz": []}', "f.json: unknown top-level key 'forwardz'"),
        (
            "version = 1\n[[forwards]]\nname = 'w'\nlisten = '1.2.3.4:1'\nbackend = '10.0.2.50:2'\nmss_clamp = 1\n",
            "line 6: field mss_clamp: 1 is not true or false",
        ),
        ("version = 1\n[[forwards]]\nname = 'w'\nlisten = = '1.2.3.4:1'\n", "f.json line 4:"),
        (
            '{"forwards": [\n {"name": "w", "proto": "udp", "listen": "1.2.3.4:1", "backend": "10.0.2.50:2",\n  "mss_clamp": true}]}',
            "line 3: field mss_clamp: MSS clamping applies to TCP only",
        ),
    ],
)
def test_errors_name_file_line_and_field(text: str, expected: str) -> None:
    assert expected in err(text)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_any_garbage_is_one_line_or_a_valid_set(text: str) -> None:
    try:
        load("g", text, route=route)
    except NatboxError as exc:
        assert "\n" not in exc.one_line()


def _restore(rs_text: str, remove: set[str], add: list[Forward]) -> None:
    rs = parse_save(rs_text)
    units, _repairs = compose(rs, 4, remove, add)
    assert units
    after = copy.deepcopy(rs)
    for u in units:
        simulate(after, u.table, u.lines)
    back = copy.deepcopy(after)
    for u in reversed(units):
        simulate(back, u.table, u.undo)
    tables = set(rs.tables)
    assert _save_lines(back, tables) == _save_lines(rs, tables), "the undo restores every position"


def test_undo_is_exact_for_replace_remove_and_add() -> None:
    before = (FIX / "nft-foreign-and-natbox.save").read_text()
    rs = parse_save(before)
    names = rs.forward_names()
    assert names
    changed = Forward.from_text("192.168.1.30:4321", "10.0.2.50:80", name=names[0], masquerade=True)
    _restore(before, {names[0]}, [changed, WEB.__class__(**{**WEB.__dict__, "name": "zz"})])
    _restore(before, set(names), [])


def test_moved_jump_is_repaired_and_undone_to_its_place() -> None:
    text = (FIX / "nft-foreign-and-natbox.save").read_text()
    rs = parse_save(text)
    fwd_chain = rs.chain("filter", "FORWARD")
    assert fwd_chain is not None
    jump = next(r for r in fwd_chain.rules if r.text.endswith("-j NATBOX-FORWARD"))
    fwd_chain.rules.remove(jump)
    fwd_chain.rules.insert(1, jump)
    units, repairs = compose(rs, 4, set(), [])
    assert repairs == ["iptables filter FORWARD: natbox's jump is rule 2, not first"]
    (unit,) = units
    after = copy.deepcopy(rs)
    simulate(after, "filter", unit.lines)
    chain = after.chain("filter", "FORWARD")
    assert chain is not None and chain.rules[0].text.endswith("-j NATBOX-FORWARD")
    simulate(after, "filter", unit.undo)
    assert _save_lines(after, {"filter"}) == _save_lines(rs, {"filter"})
