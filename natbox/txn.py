"""Provides apply and remove: all or nothing, read back from the kernel, foreign rules untouched.

A backend commits one table at a time (iptables-restore is atomic per table only), so a failure in
the second table undoes the first, and a forward that does not read back intact is undone whole.
Every change holds the natbox lock from the read it decides on to the read-back that proves it, and
creates natbox's chains with `-N` (which fails if the chain appeared meanwhile) rather than the
`:CHAIN` declaration (which, with --noflush, empties a chain that exists). A ruleset that
iptables cannot show whole (native nftables rules in a table it shares) stops every write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from natbox import disabled, journal, lock
from natbox.backends import Backend, families
from natbox.errors import (
    UNDO_FAILED,
    BackendError,
    ConflictError,
    NatboxError,
    NotFoundError,
    NotRootError,
    UndoFailed,
    undone_or_not,
)
from natbox.model import Forward, Rule, Ruleset
from natbox.overlap import in_background
from natbox.paths import StateWriteError, state_dir, write_text, writes
from natbox.plan import OWN_CHAINS, TABLE_ORDER, Plan, build_plan, jump_rule
from natbox.ruleset import ForwardState, conflicts, forward_states
from natbox.runner import Runner
from natbox.system import PROC_SYS, ip_forward_enabled, is_root

# At most this many single-port conntrack deletions per protocol; wider ranges go by address.
_CT_PORT_LIMIT = 64


@dataclass
class Outcome:
    """What an apply or remove did."""

    action: str
    name: str
    backend: str
    lines: dict[str, list[str]] = field(default_factory=dict)
    """The restore lines committed, per table."""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {
            "action": self.action,
            "name": self.name,
            "backend": self.backend,
            "lines": self.lines,
            "notes": self.notes,
            "seconds": round(self.seconds, 4),
        }


_NOT_JOURNALED = "nothing was changed: the journal could not be written"
_AGAIN = "free space or fix the permissions there, then run the command again"


def _end_journal(done: str) -> StateWriteError | None:
    """journal.end() after a commit; the error to raise once the change's other steps are done
    if the journal could not be cleared (`done`: what the kernel has)."""
    try:
        with writes(
            f"{done}; the journal of the change could not be cleared",
            "fix that (space, permissions); the next natbox command sees the change finished "
            "and clears its journal (natbox recover)",
            committed=True,
        ):
            journal.end()
    except StateWriteError as exc:
        return exc
    return None


def _end_after_failure() -> None:
    """journal.end() on the way out of a change that failed (the kernel is as before it): a journal
    that cannot be cleared then must not hide the failure being raised; the next command's
    recovery finds the kernel as before and clears it."""
    try:
        journal.end()
    except OSError:
        pass


def require_root() -> None:
    """Refuse a write without root, before anything is read or touched."""
    if not is_root():
        raise NotRootError()


def trusted_read(backend: Backend, natbox_only: bool = True) -> Ruleset:
    """Read the ruleset a change decides on; refuse one iptables could not show whole."""
    rs = backend.read(natbox_only=natbox_only)
    if rs.incompatible:
        table = rs.incompatible[0]
        family = "ip6" if backend.family == 6 else "ip"
        raise BackendError(
            f"{backend.tool('save')} cannot show the {table} table: it holds native nftables "
            "rules that iptables cannot represent, so natbox cannot see (or protect) its forwards",
            f"see them with `nft list table {family} {table}`; natbox changes nothing until they "
            "are gone or moved to a table of their own",
        )
    return rs


def foreign_in_own_chains(rs: Ruleset, chains: set[str] | None = None) -> list[Rule]:
    """Rules in natbox's own chains that natbox did not write (no natbox:<name> tag)."""
    out: list[Rule] = []
    for table, pairs in OWN_CHAINS.items():
        for _builtin, own in pairs:
            chain = rs.chain(table, own)
            if chain is None or (chains is not None and own not in chains):
                continue
            out.extend(r for r in chain.rules if r.forward_name is None)
    return out


def natbox_chains(own: set[str] | frozenset[str] | None = None) -> dict[str, list[str]]:
    """The chains a read-back needs per table: natbox's own (those in `own`, or all) and the
    built-in chains that jump to them."""
    out: dict[str, list[str]] = {}
    for table in TABLE_ORDER:
        for builtin, chain in OWN_CHAINS[table]:
            if own is None or chain in own:
                out.setdefault(table, []).extend([builtin, chain])
    return out


def _refuse_unowned_chains(rs: Ruleset, chains: set[str]) -> None:
    """An empty natbox-named chain without natbox's jump, or one someone else jumps into, was
    not created by natbox: using it would take over someone else's chain."""
    for table, pairs in OWN_CHAINS.items():
        for builtin, own in pairs:
            chain = rs.chain(table, own)
            if chain is None or own not in chains:
                continue
            foreign_jumps = [
                r for r in rs.rules(table) if r.text.endswith(f" -j {own}") and r.owner != "natbox"
            ]
            if foreign_jumps or (not chain.rules and not _has_jump(rs, table, builtin, own)):
                why = (
                    f"`{foreign_jumps[0].text[:80]}` jumps into it"
                    if foreign_jumps
                    else "it has no natbox jump"
                )
                raise ConflictError(
                    f"a chain {own} exists that natbox did not create ({why})",
                    "remove it (and any jump into it) first, or pass --adopt to use it",
                )


def _has_jump(rs: Ruleset, table: str, builtin: str, own: str) -> bool:
    chain = rs.chain(table, builtin)
    want = jump_rule(table, builtin, own).save_line
    return chain is not None and any(r.text == want for r in chain.rules)


def apply_lines(rs: Ruleset, plan: Plan) -> dict[str, list[str]]:
    """The restore lines per table that add `plan`, creating natbox's chains and jumps if missing."""
    out: dict[str, list[str]] = {}
    for table in TABLE_ORDER:
        lines: list[str] = []
        for builtin, own in OWN_CHAINS[table]:
            if own not in plan.chains:
                continue  # e.g. NATBOX-OUTPUT exists only while a forward has --local
            if rs.chain(table, own) is None:
                # -N, not `:{own} - [0:0]`: with --noflush the declaration empties a chain that
                # exists; -N fails instead, so a chain created meanwhile can never be flushed.
                lines.append(f"-N {own}")
            if not _has_jump(rs, table, builtin, own):
                lines.append(f"-I {builtin} 1 {jump_rule(table, builtin, own).spec}")
        lines.extend(r.save_line for r in plan.table_rules(table))
        if any(line.startswith("-A ") for line in lines):
            out[table] = lines
    return out


def inverse_lines(lines: list[str]) -> list[str]:
    """Lines that undo `lines` (committed as one table's transaction).

    What was added goes first (its rules, then its jumps, then its chains), then what was removed
    comes back (chains, jumps at position 1 where natbox puts them, rules in their old order).
    """
    drop_rules: list[str] = []
    drop_jumps: list[str] = []
    drop_chains: list[str] = []
    make_chains: list[str] = []
    make_jumps: list[str] = []
    readd: list[str] = []
    for line in lines:
        op, _, rest = line.partition(" ")
        if line.startswith(":"):
            drop_chains.append(f"-X {line[1:].split()[0]}")
        elif op == "-N":
            drop_chains.append(f"-X {rest}")
        elif op == "-X":
            make_chains.append(f"-N {rest}")
        elif op == "-I":
            chain, _pos, spec = rest.split(" ", 2)
            drop_jumps.append(f"-D {chain} {spec}")
        elif op == "-A":
            drop_rules.append(f"-D {rest}")
        elif op == "-D" and _is_jump(line):
            chain, spec = rest.split(" ", 1)
            make_jumps.append(f"-I {chain} 1 {spec}")
        elif op == "-D":
            readd.append(f"-A {rest}")
    return [
        *reversed(drop_rules),
        *reversed(drop_jumps),
        *reversed(drop_chains),
        *make_chains,
        *make_jumps,
        *readd,
    ]


def _is_jump(line: str) -> bool:
    return any(line.endswith(f" -j {own}") for pairs in OWN_CHAINS.values() for _, own in pairs)


def remove_lines(rs: Ruleset, name: str) -> dict[str, list[str]]:
    """The restore lines per table (nat first: stop new DNATs before their accepts go)."""
    state = next(iter(forward_states(rs, only=name)), None)
    rules = state.rules if state is not None else []  # its own rules, never look-alikes
    out: dict[str, list[str]] = {}
    for table in ("nat", "filter"):
        mine = [r for r in rules if r.table == table]
        if not mine:
            continue
        lines = [f"-D {r.chain} {r.spec}" for r in mine]
        # natbox's jump goes with the last forward of its chain (so traffic never meets rules
        # someone else left there); the chain itself only when it is empty and nobody else
        # jumps into it.
        for builtin, own in OWN_CHAINS[table]:
            chain = rs.chain(table, own)
            if chain is None:
                continue
            others: list[Rule] = [r for r in chain.rules if r not in rules]
            if any(r.forward_name is not None and r.forward_name != name for r in others):
                continue  # another forward still uses the chain
            if _has_jump(rs, table, builtin, own):
                lines.append(f"-D {builtin} {jump_rule(table, builtin, own).spec}")
            foreign_jumps = [
                r for r in rs.rules(table) if r.text.endswith(f" -j {own}") and r.owner != "natbox"
            ]
            if not others and not foreign_jumps:
                lines.append(f"-X {own}")
        out[table] = lines
    return out


def _commit_all(
    backend: Backend,
    per_table: dict[str, list[str]],
    order: tuple[str, ...],
    *,
    validated: bool = False,
) -> None:
    """Commit table by table; if one fails, undo the ones already committed and re-raise. The
    lines are checked first (one `iptables-restore --test`) unless the caller has `validated`."""
    if not validated:
        backend.validate(per_table)
    done: list[str] = []
    for table in order:
        if table not in per_table:
            continue
        try:
            backend.commit(table, per_table[table])
        except BackendError as exc:
            raise undone_or_not(exc.message, _undo(backend, per_table, done)) from None
        done.append(table)
        journal.fault(f"committed-{table}")


def _undo(backend: Backend, per_table: dict[str, list[str]], done: list[str]) -> str:
    failed: list[str] = []
    for table in reversed(done):
        try:
            backend.commit(table, inverse_lines(per_table[table]))
        except BackendError:
            failed.append(table)
    if failed:
        return f"{UNDO_FAILED} the {', '.join(failed)} table; run `natbox list` and check"
    if done:
        return f"the {', '.join(done)} table was undone: nothing changed"
    return "nothing was changed"


_KILL_BY_TUPLE_MAX = 1000
"""Stale flows deleted one ctnetlink message each from Python; more go to `conntrack -D` (C)."""


StaleFlows = dict[str, list[Any] | None]
"""Per protocol, the flows to a forward's listen ports found by a filtered dump (None: not found
that way)."""


def find_stale(fwd: Forward, runner: Runner) -> StaleFlows:
    """The flows to `fwd`'s listen address and ports, per protocol, found by a filtered ctnetlink
    dump (facts.listen_flows). Only where the runner's commands run in this process's namespace
    (no prefix), and never for a recording runner (a test's: the host's flows are not its)."""
    from natbox.facts import listen_flows

    here = type(runner) is Runner and not runner.prefix
    return {proto: listen_flows(fwd, proto) if here else None for proto in fwd.protocols}


def _flush_by_netlink(stale: list[Any] | None) -> int | None:
    """Delete these flows (natbox checked each one) by their tuples. None: not done here (no
    ctnetlink, or too many flows to delete one by one), `conntrack -D` does it."""
    from natbox import conntrack

    if stale is None or len(stale) > _KILL_BY_TUPLE_MAX:
        return None
    try:
        return conntrack.kill(stale)
    except NatboxError:
        return None


def flush_flows(fwd: Forward, runner: Runner, found: StaleFlows | None = None) -> list[str]:
    """Delete conntrack entries to the listen address, which would bypass the new DNAT. `found`:
    what `find_stale` returned after the commit (else it is asked now)."""
    notes: list[str] = []
    found = find_stale(fwd, runner) if found is None else found
    for proto in fwd.protocols:
        cleared = _flush_by_netlink(found.get(proto))
        if cleared is not None:
            if cleared:
                notes.append(f"cleared {cleared} stale {proto} flows to {fwd.listen.ip}")
            continue
        ports = range(fwd.listen.port, fwd.listen.port_end + 1)
        port_args = (
            [["--orig-port-dst", str(p)] for p in ports] if len(ports) <= _CT_PORT_LIMIT else [[]]
        )
        for extra in port_args:
            argv = ["conntrack", "-D", "-p", proto, "--orig-dst", str(fwd.listen.ip), *extra]
            try:
                res = runner.run(argv)
            except NatboxError as exc:
                return [f"stale flows not cleared: {exc.message}"]
            # conntrack exits 1 when there was nothing to delete; that is the usual, quiet case.
            if "flow entries have been deleted" in res.stderr and not res.stderr.startswith(
                "conntrack v"
            ):
                count = res.stderr.split()[0]
                if count.isdigit() and int(count):
                    notes.append(f"cleared {count} stale {proto} flows to {fwd.listen.ip}")
    return notes


def mark_forwarding_enabled() -> None:
    """Remember that natbox turned ip_forward on (natbox save then persists it)."""
    try:
        write_text(state_dir() / "ip_forward-by-natbox", "1\n")
    except (OSError, NatboxError):
        pass


def forwarding_enabled_by_natbox() -> bool:
    """Whether natbox turned ip_forward on at some point."""
    return (state_dir() / "ip_forward-by-natbox").exists()


def cleanup_empty(backend: Backend) -> list[str]:
    """Drop natbox's chains and jumps where no forward has rules left (after a crash mid-setup)."""
    rs = trusted_read(backend)
    done: list[str] = []
    for table in ("nat", "filter"):
        lines: list[str] = []
        for builtin, own in OWN_CHAINS[table]:
            chain = rs.chain(table, own)
            if chain is not None and chain.rules:
                continue
            if _has_jump(rs, table, builtin, own):
                lines.append(f"-D {builtin} {jump_rule(table, builtin, own).spec}")
            if chain is not None:
                lines.append(f"-X {own}")
        if lines:
            backend.commit(table, lines)
            done.append(table)
    return done


def locate(backend: Backend, name: str) -> tuple[Backend, Ruleset] | None:
    """The family-bound backend and ruleset that hold forward `name`, if any."""
    for bound in families(backend):
        rs = trusted_read(bound)
        if name in rs.forward_names():
            return bound, rs
    return None


def all_forward_states(backend: Backend, natbox_only: bool = True) -> list[ForwardState]:
    """natbox's forwards of both IP versions."""
    return [s for b in families(backend) for s in forward_states(b.read(natbox_only=natbox_only))]


def _present(rs: Ruleset, table: str) -> set[str]:
    return {r.text for r in rs.rules(table)}


def _landed(lines: list[str], present: set[str]) -> bool | None:
    """Whether one table's committed lines are in the kernel: True, False, or None (neither)."""
    added = [f"-A {line[3:]}" for line in lines if line.startswith("-A ")]
    deleted = [f"-A {line[3:]}" for line in lines if line.startswith("-D ") and not _is_jump(line)]
    if all(a in present for a in added) and not any(d in present for d in deleted):
        return True
    if not any(a in present for a in added) and all(d in present for d in deleted):
        return False
    return None


def _undo_recorded(rs: Ruleset, table: str, lines: list[str]) -> list[str]:
    """Lines that take one table back to before `lines`, touching only the rules they name:
    what they added and is there goes, what they deleted (but jumps) and is gone comes back."""
    present = _present(rs, table)
    chains = set(rs.tables[table].chains) if table in rs.tables else set()
    recreate = [
        f"-N {line[3:]}" for line in lines if line.startswith("-X ") and line[3:] not in chains
    ]
    readd = [
        f"-A {line[3:]}"
        for line in lines
        if line.startswith("-D ") and not _is_jump(line) and f"-A {line[3:]}" not in present
    ]
    drop = [
        f"-D {line[3:]}" for line in lines if line.startswith("-A ") and f"-A {line[3:]}" in present
    ]
    return [*drop, *recreate, *readd]


def recover(backend: Backend) -> str | None:
    """Finish or undo the change natbox died in; say which (None when there was none).

    Acts only on the lines the journal recorded: never on a rule natbox was not adding or removing.
    A journal natbox does not understand is refused (StateFileError), and nothing is changed.
    """
    with lock.held("recover"):
        entry = journal.pending()
        if entry is None:
            return None
        bound = backend.for_family(entry.family)
        rs = trusted_read(bound)
        tables = [t for t in TABLE_ORDER if entry.lines.get(t)]
        landed = {t: _landed(entry.lines[t], _present(rs, t)) for t in tables}
        if entry.op == "apply" and all(landed.values()):
            message = f"the interrupted apply of {entry.name} had finished: kept it"
        elif entry.op == "apply":
            for table in reversed(tables):
                undo = _undo_recorded(rs, table, entry.lines[table])
                if undo:
                    bound.commit(table, undo)
            cleanup_empty(bound)
            message = f"undid the interrupted apply of {entry.name}: the rules are as before it"
        else:
            for table in tables:
                present = _present(rs, table)
                rest = [
                    line
                    for line in entry.lines[table]
                    if line.startswith("-D ") and not _is_jump(line) and f"-A {line[3:]}" in present
                ]
                if rest:
                    bound.commit(table, rest)
            cleanup_empty(bound)
            if all(landed.values()):
                message = f"the interrupted removal of {entry.name} had finished"
            else:
                message = f"completed the interrupted removal of {entry.name}"
        journal.end()
        return message


def enable_forwarding(root: Path = PROC_SYS, family: int = 4) -> None:
    """Turn on forwarding at runtime (persistence is `natbox save`'s job)."""
    key = "net/ipv6/conf/all/forwarding" if family == 6 else "net/ipv4/ip_forward"
    (root / key).write_text("1\n")


def apply(
    backend: Backend,
    fwd: Forward,
    *,
    enable_ip_forward: bool = False,
    runner: Runner | None = None,
    adopt: bool = False,
    gate: Callable[[Ruleset], None] | None = None,
) -> Outcome:
    """Add `fwd` to the kernel: all of its rules or none, checked by reading them back.

    `gate(ruleset)` (the preflight diagnosis) runs on the one full read the change decides on,
    under the lock, and may raise to stop the change before anything is touched.
    """
    require_root()
    start = time.perf_counter()
    runner = runner or backend.runner
    backend = backend.for_family(fwd.family)
    forwarding = ip_forward_enabled(family=fwd.family)
    if not forwarding and not enable_ip_forward:
        version = "IPv6" if fwd.family == 6 else "IPv4"
        raise NatboxError(
            f"{version} forwarding is off on this box, so nothing would be forwarded",
            "pass --enable-forwarding (turns it on until reboot)",
        )
    with lock.held(f"adding {fwd.name}"):
        refuse_disabled_name(fwd.name)
        # Forwards live only in natbox's chains: the other family's few chains answer the name
        # question (read under the lock, while this family's full read runs).
        elsewhere = in_background(
            lambda: [
                (other.family, other.read_chains(natbox_chains()).forward_names())
                for other in families(backend)
                if other.family != fwd.family
            ]
        )
        rs = trusted_read(backend, natbox_only=gate is None)
        for family, names in elsewhere():
            if fwd.name in names:
                raise ConflictError(
                    f"a forward named {fwd.name} already exists (IPv{family})",
                    f"pick another --name, or `natbox remove {fwd.name}` first",
                )
        plan = build_plan(fwd)
        per_table = apply_lines(rs, plan)
        # `iptables-restore --test` (it changes nothing) runs while the preflight thinks.
        validated = in_background(lambda: backend.validate(per_table))
        if gate is not None:
            gate(rs)
        conflicts(rs, fwd)
        foreign = foreign_in_own_chains(rs, set(plan.chains))
        if not adopt:
            _refuse_unowned_chains(rs, set(plan.chains))
        if foreign and not adopt:
            raise ConflictError(
                f"natbox's chain {foreign[0].chain} already holds {len(foreign)} rule(s) natbox "
                f"did not write, e.g. `{foreign[0].text[:80]}`",
                "remove them (or the chain) first, or pass --adopt to use the chain as it is",
            )
        validated()
        with writes(_NOT_JOURNALED, _AGAIN):
            journal.begin("apply", [fwd.name], fwd.family, per_table, [fwd.to_dict()])
        journal.fault("journal-written")
        try:
            _commit_all(backend, per_table, TABLE_ORDER, validated=True)
        except UndoFailed:
            raise  # part of it is in the kernel: the journal stays for recovery
        except BaseException:
            _end_after_failure()  # undone (or nothing done): the state before
            raise
        # The flows the new DNAT cannot catch are looked up (not touched) during the read-back.
        stale = in_background(lambda: find_stale(fwd, runner))
        after = backend.read_chains(natbox_chains(plan.chains), known=per_table.keys())
        state = next(iter(forward_states(after, only=fwd.name)), None)
        if state is None or not state.intact or state.forward != fwd:
            undone = _undo(backend, per_table, [t for t in TABLE_ORDER if t in per_table])
            detail = (
                state.problems[0] if state and state.problems else "its rules did not read back"
            )
            if not undone.startswith(UNDO_FAILED):
                _end_after_failure()  # else the journal stays: recovery finishes the undo
            raise undone_or_not(
                f"the kernel did not keep forward {fwd.name} as planned: {detail}", undone
            )
        journal.fault("before-journal-end")
        uncleared = _end_journal(f"{fwd.name} is in the kernel, all its rules")
    out = Outcome("apply", fwd.name, backend.label, per_table)
    if foreign:
        out.notes.append(
            f"adopted natbox's chain {foreign[0].chain} with {len(foreign)} rule(s) natbox did not write"
        )
    if not forwarding:
        enable_forwarding(family=fwd.family)
        mark_forwarding_enabled()
        out.notes.append("enabled net.ipv4.ip_forward (until reboot; natbox save keeps it)")
    out.notes.extend(flush_flows(fwd, runner, stale()))
    if uncleared is not None:  # said once the rest of the apply is done too, with its notes
        raise StateWriteError(
            uncleared.message, "; ".join([*out.notes, uncleared.hint]), committed=True
        )
    out.seconds = time.perf_counter() - start
    return out


def as_shown(name: str, now: Forward | None, expect: Forward | None) -> None:
    """Refuse a change of `name` made from a view of it that is out of date (another shell, a
    playbook changed it since): the change would wipe out what it does not show."""
    if expect is not None and now != expect:
        shown = f"{now.listen} → {now.backend}" if now is not None else "not readable"
        raise ConflictError(
            f"{name} changed since it was shown (now {shown})",
            "look at it again (natbox list, or r in the dashboard) and redo the change",
        )


def _forward_in(rs: Ruleset, name: str) -> Forward | None:
    """Forward `name` as read back from `rs` (None: not readable)."""
    states = forward_states(rs, only=name)
    return states[0].forward if states else None


def remove(backend: Backend, name: str, expect: Forward | None = None) -> Outcome:
    """Delete exactly the rules tagged natbox:<name>, as the kernel has them now; refused
    (ConflictError, nothing touched) if the forward is no longer `expect`, as the user saw it."""
    out = remove_claimed(backend, name, expect=expect)
    assert out is not None  # without a claim there is nobody to lose it to
    return out


def remove_claimed(
    backend: Backend,
    name: str,
    *,
    claim: Callable[[], bool] | None = None,
    missing_ok: bool = False,
    expect: Forward | None = None,
) -> Outcome | None:
    """`remove`, for the confirm window's rollback: `claim()` runs after the removal is journaled
    and before the kernel is touched; if it returns False (the change was confirmed meanwhile),
    nothing is removed and the result is None. With `missing_ok`, a forward that is not there is
    an Outcome with action "missing" rather than an error."""
    require_root()
    start = time.perf_counter()
    with lock.held(f"removing {name}"):
        found = locate(backend, name)
        if found is None:
            if missing_ok:
                if claim is not None and not claim():
                    return None
                return Outcome("missing", name, backend.label)
            known = ", ".join(s.name for s in all_forward_states(backend)) or "none"
            raise NotFoundError(
                f"there is no forward named {name}", f"natbox list shows them (now: {known})"
            )
        backend, rs = found
        if expect is not None:  # checked under the lock: what is removed is what was shown
            as_shown(name, _forward_in(rs, name), expect)
        per_table = remove_lines(rs, name)
        with writes(_NOT_JOURNALED, _AGAIN):
            journal.begin("remove", [name], backend.family, per_table)
        journal.fault("journal-written")
        if claim is not None and not claim():
            _end_after_failure()
            return None
        try:
            _commit_all(backend, per_table, ("nat", "filter"))
        except UndoFailed:
            raise  # part of it is in the kernel: the journal stays for recovery
        except BaseException:
            _end_after_failure()
            raise
        journal.fault("before-journal-end")
        uncleared = _end_journal(f"{name} is removed from the kernel")
        gone = {f"-A {x[3:]}" for lines in per_table.values() for x in lines if x.startswith("-D ")}
        # The chains that were there and are not deleted by the removal (a builtin never listed
        # before is never listed now: some iptables versions create it when asked), in the
        # tables just committed to: each must list, or the proof fails.
        dropped = {line[3:] for lines in per_table.values() for line in lines if line[:3] == "-X "}
        was = {
            table: [c for c in chains if rs.chain(table, c) is not None and c not in dropped]
            for table, chains in natbox_chains().items()
        }
        after = backend.read_chains(was, known=per_table.keys())
        left = [r for r in after.rules() if r.text in gone and r.forward_name == name]
    if left:
        raise BackendError(
            f"{len(left)} rules of {name} are still there", "run natbox remove again"
        )
    if uncleared is not None:
        raise uncleared
    return Outcome("remove", name, backend.label, per_table, seconds=time.perf_counter() - start)


def preview_remove(backend: Backend, name: str) -> dict[str, list[str]]:
    """The lines `remove` would commit, without committing them."""
    return preview_remove_shown(backend, name)[0]


def preview_remove_shown(
    backend: Backend, name: str
) -> tuple[dict[str, list[str]], Forward | None]:
    """The lines `remove` would commit, and the forward as read with them (None: not readable):
    what to pass as `remove(expect=)` once the user said yes to these lines."""
    found = locate(backend, name)
    if found is None:
        raise NotFoundError(f"there is no forward named {name}", "natbox list shows them")
    return remove_lines(found[1], name), _forward_in(found[1], name)


def refuse_disabled_name(name: str) -> None:
    """A new forward cannot take a disabled forward's name (`natbox enable` puts that one back)."""
    if disabled.find(name) is not None:
        raise ConflictError(
            f"a disabled forward is named {name}",
            f"natbox enable {name} puts it back; pick another --name, or natbox remove {name} "
            "forgets it",
        )


def preview_apply(backend: Backend, fwd: Forward) -> dict[str, list[str]]:
    """The lines `apply` would commit, after the same conflict checks, without committing."""
    refuse_disabled_name(fwd.name)
    rs = backend.for_family(fwd.family).read(natbox_only=True)
    conflicts(rs, fwd)
    return apply_lines(rs, build_plan(fwd))
