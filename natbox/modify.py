"""Provides edit, disable and enable: one change to one forward, as one transaction.

Each is a converge change carried out as `natbox apply FILE` carries out its own (declare.carry_out):
per IP version and table one `iptables-restore --noflush` that takes the old rules out and puts the
new ones in (filter before nat), all of them validated first, the committed ones undone if a later
table is refused or the read-back differs, journaled (journal-set.json: `natbox recover` finishes or
undoes a crash midway) and, in a confirm window, converged back to the state before by the watchdog.

    edit     the forward in the kernel becomes another (same name unless renamed); a saved forward's
             entry in forwards.json follows once the edit is kept
    disable  its rules go; the forward is remembered whole in natbox's state (natbox.disabled)
    enable   the remembered forward comes back through preflight, apply and read-back

Input is checked whole before anything is read; a name or listen port that is taken, or (unless
forced) a preflight error, stops the change before anything is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from natbox import converge, declare, disabled, lock, persist, txn, watchdog
from natbox.api import ChangePreview
from natbox.backends import Backend
from natbox.errors import ConflictError, NatboxError, NotFoundError, ValidationError
from natbox.model import (
    PROTOS,
    Endpoint,
    Forward,
    IPAddress,
    IPNetwork,
    name_problem,
    parse_cidr,
    parse_ip,
)
from natbox.ruleset import ForwardState, conflicts
from natbox.system import route_to

if TYPE_CHECKING:
    from natbox.model import Proto
from natbox.txn import Outcome

ANY = "any"
"""`--from any`: clients from anywhere again."""

Route = Callable[[IPAddress], IPAddress | None]
"""The source address of this box's route to an address (None: the route has none)."""


@dataclass(frozen=True)
class Edits:
    """What `natbox edit` was told to change, as typed (None: leave it as it is)."""

    listen: str | None = None
    backend: str | None = None
    proto: str | None = None
    name: str | None = None
    snat: str | None = None
    masquerade: bool = False
    mss_clamp: bool | None = None
    local: bool | None = None
    sources: tuple[str, ...] | None = None
    """Replaces the client networks; ("any",) drops them."""


@dataclass(frozen=True)
class Parsed:
    """Edits checked field by field (the whole forward is checked when it is built)."""

    listen: Endpoint | None
    backend: Endpoint | None
    proto: Proto | None
    name: str | None
    snat: IPAddress | None
    masquerade: bool
    mss_clamp: bool | None
    local: bool | None
    sources: tuple[IPNetwork, ...] | None


def parse(e: Edits) -> Parsed:
    """Check every field the edit gives, before anything is read (ValidationError names the first)."""
    if e.proto is not None and e.proto not in PROTOS:
        raise ValidationError(
            f"protocol {e.proto!r} is not one of tcp, udp, both", "use --proto tcp|udp|both"
        )
    if e.name is not None and (problem := name_problem(e.name)):
        raise ValidationError(problem, "pass --name with a valid name")
    if e.snat is not None and e.masquerade:
        raise ValidationError(
            "both an SNAT source and masquerade were given", "pick one: --snat ADDR or --masquerade"
        )
    sources: tuple[IPNetwork, ...] | None = None
    if e.sources is not None:
        if ANY in e.sources and len(e.sources) > 1:
            raise ValidationError(
                "--from any (clients from anywhere) cannot go with client networks",
                "give --from any alone, or only networks",
            )
        sources = tuple(dict.fromkeys(parse_cidr(s) for s in e.sources if s != ANY))
    parsed = Parsed(
        listen=Endpoint.parse(e.listen, "listen address") if e.listen is not None else None,
        backend=Endpoint.parse(e.backend, "backend") if e.backend is not None else None,
        proto=cast("Proto", e.proto) if e.proto is not None else None,
        name=e.name,
        snat=parse_ip(e.snat, "SNAT source") if e.snat is not None else None,
        masquerade=e.masquerade,
        mss_clamp=e.mss_clamp,
        local=e.local,
        sources=sources,
    )
    if parsed == Parsed(None, None, None, None, None, False, None, None, None):
        raise ValidationError(
            "the edit changes nothing",
            "give one or more of --listen, --backend, --proto, --name, --snat, --masquerade, "
            "--[no-]mss-clamp, --[no-]local, --from",
        )
    return parsed


def route_source(ip: IPAddress) -> IPAddress | None:
    """The source address of this box's route to `ip` (as `natbox add` derives the SNAT source)."""
    return route_to(ip).src


def edited(old: Forward, p: Parsed, route: Route = route_source) -> tuple[Forward, list[str]]:
    """The forward `old` becomes, and notes for the user.

    A forward that SNATs to an address (not masquerade) and moves to another backend address gets
    the source of the route to the new backend, as `natbox add` would derive it, unless --snat or
    --masquerade says otherwise: the old source may not even be on the new backend's side.
    """
    backend = p.backend or old.backend
    snat, masquerade = old.snat, old.masquerade
    notes: list[str] = []
    if p.masquerade:
        snat, masquerade = None, True
    elif p.snat is not None:
        snat, masquerade = p.snat, False
    elif not old.masquerade and backend.ip != old.backend.ip:
        try:
            derived = route(backend.ip)
        except NatboxError as exc:
            raise NatboxError(
                f"this box has no route to the new backend {backend.ip}: "
                + exc.message.split(": ", 1)[-1],
                "add a route to it, or pass --snat ADDR or --masquerade",
            ) from None
        if derived is None:
            raise NatboxError(
                f"the route to {backend.ip} has no source address",
                "pass --snat ADDR or --masquerade",
            )
        if derived != old.snat:
            notes.append(
                f"SNAT source {old.snat} → {derived}: the route to the new backend (--snat sets it)"
            )
        snat = derived
    new = Forward(
        name=p.name or old.name,
        proto=p.proto or old.proto,
        listen=p.listen or old.listen,
        backend=backend,
        snat=snat,
        masquerade=masquerade,
        mss_clamp=old.mss_clamp if p.mss_clamp is None else p.mss_clamp,
        sources=old.sources if p.sources is None else p.sources,
        local=old.local if p.local is None else p.local,
    )
    return new, notes


@dataclass
class Planned:
    """An edit, disable or enable, planned against the kernel as it is now (read only)."""

    action: str
    name: str
    before: Forward | None
    after: Forward | None
    report: declare.Report
    notes: list[str] = field(default_factory=list)

    @property
    def change(self) -> converge.Change:
        """The converge change that carries it out."""
        return self.report.change

    def lines(self) -> dict[str, list[str]]:
        """The restore lines per table (`ip6 nat` for IPv6 when the change spans both versions)."""
        units = self.change.units
        mixed = len({u.family for u in units}) > 1
        return {
            (f"ip6 {u.table}" if mixed and u.family == 6 else u.table): list(u.lines) for u in units
        }

    def preview(self) -> ChangePreview:
        """What the dashboard shows before it asks."""
        return ChangePreview(
            self.action,
            self.name,
            self.before,
            self.after,
            self.lines(),
            tuple(f for found in self.report.findings.values() for f in found),
            tuple(self.notes),
        )

    def what(self) -> str:
        """The change in a few words, e.g. `backend 10.0.2.50:80 → 10.0.2.51:80`."""
        if self.action == "disable":
            return f"taken out, remembered (natbox enable {self.name} puts it back)"
        if self.action == "enable":
            return "put back as it was disabled"
        assert self.before is not None and self.after is not None
        return declare.field_changes(self.before, self.after)

    def render(self, verb: str = "would") -> list[str]:
        """The plan (or what was done) in plain text."""
        shown = self.after or self.before
        assert shown is not None
        out = [f"{self.action} {self.name} via {self.report.backend}: {declare.describe(shown)}"]
        if self.change.changed:
            out.append(f"  {self.what()}")
        out.extend(declare.render_findings(self.report.findings))
        if self.change.changed:
            out.append(f"rules natbox {verb} commit (one transaction per table):")
            out.extend(declare.render_units(self.change))
        else:
            out.append(f"nothing to change: {self.name} is already that")
        out.extend(f"note: {n}" for n in [*self.notes, *self.report.notes])
        return out

    def to_dict(self) -> dict[str, object]:
        """The stable JSON form (`--json`)."""
        return {
            "action": self.action,
            "name": self.name,
            "backend": self.report.backend,
            "from": self.before.to_dict() if self.before else None,
            "to": self.after.to_dict() if self.after else None,
            "changed": self.change.changed,
            "applied": self.report.applied,
            "findings": [
                {"forward": n, **f.to_dict()}
                for n, found in self.report.findings.items()
                for f in found
            ],
            "lines": declare.unit_lines(self.change),
            "notes": [*self.notes, *self.report.notes],
            "seconds": round(self.report.seconds, 4),
        }


def _in_kernel(backend: Backend, name: str, verb: str) -> tuple[ForwardState, list[str]]:
    """Forward `name` as the kernel has it (intact), and the names of all forwards there."""
    states = txn.all_forward_states(backend)
    state = next((s for s in states if s.name == name), None)
    if state is None:
        if disabled.find(name) is not None:
            raise NatboxError(
                f"forward {name} is disabled: there is nothing in the kernel to {verb}",
                f"natbox enable {name} puts it back",
            )
        known = ", ".join(s.name for s in states) or "none"
        raise NotFoundError(
            f"there is no forward named {name}", f"natbox list shows them (now: {known})"
        )
    if not state.intact or state.forward is None:
        problem = state.problems[0] if state.problems else "it cannot be read back"
        raise NatboxError(
            f"forward {name} is broken ({problem}), so natbox cannot {verb} it as it was",
            f"natbox doctor {name}; natbox remove {name} and add it again",
        )
    return state, [s.name for s in states]


def _report(backend: Backend, name: str, change: converge.Change) -> declare.Report:
    return declare.Report(name, backend.label, change, check=True)


def _diagnose(
    planned: Planned, diagnose: bool, other_side: list[str], enable_forwarding: bool
) -> Planned:
    if diagnose and planned.change.changed:
        planned.report.findings = declare.diagnose_change(
            planned.change, other_side, enable_forwarding
        )
    return planned


def plan_edit(
    backend: Backend,
    name: str,
    edit: Parsed | Forward,
    *,
    route: Route = route_source,
    diagnose: bool = True,
    other_side: list[str] | None = None,
    enable_forwarding: bool = False,
    expect: Forward | None = None,
) -> Planned:
    """Plan replacing forward `name` by what `edit` makes of it (or by the Forward given);
    `expect`: the forward as the user saw it (the change is refused if it is no longer that)."""
    state, names = _in_kernel(backend, name, "edit")
    old = state.forward
    assert old is not None
    _as_shown(name, old, expect)
    new, notes = (edit, []) if isinstance(edit, Forward) else edited(old, edit, route)
    if new.name != name:
        if new.name in names:
            raise ConflictError(f"a forward named {new.name} already exists", "pick another --name")
        txn.refuse_disabled_name(new.name)
        if new.name in {f.name for f in persist.load()}:
            raise ConflictError(
                f"the saved set has a forward named {new.name}",
                f"natbox forget {new.name} first, or pick another --name",
            )
    target: converge.Target = {name: new} if new.name == name else {name: None, new.name: new}
    change = converge.plan_change(backend, target, follow=(name, new))
    if change.changed and new.family in change.before:
        # Hard, like add's: another forward on the new listen port (--force does not pass this).
        conflicts(declare.without(change.before[new.family], {name}), new)
    planned = Planned("edit", name, old, new, _report(backend, name, change), notes)
    return _diagnose(planned, diagnose, other_side or [], enable_forwarding)


_as_shown = txn.as_shown


def plan_disable(backend: Backend, name: str, expect: Forward | None = None) -> Planned:
    """Plan taking forward `name` out while remembering it (`expect`: as for plan_edit)."""
    state, _names = _in_kernel(backend, name, "disable")
    _as_shown(name, state.forward, expect)
    if any(f.name == name for f in disabled.load()):
        # A live forward and a disabled one can share a name (one added while the other was
        # disabled): disabling the live one would overwrite the remembered copy without a word.
        raise ConflictError(
            f"a disabled forward is already named {name}",
            f"natbox edit {name} --name NEW renames the live one; then disable that",
        )
    change = converge.plan_change(backend, {name: None}, disable=[name])
    return Planned("disable", name, state.forward, None, _report(backend, name, change))


def plan_enable(
    backend: Backend,
    name: str,
    *,
    diagnose: bool = True,
    other_side: list[str] | None = None,
    enable_forwarding: bool = False,
) -> Planned:
    """Plan putting the disabled forward `name` back as it was."""
    held = disabled.load()
    fwd = next((f for f in held if f.name == name), None)
    if fwd is None:
        if any(s.name == name for s in txn.all_forward_states(backend)):
            raise NatboxError(f"forward {name} is not disabled", "natbox list shows it")
        known = ", ".join(f.name for f in held) or "none"
        raise NotFoundError(
            f"there is no disabled forward named {name}",
            f"natbox list shows them (disabled now: {known})",
        )
    change = converge.plan_change(backend, {name: fwd})
    if change.replaced or change.unchanged:
        raise ConflictError(
            f"a forward named {name} is in the kernel as well as disabled",
            f"natbox remove {name} takes the one in the kernel out; natbox enable {name} then "
            "puts the disabled one back",
        )
    if fwd.family in change.before:
        conflicts(change.before[fwd.family], fwd)  # hard, like add's
    planned = Planned("enable", name, fwd, fwd, _report(backend, name, change))
    return _diagnose(planned, diagnose, other_side or [], enable_forwarding)


def carry(
    backend: Backend,
    planned: Planned,
    *,
    force: bool = False,
    enable_forwarding: bool = False,
    confirm_seconds: float | None = None,
    backend_choice: str | None = None,
) -> Outcome:
    """Carry the planned change out (one transaction; in the confirm window if asked)."""
    waiting = watchdog.pending()
    if waiting is not None:
        # Its rollback puts back the forwards as they were before it: a disable, edit or enable
        # made meanwhile would be undone by it, or a disabled forward's copy lost.
        raise ConflictError(
            f"{waiting.name} still waits for confirmation ({waiting.seconds_left:.0f} s left)",
            "natbox confirm (or natbox rollback) first, then change the forward",
        )
    report = planned.report
    declare.carry_out(
        backend,
        report,
        force=force,
        enable_forwarding=enable_forwarding,
        confirm_seconds=confirm_seconds,
        backend_choice=backend_choice,
        label=f"{planned.action}:{planned.name}",
    )
    notes = list(report.notes)  # the plan's own notes were shown with the preview
    old, new = planned.before, planned.after
    if planned.action == "edit" and old and new and old.listen != new.listen:
        notes.extend(txn.flush_flows(old, backend.runner))  # flows to the old listen address
    return Outcome(
        planned.action, planned.name, backend.label, planned.lines(), notes, report.seconds
    )


def discard(name: str, expect: Forward | None = None) -> bool:
    """Forget the disabled forward `name` for good (False: there is none); refused if it is no
    longer `expect`."""
    with lock.held(f"forgetting {name}"):
        held = disabled.load()
        if all(f.name != name for f in held):
            return False
        _as_shown(name, next(f for f in held if f.name == name), expect)
        disabled.write([f for f in held if f.name != name])
    return True
