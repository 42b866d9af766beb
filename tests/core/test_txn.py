"""Transaction building blocks: what apply and remove would commit, and how it is undone."""

from __future__ import annotations

from pathlib import Path

import pytest

from natbox.backends import Backend
from natbox.errors import BackendError, ConflictError
from natbox.model import Forward
from natbox.plan import build_plan
from natbox.ruleset import parse_save
from natbox.txn import _commit_all, apply_lines, conflicts, inverse_lines, remove_lines

FIX = Path(__file__).parent / "fixtures"
WEB = Forward.from_text(
    "192.168.1.30:1234", "10.0.2.50:80", name="web", snat="10.0.2.40", mss_clamp=True
)


def fixture_rs():  # type: ignore[no-untyped-def]
    return parse_save((FIX / "nft-foreign-and-natbox.save").read_text())


def test_apply_lines_on_empty_box_create_chains_and_jumps() -> None:
    lines = apply_lines(parse_save(""), build_plan(WEB))
    assert list(lines) == ["filter", "nat"]
    assert lines["filter"][:2] == [
        "-N NATBOX-FORWARD",
        "-I FORWARD 1 -m comment --comment natbox -j NATBOX-FORWARD",
    ]
    assert lines["nat"][:4] == [
        "-N NATBOX-PREROUTING",
        "-I PREROUTING 1 -m comment --comment natbox -j NATBOX-PREROUTING",
        "-N NATBOX-POSTROUTING",
        "-I POSTROUTING 1 -m comment --comment natbox -j NATBOX-POSTROUTING",
    ]


def test_apply_lines_when_chains_exist_only_append() -> None:
    other = Forward.from_text("192.168.1.30:8080", "10.0.2.50:8080", name="alt", snat="10.0.2.40")
    lines = apply_lines(fixture_rs(), build_plan(other))
    assert all(line.startswith("-A NATBOX-") for t in lines.values() for line in t)


def test_inverse_of_apply_deletes_in_reverse() -> None:
    lines = apply_lines(parse_save(""), build_plan(WEB))["filter"]
    inv = inverse_lines(lines)
    assert inv[-1] == "-X NATBOX-FORWARD"
    assert inv[-2] == "-D FORWARD -m comment --comment natbox -j NATBOX-FORWARD"
    assert inv[0].startswith("-D NATBOX-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED")


def test_remove_lines_keep_chains_while_another_forward_lives() -> None:
    per_table = remove_lines(fixture_rs(), "web")
    assert all(line.startswith("-D NATBOX-") for t in per_table.values() for line in t)
    assert list(per_table) == ["nat", "filter"]  # DNAT goes before its accept
    assert sum(len(v) for v in per_table.values()) == 5  # dnat, snat, mss, accept, return


def test_remove_last_forward_drops_chains_and_replays_in_order() -> None:
    rs = fixture_rs()
    for name in ("dns",):
        for table, lines in remove_lines(rs, name).items():
            assert "-X" not in " ".join(lines), table
    text = (FIX / "nft-foreign-and-natbox.save").read_text()
    only_web = "".join(line + "\n" for line in text.splitlines() if '"natbox:dns"' not in line)
    per_table = remove_lines(parse_save(only_web), "web")
    assert per_table["filter"][-2:] == [
        "-D FORWARD -m comment --comment natbox -j NATBOX-FORWARD",
        "-X NATBOX-FORWARD",
    ]
    replay = inverse_lines(per_table["filter"])
    assert replay[0] == "-N NATBOX-FORWARD"
    assert replay[1] == "-I FORWARD 1 -m comment --comment natbox -j NATBOX-FORWARD"
    assert [line[3:] for line in replay[2:]] == [line[3:] for line in per_table["filter"][:-2]]


def test_remove_unknown_is_empty() -> None:
    assert remove_lines(fixture_rs(), "nope") == {}


@pytest.mark.parametrize(
    ("listen", "proto", "name", "message"),
    [
        ("192.168.1.30:1234", "tcp", "x", "already forwarded by web"),
        ("192.168.1.30:1200-1300", "both", "x", "already forwarded by web"),
        ("192.168.1.30:5353", "udp", "x", "already forwarded by dns"),
        ("192.168.1.30:9", "tcp", "web", "a forward named web already exists"),
    ],
)
def test_conflicts(listen: str, proto: str, name: str, message: str) -> None:
    fwd = Forward.from_text(listen, "10.0.2.99:80", proto=proto, name=name, snat="10.0.2.40")
    with pytest.raises(ConflictError) as info:
        conflicts(fixture_rs(), fwd)
    assert message in info.value.message


def test_no_conflict_other_proto_or_port() -> None:
    conflicts(
        fixture_rs(),
        Forward.from_text(
            "192.168.1.30:1234", "10.0.2.9:80", proto="udp", name="u", snat="10.0.2.40"
        ),
    )
    conflicts(
        fixture_rs(),
        Forward.from_text("192.168.1.30:5353", "10.0.2.9:80", name="t", snat="10.0.2.40"),
    )


class FlakyBackend(Backend):
    """Commits succeed until the named table, which fails; records every commit."""

    name = "flaky"

    def __init__(self, fail_on: str) -> None:
        super().__init__("nft")
        self.fail_on = fail_on
        self.commits: list[tuple[str, list[str]]] = []

    def validate(self, per_table: dict[str, list[str]]) -> None:
        pass

    def commit(self, table: str, lines: list[str]) -> None:
        self.commits.append((table, lines))
        if table == self.fail_on and not lines[0].startswith("-D"):
            raise BackendError(f"kernel said no to {table}", "")


def test_second_table_failure_undoes_the_first() -> None:
    per_table = apply_lines(parse_save(""), build_plan(WEB))
    backend = FlakyBackend("nat")
    with pytest.raises(BackendError) as info:
        _commit_all(backend, per_table, ("filter", "nat"))
    assert [t for t, _ in backend.commits] == ["filter", "nat", "filter"]
    assert backend.commits[2][1] == inverse_lines(per_table["filter"])
    assert info.value.hint == "the filter table was undone: nothing changed"
