"""edit, disable and enable as converge transactions, on an in-memory kernel: exactly the forward's
rules change, foreign rules and other forwards stay, a crash at every point leaves the state before or
after (never neither, never both), the confirm window's rollback restores the old forward, the saved
entry follows a kept edit, and bad input is refused before anything is read."""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
from collections.abc import Collection, Iterator
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path
from types import SimpleNamespace

import pytest

from natbox import converge, declare, disabled, journal, modify, persist, txn
from natbox.backends import Backend
from natbox.errors import BackendError, ConflictError, NatboxError, ValidationError
from natbox.model import Chain, Forward, IPAddress, Rule, Ruleset, Table, parse_ip
from natbox.paths import StateFileError
from natbox.ruleset import forward_states, parse_save
from natbox.runner import RecordingRunner

FOREIGN = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -s 192.168.1.0/24 -p tcp -m tcp --dport 22 -m comment --comment "hand made" -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 10.0.2.0/24 -o lan0 -m comment --comment "hand made masquerade" -j MASQUERADE
COMMIT
"""
EMPTY6 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
"""
WEB = Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", name="web", snat="10.0.2.40")
DNS = Forward.from_text(
    "192.168.1.30:5353", "10.0.2.50:53", proto="udp", name="dns", snat="10.0.2.40"
)


def dump(rs: Ruleset) -> str:
    """iptables-save text of a ruleset."""
    out: list[str] = []
    for t in rs.tables.values():
        out.append(f"*{t.name}")
        out.extend(f":{c.name} {c.policy or '-'} [0:0]" for c in t.chains.values())
        out.extend(r.text for c in t.chains.values() for r in c.rules)
        out.append("COMMIT")
    return "".join(line + "\n" for line in out)


def restore(rs: Ruleset, table: str, lines: list[str]) -> None:
    """iptables-restore --noflush on a parsed ruleset, as strict as the kernel: deleting a rule that
    is not there, creating a chain that is, or dropping a chain that is not empty fails."""
    t = rs.tables.setdefault(table, Table(table))
    for line in lines:
        op, _, rest = line.partition(" ")
        name, _, spec = rest.partition(" ")
        if op == "-N":
            if name in t.chains:
                raise BackendError(f"chain {name} already exists", "")
            t.chains[name] = Chain(name)
            continue
        chain = t.chains.get(name)
        if chain is None:
            raise BackendError(f"no chain {name}", "")
        if op == "-X":
            if chain.rules:
                raise BackendError(f"chain {name} is not empty", "")
            del t.chains[name]
        elif op == "-A":
            chain.rules.append(Rule(table, name, f"-A {name} {spec}"))
        elif op == "-I":
            pos, body = spec.split(" ", 1)
            chain.rules.insert(int(pos) - 1, Rule(table, name, f"-A {name} {body}"))
        elif op == "-D":
            texts = [r.text for r in chain.rules]
            if f"-A {name} {spec}" not in texts:
                raise BackendError(f"no such rule: {line}", "")
            del chain.rules[texts.index(f"-A {name} {spec}")]
        else:
            raise BackendError(f"unknown line {line}", "")


class MemoryBackend(Backend):
    """A kernel in memory, one iptables-save text per IP version; each commit is atomic per table."""

    name = "memory"

    def __init__(self) -> None:
        super().__init__("legacy", RecordingRunner())
        self.kernel: dict[int, str] = {4: FOREIGN, 6: EMPTY6}
        self.refuse: int | None = None
        """Refuse the commit with this index in `commits` (a kernel may refuse a table)."""
        self.commits: list[tuple[int, str, list[str]]] = []

    def read(self, natbox_only: bool = False) -> Ruleset:
        return parse_save(self.kernel[self.family], natbox_only)

    def read_chains(
        self, wanted: dict[str, list[str]], known: Collection[str] = frozenset()
    ) -> Ruleset:
        return self.read(natbox_only=True)

    def validate(self, per_table: dict[str, list[str]]) -> None:
        pass

    def commit(self, table: str, lines: list[str]) -> None:
        self.commits.append((self.family, table, list(lines)))
        if self.refuse == len(self.commits) - 1:
            raise BackendError(f"the kernel refused the {table} table", "")
        rs = parse_save(self.kernel[self.family])
        restore(rs, table, lines)  # raises before anything is kept: one transaction
        self.kernel[self.family] = dump(rs)


class Crash(BaseException):
    """natbox killed at a fault point: no handler of natbox's runs after it (see crash())."""


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryBackend]:
    conf, state = tmp_path / "etc", tmp_path / "state"
    conf.mkdir(mode=0o755)
    state.mkdir(mode=0o700)
    monkeypatch.setenv("NATBOX_CONFIG_DIR", str(conf))
    monkeypatch.setenv("NATBOX_STATE_DIR", str(state))
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/sbin/{tool}")  # both versions
    backend = MemoryBackend()
    converge.converge(backend, {"web": WEB, "dns": DNS})
    yield backend


def crash_at(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """Die at `point` as SIGKILL would: the journal stays, nothing of natbox's runs after it."""
    dead: list[bool] = []

    def fault(at: str) -> None:
        if at == point:
            dead.append(True)
            raise Crash(point)

    def end_set() -> None:
        if not dead:
            journal.set_path().unlink(missing_ok=True)

    monkeypatch.setattr(journal, "fault", fault)
    monkeypatch.setattr(journal, "end_set", end_set)


def states(backend: MemoryBackend) -> dict[str, Forward | None]:
    return {
        s.name: (s.forward if s.intact else None)
        for fam in (4, 6)
        for s in forward_states(parse_save(backend.kernel[fam]))
    }


def view(backend: MemoryBackend) -> tuple[dict[str, Forward | None], list[str], list[Forward]]:
    """What a crash must leave as before or as after: natbox's forwards (as read back, intact or
    None), every rule that is not a forward's (foreign rules and natbox's jumps, in order) and the
    disabled list. The order of forwards within natbox's chains does not matter (they never
    overlap) and is not compared: recovery re-plans, it does not replay positions."""
    rest = [
        r.text
        for fam in (4, 6)
        for r in parse_save(backend.kernel[fam]).rules()
        if r.forward_name is None
    ]
    return states(backend), rest, disabled.load()


def foreign(backend: MemoryBackend) -> list[str]:
    return [r.text for r in parse_save(backend.kernel[4]).rules() if r.owner != "natbox:web"]


# ---------------------------------------------------------------- input, checked before any read


@pytest.mark.parametrize(
    ("edits", "words"),
    [
        (modify.Edits(), "changes nothing"),
        (modify.Edits(listen="192.168.1.300:1"), "not an IPv4 address"),
        (modify.Edits(backend="10.0.2.50:99999"), "out of range"),
        (modify.Edits(name="Web!"), "not valid"),
        (modify.Edits(proto="sctp"), "not one of tcp, udp, both"),
        (modify.Edits(snat="10.0.2.40", masquerade=True), "both an SNAT source and masquerade"),
        (modify.Edits(sources=("any", "10.0.0.0/8")), "--from any"),
        (modify.Edits(sources=("10.0.0.1/8",)), "host bits set"),
    ],
)
def test_bad_edits_are_refused_before_anything_is_read(edits: modify.Edits, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        modify.parse(edits)
    assert words in info.value.message and info.value.hint


def test_edited_keeps_what_is_not_given_and_rederives_the_snat_source() -> None:
    def route(ip: IPAddress) -> IPAddress | None:
        return parse_ip("10.0.3.1") if str(ip) == "10.0.3.9" else parse_ip("10.0.2.40")

    new, notes = modify.edited(WEB, modify.parse(modify.Edits(backend="10.0.2.51:80")), route)
    assert new == Forward.from_text(
        "192.168.1.30:1234", "10.0.2.51:80", name="web", snat="10.0.2.40"
    )
    assert notes == [], "same route source: nothing to say"
    new, notes = modify.edited(WEB, modify.parse(modify.Edits(backend="10.0.3.9:80")), route)
    assert str(new.snat) == "10.0.3.1" and "10.0.2.40 → 10.0.3.1" in notes[0]
    new, _ = modify.edited(
        WEB, modify.parse(modify.Edits(backend="10.0.3.9:80", snat="10.0.2.40")), route
    )
    assert str(new.snat) == "10.0.2.40", "--snat wins"
    masq = Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", name="m", masquerade=True)
    new, _ = modify.edited(masq, modify.parse(modify.Edits(backend="10.0.3.9:80")), route)
    assert new.masquerade and new.snat is None
    new, _ = modify.edited(WEB, modify.parse(modify.Edits(sources=("10.0.0.0/8",))), route)
    assert [str(n) for n in new.sources] == ["10.0.0.0/8"]
    new, _ = modify.edited(new, modify.parse(modify.Edits(sources=("any",))), route)
    assert new.sources == ()
    with pytest.raises(ValidationError, match="MSS clamping applies to TCP only"):
        clamped = Forward.from_text(
            "192.168.1.30:1234", "10.0.2.50:80", name="c", snat="10.0.2.40", mss_clamp=True
        )
        modify.edited(clamped, modify.parse(modify.Edits(proto="udp")), route)


def test_no_route_to_the_new_backend_is_one_error() -> None:
    def route(ip: IPAddress) -> IPAddress | None:
        raise NatboxError("ip route get 10.9.9.9: Network is unreachable", "")

    with pytest.raises(NatboxError) as info:
        modify.edited(WEB, modify.parse(modify.Edits(backend="10.9.9.9:80")), route)
    assert "no route to the new backend 10.9.9.9" in info.value.message
    assert "--snat" in info.value.hint


# ---------------------------------------------------------------- edit


def test_edit_replaces_exactly_the_forwards_rules_in_one_transaction_per_table(
    box: MemoryBackend,
) -> None:
    others = foreign(box)
    new = Forward.from_text("192.168.1.30:1234", "10.0.2.51:8080", name="web", snat="10.0.2.40")
    planned = modify.plan_edit(box, "web", new, diagnose=False)
    box.commits.clear()
    converge.execute(box, planned.change)
    assert states(box) == {"dns": DNS, "web": new}
    assert foreign(box) == others, "foreign rules and the other forward are untouched"
    # One commit per table; in each, the old rules go and the new ones come.
    assert [(f, t) for f, t, _ in box.commits] == [(4, "filter"), (4, "nat")]
    for _fam, _table, lines in box.commits:
        dels = [x for x in lines if x.startswith("-D ")]
        adds = [x for x in lines if x.startswith("-A ")]
        assert dels and adds and all('"natbox:web"' in x for x in dels + adds)
        assert lines.index(adds[0]) > lines.index(dels[-1])
    assert journal.pending_set() is None


def test_edit_conflicting_with_another_forward_touches_nothing(box: MemoryBackend) -> None:
    before = dict(box.kernel)
    moved = Forward.from_text(
        "192.168.1.30:5353", "10.0.2.51:80", name="web", proto="both", snat="10.0.2.40"
    )
    with pytest.raises(ConflictError, match="already forwarded by dns"):
        modify.plan_edit(box, "web", moved, diagnose=False)
    for taken in ("dns",):
        with pytest.raises(ConflictError, match="already exists"):
            modify.plan_edit(box, "web", Forward(**{**vars(WEB), "name": taken}), diagnose=False)
    assert box.kernel == before


def test_edit_to_its_own_port_is_no_conflict_and_no_change_is_nothing(box: MemoryBackend) -> None:
    same = modify.plan_edit(box, "web", WEB, diagnose=False)
    assert not same.change.changed
    clamp = Forward(**{**vars(WEB), "mss_clamp": True})
    assert modify.plan_edit(box, "web", clamp, diagnose=False).change.changed


def test_edit_a_forward_that_is_not_there_or_broken(box: MemoryBackend) -> None:
    with pytest.raises(NatboxError, match="there is no forward named nope"):
        modify.plan_edit(box, "nope", WEB, diagnose=False)
    rs = parse_save(box.kernel[4])
    broken = [r for r in rs.rules() if r.owner == "natbox:web" and " -j DNAT " in r.text]
    box.kernel[4] = box.kernel[4].replace(broken[0].text + "\n", "")
    with pytest.raises(NatboxError, match="forward web is broken"):
        modify.plan_edit(box, "web", WEB, diagnose=False)


def test_rename_needs_a_free_name(box: MemoryBackend) -> None:
    renamed = Forward(**{**vars(WEB), "name": "site"})
    persist.write([Forward(**{**vars(WEB), "name": "site", "snat": None, "masquerade": True})])
    with pytest.raises(ConflictError, match="saved set has a forward named site"):
        modify.plan_edit(box, "web", renamed, diagnose=False)
    persist.write([])
    disabled.write([Forward(**{**vars(DNS), "name": "site"})])
    with pytest.raises(ConflictError, match="a disabled forward is named site"):
        modify.plan_edit(box, "web", renamed, diagnose=False)
    disabled.write([])
    planned = modify.plan_edit(box, "web", renamed, diagnose=False)
    converge.execute(box, planned.change)
    assert states(box) == {"dns": DNS, "site": renamed}


def test_saved_entry_follows_a_kept_edit_in_its_place(box: MemoryBackend) -> None:
    other = Forward.from_text("192.168.1.30:7", "10.0.2.9:7", name="other", masquerade=True)
    persist.write([other, WEB])
    new = Forward(**{**vars(WEB), "name": "site", "mss_clamp": True})
    converge.execute(box, modify.plan_edit(box, "web", new, diagnose=False).change)
    assert persist.load() == [other, new]
    # A forward that is not saved stays unsaved.
    d2 = Forward(**{**vars(DNS), "name": "d2"})
    converge.execute(box, modify.plan_edit(box, "dns", d2, diagnose=False).change)
    assert persist.load() == [other, new]


def test_a_broken_saved_set_never_stops_an_edit_or_its_recovery(box: MemoryBackend) -> None:
    persist.saved_path().write_text("{not json")
    persist.saved_path().chmod(0o600)
    planned = modify.plan_edit(box, "web", NEW, diagnose=False)
    converge.execute(box, planned.change)
    assert states(box)["web"] == NEW
    assert "the saved set did not follow the edit of web" in planned.change.notes[0]
    assert journal.pending_set() is None
    back = modify.plan_edit(box, "web", WEB, diagnose=False)
    with pytest.MonkeyPatch.context() as dying:
        crash_at(dying, "set-before-journal-end")
        with pytest.raises(Crash):
            converge.execute(box, back.change)
    message = converge.recover_set(box)
    assert message is not None and "had finished" in message and "did not follow" in message
    assert journal.pending_set() is None and states(box)["web"] == WEB


# ---------------------------------------------------------------- disable, enable


def test_disable_enable_round_trips_to_identical_rules(box: MemoryBackend) -> None:
    before = dict(box.kernel)
    converge.execute(box, modify.plan_disable(box, "web").change)
    assert states(box) == {"dns": DNS}
    assert disabled.load() == [WEB]
    assert [r.text for r in parse_save(box.kernel[4]).rules() if r.owner == "natbox:web"] == []
    converge.execute(box, modify.plan_enable(box, "web", diagnose=False).change)
    assert disabled.load() == [] and not disabled.path().exists()
    assert states(box) == {"dns": DNS, "web": WEB}
    assert sorted(box.kernel[4].splitlines()) == sorted(before[4].splitlines())
    # The last forward: natbox's chains and jumps go with it and come back where they were.
    converge.execute(box, modify.plan_disable(box, "dns").change)
    alone = dict(box.kernel)
    converge.execute(box, modify.plan_disable(box, "web").change)
    assert "NATBOX" not in box.kernel[4]
    converge.execute(box, modify.plan_enable(box, "web", diagnose=False).change)
    assert box.kernel == alone, "byte for byte"


def test_disable_enable_refusals(box: MemoryBackend) -> None:
    converge.execute(box, modify.plan_disable(box, "web").change)
    with pytest.raises(NatboxError, match="web is disabled: there is nothing in the kernel"):
        modify.plan_disable(box, "web")
    with pytest.raises(NatboxError, match="web is disabled"):
        modify.plan_edit(box, "web", WEB, diagnose=False)
    with pytest.raises(NatboxError, match="forward dns is not disabled"):
        modify.plan_enable(box, "dns")
    with pytest.raises(NatboxError, match="no disabled forward named nope"):
        modify.plan_enable(box, "nope")
    with pytest.raises(ConflictError, match="a disabled forward is named web"):
        txn.refuse_disabled_name("web")
    # Another forward took the port meanwhile: enable refuses (hard), nothing is touched.
    taker = Forward(**{**vars(WEB), "name": "taker"})
    converge.converge(box, {"taker": taker})
    before = dict(box.kernel)
    with pytest.raises(ConflictError, match="already forwarded by taker"):
        modify.plan_enable(box, "web")
    assert box.kernel == before and disabled.load() == [WEB]
    assert modify.discard("web") and disabled.load() == [] and not modify.discard("web")


def test_a_file_that_lists_a_disabled_forward_enables_it(box: MemoryBackend) -> None:
    converge.execute(box, modify.plan_disable(box, "web").change)
    converge.converge(box, {"web": WEB})
    assert disabled.load() == [] and states(box)["web"] == WEB


@pytest.mark.parametrize(
    "body",
    [
        {"version": 2, "disabled": []},
        {"version": 1},
        {"version": 1, "disabled": [{"name": "web"}]},
        {"version": 1, "disabled": [WEB.to_dict(), WEB.to_dict()]},
        [],
    ],
)
def test_a_disabled_list_natbox_did_not_write_stops_every_change(
    box: MemoryBackend, body: object
) -> None:
    disabled.path().write_text(json.dumps(body))
    disabled.path().chmod(0o600)
    before = dict(box.kernel)
    with pytest.raises(StateFileError, match=r"disabled\.json"):
        converge.plan_change(box, {"web": None})
    with pytest.raises(StateFileError, match=r"disabled\.json"):
        txn.refuse_disabled_name("other")
    assert box.kernel == before


# ---------------------------------------------------------------- never neither, never both

POINTS = (
    "set-journal-written",
    "set-committed-4-filter",
    "set-committed-4-nat",
    "set-before-journal-end",
)
NEW = Forward.from_text("192.168.1.30:1234", "10.0.2.51:8080", name="web", snat="10.0.2.40")
RENAMED = Forward.from_text("192.168.1.30:2000", "10.0.2.51:8080", name="site", snat="10.0.2.40")


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("op", ["edit", "rename", "disable", "enable"])
def test_a_crash_at_every_point_leaves_before_or_after(
    box: MemoryBackend, op: str, point: str
) -> None:
    if op == "enable":
        converge.execute(box, modify.plan_disable(box, "web").change)
    planned = {
        "edit": lambda: modify.plan_edit(box, "web", NEW, diagnose=False),
        "rename": lambda: modify.plan_edit(box, "web", RENAMED, diagnose=False),
        "disable": lambda: modify.plan_disable(box, "web"),
        "enable": lambda: modify.plan_enable(box, "web", diagnose=False),
    }[op]()
    kernel = copy.deepcopy(box.kernel)
    start = view(box)
    converge.execute(box, planned.change)
    goal = view(box)
    # Back to the start, then the same change, killed at `point`.
    box.kernel = kernel
    disabled.write(start[2])
    with pytest.MonkeyPatch.context() as dying:  # the next natbox (below) is healthy
        crash_at(dying, point)
        with pytest.raises(Crash):
            converge.execute(box, planned.change)
    assert journal.pending_set() is not None, "the crash left its journal"
    message = converge.recover_set(box)
    assert message is not None and journal.pending_set() is None
    now = view(box)
    assert now in (start, goal), f"{op} killed at {point}: neither before nor after"
    names = set(states(box))
    held = {f.name for f in disabled.load()}
    assert not names & held, "never both in the kernel and disabled"
    assert {"web", "site"} & (names | held), "never neither"
    # Adding goes filter first, a pure removal nat first: after the last table it had finished.
    last = "set-committed-4-filter" if op == "disable" else "set-committed-4-nat"
    assert now == (goal if point in (last, "set-before-journal-end") else start)


def test_a_refused_table_leaves_everything_as_it_was(box: MemoryBackend) -> None:
    start = (dict(box.kernel), disabled.load())
    box.refuse = len(box.commits) + 1  # the second table of the edit: filter went in first
    with pytest.raises(BackendError, match="refused the nat table") as info:
        converge.execute(box, modify.plan_edit(box, "web", NEW, diagnose=False).change)
    assert "undone: nothing changed" in info.value.hint
    box.refuse = len(box.commits) + 1  # the disable's second table (nat goes first)
    with pytest.raises(BackendError, match="refused the filter table"):
        converge.execute(box, modify.plan_disable(box, "web").change)
    assert (box.kernel, disabled.load()) == start
    assert journal.pending_set() is None


# ---------------------------------------------------------------- the confirm window


def test_rollback_restores_the_old_forward_and_keeping_makes_the_saved_entry_follow(
    box: MemoryBackend,
) -> None:
    persist.write([WEB])
    start = dict(box.kernel)
    planned = modify.plan_edit(box, "web", RENAMED, diagnose=False)
    converge.save_rollback(planned.change)
    converge.execute(box, planned.change, keep=False)
    assert states(box) == {"dns": DNS, "site": RENAMED}
    assert persist.load() == [WEB], "not kept yet: the saved entry waits"
    converge.rollback_saved(box)
    assert states(box) == {"dns": DNS, "web": WEB}
    assert sorted(box.kernel[4].splitlines()) == sorted(start[4].splitlines())
    assert persist.load() == [WEB] and not converge.rollback_pending()
    planned = modify.plan_edit(box, "web", RENAMED, diagnose=False)
    converge.save_rollback(planned.change)
    converge.execute(box, planned.change, keep=False)
    converge.kept()
    assert persist.load() == [RENAMED] and not converge.rollback_pending()


def test_rollback_of_disable_and_enable(box: MemoryBackend) -> None:
    planned = modify.plan_disable(box, "web")
    converge.save_rollback(planned.change)
    converge.execute(box, planned.change, keep=False)
    converge.rollback_saved(box)
    assert states(box)["web"] == WEB and disabled.load() == []
    converge.execute(box, modify.plan_disable(box, "web").change)
    planned = modify.plan_enable(box, "web", diagnose=False)
    converge.save_rollback(planned.change)
    converge.execute(box, planned.change, keep=False)
    assert states(box)["web"] == WEB
    converge.rollback_saved(box)
    assert "web" not in states(box) and disabled.load() == [WEB]


def test_carry_names_the_change_and_clears_the_old_listens_flows(
    box: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from natbox import declare

    monkeypatch.setattr(declare, "ip_forward_enabled", lambda family=4: True)
    planned = modify.plan_edit(box, "web", RENAMED, diagnose=False)
    out = modify.carry(box, planned)
    assert (out.action, out.name) == ("edit", "web")
    assert set(out.lines) == {"filter", "nat"}
    runner = box.runner
    assert isinstance(runner, RecordingRunner)
    flushed = [" ".join(argv) for argv, _ in runner.calls if argv[0] == "conntrack"]
    assert any("--orig-port-dst 1234" in c for c in flushed), "the old listen's flows"
    assert any("--orig-port-dst 2000" in c for c in flushed), "the new listen's flows"


# ---------------------------------------------------------------- the sample engine (TUI tests)


def test_the_sample_engine_edits_disables_and_enables_like_the_real_one() -> None:
    from natbox.sample import DNS as SAMPLE_DNS
    from natbox.sample import SEED, SampleEngine

    engine = SampleEngine()
    moved = Forward(**{**vars(SEED), "backend": SAMPLE_DNS.backend, "name": "site"})
    preview = engine.preview_edit("web", moved)
    assert preview.changed and not preview.blocked and preview.before == SEED
    assert any(line.startswith("-D ") for lines in preview.lines.values() for line in lines)
    engine.edit("web", moved, confirm_seconds=30)
    assert [f.name for f in engine.dashboard().forwards] == ["site", "dns"]
    assert "site" in engine.saved, "the saved entry follows the edit"
    engine.rollback()
    assert [s.forward for s in engine.dashboard().forwards] == [SEED, SAMPLE_DNS]
    assert engine.saved == {"web"}
    onto_dns = Forward(
        **{**vars(SEED), "proto": "udp", "mss_clamp": False, "listen": SAMPLE_DNS.listen}
    )
    with pytest.raises(ConflictError):
        engine.preview_edit("web", onto_dns)
    engine.disable("dns")
    data = engine.dashboard()
    assert [s.name for s in data.forwards] == ["web"] and data.disabled == (SAMPLE_DNS,)
    assert engine.preview_edit("web", onto_dns).changed, "a disabled forward holds no port"
    engine.enable("dns")
    assert engine.dashboard().disabled == () and len(engine.dashboard().forwards) == 2
    engine.disable("dns")
    engine.remove("dns")
    assert engine.dashboard().disabled == ()


def test_no_change_while_another_waits_in_its_confirm_window(
    box: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waiting change's rollback would undo (or lose) a disable, edit or enable made meanwhile:
    they are refused until it is confirmed or rolled back."""
    import types

    from natbox import watchdog

    before = view(box)
    waiting = types.SimpleNamespace(name="edit:web", seconds_left=20.0)
    monkeypatch.setattr(watchdog, "pending", lambda: waiting)
    with pytest.raises(ConflictError, match="edit:web still waits for confirmation"):
        modify.carry(box, modify.plan_disable(box, "dns"))
    assert view(box) == before
    monkeypatch.setattr(watchdog, "pending", lambda: None)
    modify.carry(box, modify.plan_disable(box, "dns"))
    assert "dns" not in states(box)


def test_disabling_never_overwrites_a_disabled_copy_of_the_same_name(box: MemoryBackend) -> None:
    disabled.write([WEB])  # a disabled web beside the live one (e.g. from an apply FILE)
    before = view(box)
    with pytest.raises(ConflictError, match="a disabled forward is already named web"):
        modify.plan_disable(box, "web")
    assert view(box) == before and disabled.load() == [WEB]


def test_a_change_made_from_an_out_of_date_view_is_refused(box: MemoryBackend) -> None:
    """The dashboard's E and x name the forward as they showed it: if another shell changed it
    since, nothing is touched (the edit would wipe out what it never showed)."""
    before = view(box)
    seen = replace(WEB, sources=(ip_network("10.0.0.0/8"),))  # not what the kernel holds
    with pytest.raises(ConflictError, match="web changed since it was shown"):
        modify.plan_edit(box, "web", RENAMED, diagnose=False, expect=seen)
    with pytest.raises(ConflictError, match="web changed since it was shown"):
        modify.plan_disable(box, "web", expect=seen)
    assert view(box) == before
    planned = modify.plan_disable(box, "web", expect=WEB)  # as it is: fine
    assert planned.after is None


def test_a_removal_made_from_an_out_of_date_view_is_refused(
    box: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard's d (and natbox remove's question) name the forward as they showed it: if
    another shell changed it since, nothing is removed, nor a disabled copy forgotten."""
    from natbox.engine import Engine

    monkeypatch.setattr(txn, "require_root", lambda: None)
    engine = Engine()
    engine._backend = box
    before = view(box)
    seen = replace(WEB, sources=(ip_network("10.0.0.0/8"),))  # not what the kernel holds
    with pytest.raises(ConflictError, match="web changed since it was shown"):
        engine.remove("web", expect=seen)
    assert view(box) == before and not journal.path().exists()
    lines, shown = txn.preview_remove_shown(box, "web")
    assert shown == WEB and lines == txn.preview_remove(box, "web")
    engine.remove("web", expect=shown)  # as it is: removed
    assert "web" not in states(box)
    modify.carry(box, modify.plan_disable(box, "dns"))
    with pytest.raises(ConflictError, match="dns changed since it was shown"):
        engine.remove("dns", expect=replace(DNS, sources=(ip_network("10.0.0.0/8"),)))
    assert disabled.load() == [DNS], "the disabled copy is still remembered"
    assert engine.remove("dns", expect=DNS).action == "forget" and disabled.load() == []


def test_natbox_remove_removes_only_the_forward_its_question_showed(
    box: MemoryBackend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Between `natbox remove web`'s question and the y, another shell edits web: exit 2, one
    line, and the edited web is still there."""
    from natbox import cli

    monkeypatch.setattr(txn, "require_root", lambda: None)
    monkeypatch.setattr(cli, "_backend", lambda args: box)
    monkeypatch.setattr(cli, "_supervise", lambda: None)
    edited = replace(WEB, sources=(ip_network("10.0.0.0/8"),))

    def meanwhile(args: object, question: str) -> None:
        converge.converge(box, {"web": edited})

    monkeypatch.setattr(cli, "_confirm", meanwhile)
    assert cli.main(["remove", "web"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("natbox: web changed since it was shown") and "(hint: " in err
    assert states(box)["web"] == edited
    monkeypatch.setattr(cli, "_confirm", lambda args, question: None)
    assert cli.main(["remove", "web"]) == 0 and "web" not in states(box)


def _fail_writing(monkeypatch: pytest.MonkeyPatch, module: object, name: str, code: int) -> None:
    """`module.name` (a state-file write) fails as a full disk or a read-only mount makes it."""

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(module, name, fail)


@pytest.fixture
def cli_box(
    box: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[MemoryBackend, object]]:
    from natbox import cli

    monkeypatch.setattr(txn, "require_root", lambda: None)
    monkeypatch.setattr(cli, "_backend", lambda args: box)
    detected = SimpleNamespace(warnings=[])
    monkeypatch.setattr(cli, "choose_backend", lambda choice: (box, detected))
    monkeypatch.setattr(cli, "_supervise", lambda: None)
    monkeypatch.setattr(cli, "_other_side", lambda warnings: [])
    monkeypatch.setattr(declare, "ip_forward_enabled", lambda family=4: True)  # read, never set
    yield box, cli


EDITED = Forward.from_text("192.168.1.30:1234", "10.0.2.50:81", name="web", snat="10.0.2.40")


@pytest.mark.parametrize(
    ("argv", "module", "name", "code", "says", "web_after"),
    [
        # After the commit: the kernel has the change, a state file did not follow.
        (["remove", "web", "--yes"], "journal", "end", errno.EACCES, "web is removed", None),
        (["disable", "web", "--yes"], "disabled", "write", errno.ENOSPC, "web is out of", None),
        (
            # --force: the SNAT source is no address of the machine running the tests
            ["edit", "web", "--backend", "10.0.2.50:81", "--force", "--yes"],
            "persist",
            "write",
            errno.ENOSPC,
            "web is in the kernel as changed",
            EDITED,
        ),
        (["disable", "web", "--yes"], "journal", "end_set", errno.EROFS, "web is out of", None),
        # Before it: nothing changed.
        (["remove", "web", "--yes"], "journal", "begin", errno.ENOSPC, "nothing was changed", WEB),
        (["disable", "web", "--yes"], "journal", "begin_set", errno.EROFS, "nothing was", WEB),
        (["save", "--yes"], "persist", "write", errno.ENOSPC, "nothing was saved", WEB),
        (["forget", "web"], "persist", "write", errno.EACCES, "web was not forgotten", WEB),
    ],
)
def test_a_state_file_that_cannot_be_written_is_one_line_that_says_what_the_kernel_has(
    cli_box: tuple[MemoryBackend, object],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    module: str,
    name: str,
    code: int,
    says: str,
    web_after: Forward | None,
) -> None:
    """A full disk, a read-only mount: not an internal error (exit 70) but one line, exit 2, that
    says whether the kernel has the change; and it does have it exactly then. The next command
    finishes the record from the journal the change wrote before it touched the kernel."""
    box, cli = cli_box
    persist.write([WEB])  # web is saved: an edit's saved entry follows it
    capsys.readouterr()
    target = {"journal": journal, "disabled": disabled, "persist": persist}[module]
    working = getattr(target, name)
    _fail_writing(monkeypatch, target, name, code)
    assert cli.main(argv) == 2  # type: ignore[attr-defined]
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "internal error" not in err, err
    assert err.startswith("natbox: ") and says in err and os.strerror(code) in err, err
    assert "(hint: " in err
    assert states(box).get("web") == web_after, "the kernel is as the message says"
    monkeypatch.setattr(target, name, working)  # room again: the next command finishes it
    if journal.path().exists() or journal.set_path().exists():
        assert txn.recover(box) or converge.recover_set(box)
    assert not journal.path().exists() and not journal.set_path().exists()
    if argv[0] == "disable" and web_after is None:
        assert disabled.load() == [WEB], "the disabled copy was written from the journal"
    if argv[0] == "edit":
        assert persist.load() == [EDITED], "the saved entry followed from the journal"


def test_a_record_that_fails_after_the_commit_leaves_the_confirm_window_armed(
    cli_box: tuple[MemoryBackend, object],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`natbox edit --confirm`: the change is in the kernel, only its journal could not be cleared.
    The watchdog must still roll it back unless confirmed (disarming it would keep an unconfirmed
    change for good), and the message says the window is open."""
    from natbox import watchdog

    box, cli = cli_box
    disarmed: list[object] = []
    monkeypatch.setattr(watchdog, "arm", lambda *args, **kwargs: "token")
    monkeypatch.setattr(watchdog, "disarm", disarmed.append)
    _fail_writing(monkeypatch, journal, "end_set", errno.EROFS)
    argv = ["edit", "web", "--backend", "10.0.2.50:81", "--force", "--yes", "--confirm", "30"]
    assert cli.main(argv) == 2  # type: ignore[attr-defined]
    err = capsys.readouterr().err.strip()
    assert "web is in the kernel as changed" in err and "confirm window is still open" in err, err
    assert states(box).get("web") == EDITED and disarmed == []


def test_a_recovery_whose_record_cannot_be_written_is_a_natbox_error_not_a_crash(
    cli_box: tuple[MemoryBackend, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The set journal is left (its end failed); the next command's recovery cannot write the
    disabled list either: one StateWriteError (exit 2, the dashboard says it), never a raw OSError
    (exit 70 on every command after)."""
    from natbox.paths import StateWriteError

    box, cli = cli_box
    working = journal.end_set
    _fail_writing(monkeypatch, journal, "end_set", errno.EROFS)
    assert cli.main(["disable", "web", "--yes"]) == 2  # type: ignore[attr-defined]
    monkeypatch.setattr(journal, "end_set", working)
    assert journal.set_path().exists()
    _fail_writing(monkeypatch, disabled, "write", errno.ENOSPC)
    with pytest.raises(StateWriteError, match="could not be finished"):
        converge.recover_set(box)
    assert journal.set_path().exists(), "left for the next try"


def test_a_change_whose_undo_fails_keeps_its_journal_and_blocks_the_next_change(
    box: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The filter table is refused after nat was committed, and the undo of nat is refused too:
    half a removal is in the kernel. Its journal must stay (recovery needs it), and no other change
    may overwrite it until `natbox recover` has finished it."""
    from natbox.errors import UndoFailed
    from natbox.paths import StateFileError

    monkeypatch.setattr(txn, "require_root", lambda: None)
    real = MemoryBackend.commit
    start = len(box.commits)

    def refusing(self: MemoryBackend, table: str, lines: list[str]) -> None:
        if len(self.commits) - start in (1, 2):  # filter, then the undo of nat
            self.commits.append((self.family, table, list(lines)))
            raise BackendError(f"the kernel refused the {table} table", "")
        real(self, table, lines)

    monkeypatch.setattr(MemoryBackend, "commit", refusing)
    with pytest.raises(UndoFailed, match="refused the filter table") as info:
        txn.remove(box, "web")
    assert info.value.hint.startswith("could not undo the nat table")
    assert journal.path().exists(), "half a removal in the kernel: the journal stays"
    monkeypatch.setattr(MemoryBackend, "commit", real)
    with pytest.raises(StateFileError, match="interrupted change is still pending"):
        txn.remove(box, "dns")
    assert txn.recover(box) and not journal.path().exists()
    assert "web" not in states(box) and states(box)["dns"] == DNS
