"""Provides converge: make natbox's forwards in the kernel match a target set, as one transaction.

A target names forwards and what each should be (a Forward, or None: absent). Converging computes,
per IP version and table, the restore lines that delete the rules of forwards that go or change,
drop or create natbox's chains and jumps as the end state needs them, and append the rules of
forwards that come or change; then it commits every table of both IP versions, and if one is
refused, undoes the ones already committed with exact, position-preserving inverse lines (so a
failure in the second table leaves the ruleset byte for byte as it was). The result is read back
and must equal the target, or everything is undone.

txn.py's per-forward helpers are not used for the lines: its inverse_lines puts removed rules back
at the end of their chain and jumps at position 1 rather than where they were (this undo is exact,
positions included, so a refused table leaves iptables-save byte for byte as before), and
_commit_all commits one IP version. The commit loop below has the same shape (validate everything
first, commit in order, undo the committed on failure, journal fault points) across both versions,
under the same natbox lock and trusted read.

A set operation's intent goes to its own journal entry (journal.begin_set), which recover_set()
finishes or undoes; the confirm window's rollback (watchdog) converges back to `before`. A change may
also take forwards out as disabled (natbox disable) or put disabled ones back (natbox enable, or a
file that lists them): the disabled list before and after goes into the same journal entry and is
written after the read-back, so recovery leaves a forward in the kernel or in the list, never in
neither. An edit's saved-set entry (forwards.json) follows it once the change is kept.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from natbox import disabled, journal, lock, persist, tables
from natbox.backends import Backend, families
from natbox.backends.restore import RestoreBackend
from natbox.errors import (
    UNDO_FAILED,
    BackendError,
    NatboxError,
    UndoFailed,
    ValidationError,
    undone_or_not,
)
from natbox.model import Forward, Rule, Ruleset, forward_from_dict
from natbox.paths import read_json, remove, rollback_record, write_json, writes
from natbox.plan import OWN_CHAINS, TABLE_ORDER, build_plan, jump_rule
from natbox.ruleset import ForwardState, forward_states
from natbox.txn import trusted_read

Target = dict[str, Forward | None]
"""Forward name -> what it should be (None: not there). Names not in a target are left alone."""


@dataclass(frozen=True)
class Unit:
    """One table of one IP version: the lines to commit, and the lines that exactly undo them."""

    family: int
    table: str
    lines: tuple[str, ...]
    undo: tuple[str, ...]


@dataclass
class Change:
    """What converging to a target does, forward by forward, and the restore lines that do it."""

    added: list[Forward] = field(default_factory=list)
    replaced: list[tuple[ForwardState, Forward]] = field(default_factory=list)
    """(the forward as the kernel has it, what it becomes)."""
    removed: list[ForwardState] = field(default_factory=list)
    unchanged: list[Forward] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    """natbox's jumps that are missing or not first (drift that is not any forward's)."""
    units: list[Unit] = field(default_factory=list)
    before: dict[int, Ruleset] = field(default_factory=dict)
    """The full ruleset per IP version, as read before (for --diff)."""
    wanted: Target = field(default_factory=dict)
    """The target this change was planned for."""
    repair: bool = True
    disable: list[Forward] = field(default_factory=list)
    """Forwards this change takes out and remembers as disabled (as the kernel has them)."""
    enable: list[str] = field(default_factory=list)
    """Disabled forwards this change puts back: they leave the disabled list with it."""
    follow: tuple[str, Forward] | None = None
    """(old name, new forward): the saved set's entry of an edited forward, once the edit is kept."""
    notes: list[str] = field(default_factory=list)
    """What carrying it out had to say (a saved set that could not follow)."""

    @property
    def changed(self) -> bool:
        """Whether converging touches the kernel at all."""
        return bool(self.units)

    def before_target(self) -> Target:
        """The target that puts back what this change replaces or removes (and drops what it adds)."""
        out: Target = {f.name: None for f in self.added}
        for old, _new in self.replaced:
            out[old.name] = old.forward
        for old in self.removed:
            out[old.name] = old.forward
        return out

    def target(self) -> Target:
        """The target this change reaches (only the forwards it touches)."""
        out: Target = {f.name: f for f in self.added}
        out.update({new.name: new for _old, new in self.replaced})
        out.update({old.name: None for old in self.removed})
        return out


def read_states(backend: Backend) -> tuple[dict[int, Backend], dict[int, Ruleset]]:
    """The family-bound backends and their full rulesets (positions of the jumps need foreign rules)."""
    bound = {b.family: b for b in families(backend)}
    return bound, {fam: trusted_read(b, natbox_only=False) for fam, b in bound.items()}


def plan_change(
    backend: Backend,
    target: Target,
    *,
    repair: bool = True,
    disable: Collection[str] = (),
    follow: tuple[str, Forward] | None = None,
) -> Change:
    """Compare the kernel with `target` and compose the restore lines, without committing.

    `disable`: names the target takes out (None) that are remembered as disabled, as the kernel has
    them. A forward the target puts in whose name is disabled leaves the disabled list.
    """
    bound, rulesets = read_states(backend)
    states = {s.name: (fam, s) for fam, rs in rulesets.items() for s in forward_states(rs)}
    change = Change(before=rulesets, wanted=dict(target), repair=repair, follow=follow)
    held = {f.name for f in disabled.load()}
    change.enable = [n for n, want in target.items() if want is not None and n in held]
    for name in disable:
        found = states.get(name)
        if target.get(name, 0) is None and found is not None and found[1].forward is not None:
            change.disable.append(found[1].forward)
    remove_names: dict[int, set[str]] = {fam: set() for fam in bound}
    adds: dict[int, list[Forward]] = {fam: [] for fam in bound}
    for name, want in target.items():
        have = states.get(name)
        if want is not None and want.family not in bound:
            raise BackendError(
                f"forward {name} is IPv{want.family}, but ip6tables is not installed",
                "apt-get install iptables (it carries ip6tables)",
            )
        if have is None:
            if want is not None:
                change.added.append(want)
                adds[want.family].append(want)
            continue
        fam, state = have
        if want is None:
            change.removed.append(state)
            remove_names[fam].add(name)
        elif state.intact and state.forward == want and fam == want.family:
            change.unchanged.append(want)
        else:
            change.replaced.append((state, want))
            remove_names[fam].add(name)
            adds[want.family].append(want)
    for fam in sorted(bound):
        units, repairs = compose(rulesets[fam], fam, remove_names[fam], adds[fam], repair=repair)
        change.units.extend(units)
        change.repairs.extend(repairs)
    return change


def _position(chain_rules: list[Rule], text: str) -> int | None:
    for i, r in enumerate(chain_rules, 1):
        if r.text == text:
            return i
    return None


def compose(
    rs: Ruleset,
    family: int,
    remove_names: set[str],
    add: Iterable[Forward],
    *,
    repair: bool = True,
) -> tuple[list[Unit], list[str]]:
    """Per table: delete the rules of `remove_names`, drop/create natbox's chains as the end state
    needs them (and, with `repair`, put a missing or moved jump back first), append the rules of
    `add`. `rs` must be the full ruleset (jump positions count foreign rules)."""
    plans = [build_plan(f) for f in add]
    units: list[Unit] = []
    repairs: list[str] = []
    v = "6" if family == 6 else ""
    for table in TABLE_ORDER:
        dels = [r for r in rs.rules(table) if r.forward_name in remove_names]
        new = [r for p in plans for r in p.table_rules(table)]
        lines = [f"-D {r.chain} {r.spec}" for r in dels]
        # Undo of the deletes: re-insert each at its old place, top to bottom, chain by chain.
        reinsert: list[str] = []
        for chain_name in dict.fromkeys(r.chain for r in dels):
            chain = rs.chain(table, chain_name)
            assert chain is not None
            gone = {id(r) for r in dels}
            reinsert.extend(
                f"-I {chain_name} {i} {r.spec}"
                for i, r in enumerate(chain.rules, 1)
                if id(r) in gone
            )
        drops: list[str] = []
        drops_undo: list[str] = []
        creates: list[str] = []
        creates_undo: list[str] = []
        for builtin, own in OWN_CHAINS[table]:
            chain = rs.chain(table, own)
            remaining = (
                [r for r in chain.rules if r.forward_name not in remove_names] if chain else []
            )
            needed = bool(remaining) or any(r.chain == own for r in new)
            jump = jump_rule(table, builtin, own)
            base = rs.chain(table, builtin)
            pos = _position(base.rules, jump.save_line) if base is not None else None
            if chain is not None and not needed:
                if pos is not None:
                    drops.append(f"-D {builtin} {jump.spec}")
                    drops_undo.append(f"-I {builtin} {pos} {jump.spec}")
                drops.append(f"-X {own}")
                drops_undo.insert(0, f"-N {own}")
            elif chain is None and needed:
                # -N, never `:CHAIN`: with --noflush a declaration empties a chain that exists.
                creates += [f"-N {own}", f"-I {builtin} 1 {jump.spec}"]
                creates_undo = [f"-D {builtin} {jump.spec}", f"-X {own}", *creates_undo]
            elif chain is not None and needed and pos != 1 and repair:
                if pos is None:
                    repairs.append(f"ip{v}tables {table} {builtin}: natbox's jump is missing")
                else:
                    repairs.append(
                        f"ip{v}tables {table} {builtin}: natbox's jump is rule {pos}, not first"
                    )
                    creates.append(f"-D {builtin} {jump.spec}")
                creates.append(f"-I {builtin} 1 {jump.spec}")
                undo = [f"-D {builtin} {jump.spec}"]
                if pos is not None:
                    undo.append(f"-I {builtin} {pos} {jump.spec}")
                creates_undo = [*undo, *creates_undo]
        adds = [r.save_line for r in new]
        out = [*lines, *drops, *creates, *adds]
        if not out:
            continue
        undo_lines = [
            *(f"-D {line[3:]}" for line in reversed(adds)),
            *creates_undo,
            *drops_undo,
            *reinsert,
        ]
        units.append(Unit(family, table, tuple(out), tuple(undo_lines)))
    return units, repairs


def _order(units: list[Unit]) -> list[Unit]:
    """filter before nat when anything is added (the accepts exist before the first DNAT), nat
    before filter for pure removals (no new DNAT lands after its accept went); IPv4 first."""
    adding = any(line.startswith(("-A ", "-N ")) for u in units for line in u.lines)
    rank = {t: i for i, t in enumerate(TABLE_ORDER if adding else ("nat", "filter"))}
    return sorted(units, key=lambda u: (u.family, rank[u.table]))


def _undo(bound: dict[int, Backend], done: list[Unit]) -> str:
    failed: list[str] = []
    for unit in reversed(done):
        try:
            bound[unit.family].commit(unit.table, list(unit.undo))
        except BackendError:
            failed.append(f"IPv{unit.family} {unit.table}")
    if failed:
        return f"{UNDO_FAILED} the {', '.join(failed)} table; run `natbox list` and check"
    if done:
        what = ", ".join(f"IPv{u.family} {u.table}" for u in done)
        return f"the {what} table{'s were' if len(done) > 1 else ' was'} undone: nothing changed"
    return "nothing was changed"


def _writers(backend: Backend, units: list[Unit]) -> dict[int, Backend]:
    """The backend per IP version. python-iptables cannot write both versions in one process (the
    second one's NAT targets do not load), so with both, IPv6 goes through ip6tables-legacy-restore:
    the same legacy tables, one transaction per table as well."""
    bound = {b.family: b for b in families(backend)}
    if backend.name == "iptc" and len({u.family for u in units}) > 1 and 6 in bound:
        bound[6] = RestoreBackend(backend.flavour, backend.runner, family=6)
    return bound


def commit(backend: Backend, units: list[Unit]) -> None:
    """Commit every unit (all of it or none of it): validate all first, undo the committed on failure."""
    bound = _writers(backend, units)
    for fam in sorted({u.family for u in units}):
        bound[fam].validate({u.table: list(u.lines) for u in units if u.family == fam})
    done: list[Unit] = []
    for unit in _order(units):
        try:
            bound[unit.family].commit(unit.table, list(unit.lines))
        except BackendError as exc:
            raise undone_or_not(exc.message, _undo(bound, done)) from None
        done.append(unit)
        journal.fault(f"set-committed-{unit.family}-{unit.table}")


def mismatches(backend: Backend, target: Target) -> list[str]:
    """How the kernel differs from `target` (empty: it matches)."""
    states = {
        s.name: s for b in families(backend) for s in forward_states(b.read(natbox_only=True))
    }
    out: list[str] = []
    for name, want in target.items():
        state = states.get(name)
        if want is None and state is not None:
            out.append(f"forward {name} is still there")
        elif want is not None and state is None:
            out.append(f"forward {name} did not read back")
        elif want is not None and state is not None:
            if not state.intact:
                out.append(state.problems[0])
            elif state.forward != want:
                out.append(f"forward {name} reads back different from its plan")
    return out


def _dump(t: Target) -> dict[str, object]:
    return {n: (f.to_dict() if f is not None else None) for n, f in t.items()}


def _journal_body(change: Change, keep: bool) -> dict[str, object]:
    """The set journal's entry: the target and the state before, and (when the change has them) the
    disabled list before and after and the saved-set entry that follows the change."""
    body: dict[str, object] = {
        "target": _dump(change.target()),
        "before": _dump(change.before_target()),
    }
    before = disabled.load()
    going = set(change.enable) | {f.name for f in change.disable}
    after = [f for f in before if f.name not in going] + change.disable
    if after != before:
        body["disabled"] = {"before": disabled.dump(before), "after": disabled.dump(after)}
    if keep and change.follow is not None:
        body["saved"] = {"from": change.follow[0], "to": change.follow[1].to_dict()}
    return body


def _settle(body: dict[str, object], finished: bool) -> list[str]:
    """What goes with the kernel change besides its rules: the disabled list as it is after the
    change (or before, when it was undone) and, once finished, the saved set's edited entry.
    Returns notes: a saved set that cannot be read does not follow, and says so (it never stops
    the change, nor its recovery)."""
    try:
        marks = body.get("disabled")
        if marks is not None:
            if not isinstance(marks, dict):
                raise ValidationError("its disabled list is not an object", "")
            disabled.write(disabled.parse(marks["after" if finished else "before"]))
        saved = body.get("saved")
        if finished and saved is not None:
            if not isinstance(saved, dict) or not isinstance(saved.get("to"), dict):
                raise ValidationError("its saved entry is not an object", "")
            new = forward_from_dict(saved["to"])
            try:
                persist.follow(str(saved["from"]), new)
            except NatboxError as exc:
                return [
                    f"the saved set did not follow the edit of {saved['from']} ({exc.message}); "
                    "natbox save records the forwards as they are"
                ]
    except (ValidationError, KeyError) as exc:
        raise NatboxError(
            f"{journal.set_path()} is not a journal natbox understands ({exc})",
            f"look at it, then delete {journal.set_path()}",
        ) from None
    return []


def _kernel_has(target: Target) -> str:
    """What the kernel holds once `target` is reached, in words: "web is in the kernel as
    changed", "dns is out of the kernel"."""
    parts = []
    for names, where in (
        ([n for n, f in target.items() if f is not None], "in the kernel as changed"),
        ([n for n, f in target.items() if f is None], "out of the kernel"),
    ):
        if names:
            parts.append(f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} {where}")
    return "; ".join(parts) or "natbox's jumps are repaired"


def execute(backend: Backend, change: Change, *, keep: bool = True) -> float:
    """Commit `change` as one transaction with the crash journal, then prove it by reading back.

    Under the natbox lock the plan is made again and must be the same (the firewall may have moved
    while the user read it). Returns the seconds it took. On any failure the kernel is as before
    and BackendError says so. `keep=False` (a confirm window): an edit's saved-set entry follows
    only when the change is confirmed (kept()).
    """
    start = time.perf_counter()
    if not change.units:
        return 0.0
    with lock.held("apply"), tables.tracked(backend):
        fresh = plan_change(
            backend,
            change.wanted,
            repair=change.repair,
            disable=[f.name for f in change.disable],
            follow=change.follow,
        )
        if (fresh.units, fresh.disable, fresh.enable) != (
            change.units,
            change.disable,
            change.enable,
        ):
            raise NatboxError(
                "the firewall changed since the plan was made; nothing was changed",
                "run natbox again",
            )
        body = _journal_body(change, keep)
        with writes(
            "nothing was changed: the journal could not be written",
            "free space or fix the permissions there, then run the command again",
        ):
            journal.begin_set(body)
        journal.fault("set-journal-written")
        try:
            commit(backend, change.units)
        except UndoFailed:
            raise  # part of it is in the kernel: the journal stays for recovery
        except BaseException:
            journal.end_set()
            raise
        wrong = mismatches(backend, change.target())
        if wrong:
            undone = _undo(_writers(backend, change.units), _order(change.units))
            if not undone.startswith(UNDO_FAILED):
                journal.end_set()  # else it stays: recovery finishes the undo
            raise undone_or_not(f"the kernel did not keep the change: {wrong[0]}", undone)
        with writes(
            f"{_kernel_has(change.target())} (read back), but natbox's record of the change "
            "could not be written",
            "fix that (space, permissions); the next natbox command (natbox recover) finishes "
            "the record from the change's journal",
            committed=True,
        ):
            change.notes.extend(_settle(body, finished=True))
            journal.fault("set-before-journal-end")
            journal.end_set()
    return time.perf_counter() - start


def converge(backend: Backend, target: Target, *, disable: Collection[str] = ()) -> Change:
    """Make the named forwards what `target` says (plan, commit, read back): one transaction."""
    change = plan_change(backend, target, disable=disable)
    execute(backend, change)
    return change


def _load_target(data: object) -> Target:
    out: Target = {}
    if isinstance(data, dict):
        for name, fwd in data.items():
            out[str(name)] = forward_from_dict(fwd) if isinstance(fwd, dict) else None
    return out


def recover_set(backend: Backend) -> str | None:
    """Finish or undo the set operation natbox died in; say which (None when there was none)."""
    with (
        lock.held("recover"),
        writes(
            "an interrupted change could not be finished: its record could not be written",
            "free space or fix the permissions there; the next natbox command (natbox recover) "
            "finishes it",
        ),
    ):
        entry = journal.pending_set()
        if entry is None:
            return None
        target, before = _load_target(entry.get("target")), _load_target(entry.get("before"))
        if not mismatches(backend, target):
            notes = _settle(entry, finished=True)
            journal.end_set()
            return "; ".join(
                [
                    f"the interrupted apply of {', '.join(target) or 'nothing'} had finished: kept it",
                    *notes,
                ]
            )
        with tables.tracked(backend):
            # The disabled list as before first: planning back to `before` must not take a forward
            # the change was enabling for one to enable (it is, again, the one to leave out).
            _settle(entry, finished=False)
            change = plan_change(backend, before, repair=False)
            if change.units:
                commit(backend, change.units)
        journal.end_set()
        return f"undid the interrupted apply of {', '.join(target)}: the forwards are as before it"


_rollback_path = rollback_record


SET_PREFIXES = ("apply:", "edit:", "enable:", "disable:")
"""How a pending change handled here is named (forward names have no colon)."""


def is_set_change(label: str) -> bool:
    """Whether the pending change `label` is a converge change (rolled back by rollback_saved)."""
    return label.startswith(SET_PREFIXES)


def save_rollback(change: Change) -> None:
    """Keep what the confirm window's rollback puts back: the forwards as before, the forwards it
    enabled disabled again; and what keeping it does (an edit's saved-set entry follows). Written
    before the watchdog is armed."""
    write_json(
        _rollback_path(),
        {
            "version": 2,
            "target": _dump(change.before_target()),
            "disable": list(change.enable),
            "keep": (
                {"from": change.follow[0], "to": change.follow[1].to_dict()}
                if change.follow is not None
                else None
            ),
        },
    )


def _load_rollback(data: object) -> tuple[Target, list[str], dict[str, object] | None]:
    """(target, names to disable again, what keeping does) from a rollback record; the flat
    {name: forward} of an older natbox is a target alone."""
    if isinstance(data, dict) and data.get("version") == 2:
        names = data.get("disable")
        keep = data.get("keep")
        return (
            _load_target(data.get("target")),
            [str(n) for n in names] if isinstance(names, list) else [],
            keep if isinstance(keep, dict) else None,
        )
    return _load_target(data), [], None


def rollback_pending() -> bool:
    """Whether a confirm window's rollback record is on disk."""
    return _rollback_path().exists()


def forget_rollback() -> None:
    """The apply was kept (or never happened): drop its rollback record."""
    remove(_rollback_path())


def kept() -> list[str]:
    """The change in the confirm window was kept: an edit's saved-set entry follows it, and the
    rollback record goes. Returns notes (a saved set that could not follow)."""
    try:
        _target, _disable, keep = _load_rollback(read_json(_rollback_path()))
    finally:
        forget_rollback()  # even unreadable: a record left here would undo the kept change later
    return _settle({"saved": keep}, finished=True) if keep is not None else []


def rollback_saved(backend: Backend) -> str:
    """The confirm window ran out: put the forwards the apply touched back as they were (and the
    forwards it enabled back among the disabled)."""
    data = read_json(_rollback_path())
    if data is None:
        return "no record of the apply to roll back"
    target, disable, _keep = _load_rollback(data)
    change = converge(backend, target, disable=disable)
    remove(_rollback_path())
    return f"rolled back the apply ({len(change.units)} tables)"
