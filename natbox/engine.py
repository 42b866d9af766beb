"""Provides the Engine: the one object the TUI talks to (and tests replace with a fake).

Every method may block (it runs iptables-save, reads /proc); the TUI calls them from thread workers.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import replace
from ipaddress import ip_address
from typing import TYPE_CHECKING

from natbox import (
    conntrack,
    converge,
    disabled,
    persist,
    tables,
    txn,
    watchdog,
)
from natbox.api import ChangePreview, Dashboard, Derived, EngineAPI, FlowSnapshot, ShownChain
from natbox.backends import Backend, families
from natbox.backends.detect import choose_backend
from natbox.errors import NatboxError, NotFoundError
from natbox.lazy import OnUse
from natbox.model import Forward, Ruleset
from natbox.overlap import Later, in_background
from natbox.paths import StateWriteError, writes
from natbox.plan import OWN_CHAINS, build_plan, jump_rule
from natbox.prefetch import generation as early_generation
from natbox.prefetch import nft_generation
from natbox.ruleset import ForwardState, forward_states, tampering
from natbox.status import disabled_forwards, display_chains
from natbox.system import (
    InterfaceStat,
    default_route_dev,
    interface_stats,
    ip_forward_enabled,
    is_root,
    route_to,
)

if TYPE_CHECKING:
    from natbox import checks as _checks
    from natbox import export, modify, trace
    from natbox import facts as _facts
    from natbox.checks import Finding
    from natbox.facts import BoxFacts
else:  # edit/disable/enable, the trace, export and the diagnosis are imported when first used
    export = OnUse("natbox.export")
    modify = OnUse("natbox.modify")
    trace = OnUse("natbox.trace")
    # Not before the dashboard's first frame: the path walk alone is ~5 ms of imports (#13).
    _checks = OnUse("natbox.checks")
    _facts = OnUse("natbox.facts")

__all__ = [
    "Dashboard",
    "Derived",
    "Engine",
    "FlowSnapshot",
    "InterfaceStat",
    "interface_stats",
    "nft_generation",
]


def _mtu(stats: dict[str, InterfaceStat], dev: str | None) -> int | None:
    return stats[dev].mtu if dev in stats else None


def drift(
    saved: list[Forward],
    states: tuple[ForwardState, ...],
    rulesets: list[Ruleset],
    held: frozenset[str] = frozenset(),
) -> tuple[frozenset[str], list[str]]:
    """What changed behind natbox's back: saved forwards whose kernel copy differs or is broken,
    saved forwards gone from the kernel (but those disabled, `held`: they are meant to be gone),
    natbox jumps no longer first in their chain (a Docker or firewall restart inserts before them)."""
    by_name = {s.name: s for s in states}
    drifted = frozenset(
        f.name
        for f in saved
        if f.name in by_name and (not by_name[f.name].intact or by_name[f.name].forward != f)
    )
    warnings = [
        f"saved forward {f.name} is not in the kernel (natbox diff shows it; natbox restore "
        "puts it back)"
        for f in saved
        if f.name not in by_name and f.name not in held
    ]
    for rs in rulesets:
        for table, pairs in OWN_CHAINS.items():
            for builtin, own in pairs:
                chain = rs.chain(table, builtin)
                if chain is None or not chain.rules:
                    continue
                jump = jump_rule(table, builtin, own).save_line
                texts = [r.text for r in chain.rules]
                if jump in texts and texts[0] != jump:
                    warnings.append(
                        f"natbox's jump is no longer first in {table} {builtin} (rules were "
                        f"inserted before it: {chain.rules[0].text[:60]}); natbox restore fixes it"
                    )
    return drifted, warnings


class Engine:
    """The real engine: this host's netfilter, conntrack and interfaces."""

    def __init__(self, backend_choice: str | None = None) -> None:
        self._choice = backend_choice
        self._backend: Backend | None = None
        self._warnings: list[str] = []
        self._forwards: list[Forward] = []
        self._recovered = False
        self._first: Later[tuple[Dashboard, int | None]] | None = None

    @property
    def read_only(self) -> bool:
        """Without root natbox can show what it may read, and changes nothing."""
        return not is_root()

    def backend(self) -> Backend:
        """The backend, chosen once (detection has no side effects)."""
        if self._backend is None:
            self._backend, det = choose_backend(self._choice)
            self._warnings = det.warnings
        return self._backend

    def prefetch(self) -> None:
        """Start the first dashboard's ruleset reads now, in a thread (the TUI calls this before
        Textual loads: iptables-save of a 10,000-rule box runs while the interpreter imports).

        Only on nft hosts: the read is tagged with the ruleset generation taken before it started,
        and `dashboard` uses it only if the generation is still the same (nothing changed since)."""
        try:
            backend = self.backend()
        except NatboxError:
            return
        if backend.flavour != "nft":
            return
        # The saves natbox.prefetch started with the process, if it did (and the generation it
        # noted before them); else they start now.
        generation = early_generation()
        if generation is None:  # no early saves (or none with a generation): they start now
            generation = nft_generation()
            if generation is None:
                return

        def first() -> tuple[Dashboard, int | None]:
            # The whole first Dashboard, while Textual loads: the screen shows it once mounted.
            # Only what the dashboard shows is read (its chains listed one by one, not saved).
            early = {b.family: b.read_shown() for b in families(backend)}
            now = nft_generation()
            return self._read_dashboard(early if now == generation else {}, interfaces=False), now

        self._first = in_background(first)

    def fingerprint(self) -> Hashable:
        """The nft ruleset generation and the conntrack count (two cheap reads, no iptables-save).

        Without nft (legacy) there is no generation: a fresh object, so the dashboard always reads.
        """
        generation = nft_generation() if self.backend().flavour == "nft" else None
        if generation is None:
            return object()
        return (generation, conntrack.table_fill().count)

    def ready_dashboard(self) -> Dashboard | None:
        """The Dashboard `prefetch` made, if it is done and its nft generation is still the current
        one (taken once); None otherwise, without waiting (`dashboard` then reads, or waits). Its
        interfaces are not read (empty): `interfaces` reads them."""
        first = self._first
        if first is None or not first.done():
            return None
        try:
            data, generation = first()
        except NatboxError:
            return None
        if generation is None or nft_generation() != generation:
            return None  # left for `dashboard`, which reads again (and keeps what it recovered)
        self._first = None
        return data

    def dashboard(self) -> Dashboard:
        """Read rules (IPv4 and IPv6), forwards, facts and interfaces: one ruleset read per family.
        The first call takes the Dashboard `prefetch` made, if the nft generation it was made
        under is still the current one."""
        first, self._first = self._first, None
        if first is not None:
            try:
                data, generation = first()
            except NatboxError:
                data, generation = None, None
            if data is not None and generation is not None and nft_generation() == generation:
                return replace(data, interfaces=self.interfaces())
            if data is not None and data.recovered:
                # Its recovery (or rollback) changed the rules, so it is read again: what natbox
                # did must still be said (the read again does not recover twice).
                fresh = self._read_dashboard()
                return replace(fresh, recovered=fresh.recovered or data.recovered)
        return self._read_dashboard()

    def interfaces(self) -> tuple[InterfaceStat, ...]:
        """This host's interfaces and their counters now, the default route's first, lo last."""
        first = default_route_dev()
        return tuple(sorted(interface_stats(), key=lambda i: (i.name == "lo", i.name != first)))

    def _read_dashboard(
        self, early: dict[int, Ruleset] | None = None, interfaces: bool = True
    ) -> Dashboard:
        """A Dashboard read now; `early`: rulesets per family read before (and still current);
        without `interfaces` its interfaces are left empty (the first one's, made while Textual
        loads: psutil's import alone is ~20 ms of the first frame, for a tab not shown yet)."""
        taken_at = time.time()
        early = early or {}
        try:
            backend = self.backend()
            rs: Ruleset | None = early.get(backend.family) or backend.read()
            failed = ""
        except NatboxError as exc:
            rs, failed = None, exc.one_line().removeprefix("natbox: ")
        base = Dashboard(
            host=socket.gethostname(),
            backend="?",
            read_only=self.read_only,
            ip_forward=ip_forward_enabled(),
            fill=conntrack.table_fill(),
            interfaces=self.interfaces() if interfaces else (),
            taken_at=taken_at,
        )
        if rs is None:
            return replace(base, error=failed)
        recovered = None
        if not self.read_only and not self._recovered:
            # Once per session, before the first look: finish what a crashed natbox left behind.
            self._recovered = True
            try:
                done = [m for m in (txn.recover(backend), converge.recover_set(backend)) if m]
                recovered = "; ".join(done) or None
            except NatboxError as exc:
                recovered = f"recovery failed: {exc.message}"
            if recovered:
                rs = backend.read()
        if not self.read_only:
            # Every poll: a confirm window whose watchdog died is taken over or rolled back here.
            try:
                supervised = watchdog.supervise()
            except NatboxError as exc:
                supervised = exc.message
            if supervised:
                recovered = supervised
                rs = backend.read()
        if recovered:
            early = {}  # read before natbox's own recovery changed the rules
        try:
            saved_set = persist.load()
        except NatboxError:
            saved_set = None
        saved = None if saved_set is None else frozenset(f.name for f in saved_set)
        complete = rs is not early.get(backend.family)
        rulesets = [rs]
        v6 = [b for b in families(backend) if b.family == 6]
        if v6:
            try:
                six = early.get(6)
                complete = complete and six is None
                rulesets.append(six or v6[0].read())
            except NatboxError as exc:
                base = replace(base, error=f"IPv6: {exc.one_line().removeprefix('natbox: ')}")
        per_family = [forward_states(r) for r in rulesets]
        forwards = tuple(s for states in per_family for s in states)
        self._forwards = [s.forward for s in forwards if s.forward is not None]
        held, held_warnings = disabled_forwards({s.name for s in forwards})
        drifted, drift_warnings = drift(
            saved_set or [], forwards, rulesets, frozenset(f.name for f in held)
        )
        return replace(
            base,
            backend=backend.label,
            forwards=forwards,
            chains=tuple(
                ShownChain(family, table, chain)
                for family, r in zip((4, 6), rulesets, strict=False)
                for table, chain in display_chains(r)
            ),
            warnings=tuple(
                dict.fromkeys(
                    [
                        *self._warnings,
                        *(w for r in rulesets for w in r.warnings),
                        *(
                            w
                            for r, states in zip(rulesets, per_family, strict=True)
                            for w in tampering(r, states)
                        ),
                        *drift_warnings,
                        *held_warnings,
                    ]
                )
            ),
            saved=saved,
            drifted=drifted,
            recovered=recovered,
            rulesets=tuple(rulesets),
            complete=complete,
            disabled=tuple(held),
        )

    def health(self, data: Dashboard) -> dict[str, list[Finding]]:
        """The cheap checks of each forward in `data`, on the rulesets it was read from (read
        whole now if `data` holds only what the dashboard shows)."""
        out: dict[str, list[Finding]] = {}
        rulesets = data.rulesets
        if not data.complete:
            rulesets = tuple(b.read() for b in families(self.backend()))
        for rs in rulesets:
            names = set(rs.forward_names())
            states = [s for s in data.forwards if s.name in names]
            out.update(self._health(rs, states, probe=False, flows=False))
        return out

    def _health(
        self, rs: Ruleset, states: list[ForwardState], *, probe: bool, flows: bool
    ) -> dict[str, list[Finding]]:
        out: dict[str, list[Finding]] = {}
        box: BoxFacts | None = None
        forwards = [s.forward for s in states if s.forward is not None]
        if forwards:
            box = _facts.box_facts(flows=flows, only=forwards)  # once for all forwards
            _facts.prefetch(box, forwards, probe=probe)  # each backend once, in parallel
        for state in states:
            findings = [
                _checks.Finding(
                    "broken",
                    _checks.ERROR,
                    f"forward {state.name}: {p}",
                    f"natbox remove {state.name}, then add it again",
                )
                for p in state.problems
            ]
            if state.forward is not None:
                box = box or _facts.box_facts(flows=flows)  # once for all forwards
                facts = _facts.gather_facts(
                    state.forward, other_side=self._other_side(), probe=probe, box=box, rs=rs
                )
                findings += _checks.diagnose(state.forward, rs, facts, existing=True)
            out[state.name] = findings
        return out

    def flows(self, head: bool = False) -> FlowSnapshot:
        """Read the conntrack table and tag flows with the forwards seen at the last dashboard().

        `head`: only the first screenful or so (a viewer's first look, before the whole table)."""
        table = conntrack.read_flows(head=conntrack.HEAD if head else None)
        return FlowSnapshot(
            table.flows,
            conntrack.ForwardIndex(self._forwards),
            conntrack.table_fill(),
            table.skipped,
        )

    def local_addresses(self) -> list[tuple[str, str]]:
        """(address, interface) of this host: the default route's interface first (where clients
        usually are), loopback last. The wizard's choices for the listen side."""
        first = default_route_dev()
        stats = sorted(interface_stats(), key=lambda i: (i.name == "lo", i.name != first))
        return [(a, i.name) for i in stats for a in i.addresses]

    def listening_ports(self) -> frozenset[tuple[str, int]]:
        """(proto, port) of local listening sockets."""
        return frozenset((proto, port) for _addr, port, proto in _facts.listeners())

    def apply_preview(self, fwd: Forward) -> dict[str, list[str]]:
        """The exact restore lines apply(fwd) would commit on this box now."""
        return txn.apply_lines(self.backend().for_family(fwd.family).read(), build_plan(fwd))

    def derive(self, listen_ip: str, backend_ip: str) -> Derived:
        """The SNAT source (route lookup), both sides' interfaces and MTUs, ip_forward."""
        stats = {i.name: i for i in interface_stats()}
        local = {a: i.name for i in stats.values() for a in i.addresses}
        listen_dev = local.get(listen_ip)
        try:
            route = route_to(ip_address(backend_ip))
        except (NatboxError, ValueError) as exc:
            text = exc.message if isinstance(exc, NatboxError) else str(exc)
            return Derived(
                None, None, listen_dev, _mtu(stats, listen_dev), None, ip_forward_enabled(), text
            )
        return Derived(
            str(route.src) if route.src else None,
            route.dev,
            listen_dev,
            _mtu(stats, listen_dev),
            _mtu(stats, route.dev),
            ip_forward_enabled(),
        )

    def _other_side(self) -> list[str]:
        self.backend()
        return [w for w in self._warnings if "also sit" in w]

    def preflight(self, fwd: Forward) -> list[Finding]:
        """Everything that would make `fwd` fail here, before it is applied."""
        # The box's facts are read while iptables-save runs (both mostly wait on the kernel).
        other_side = self._other_side()
        facts = in_background(lambda: _facts.gather_facts(fwd, other_side=other_side, probe=False))
        # The whole ruleset, read once: foreign DNATs and DROPs are what the checks look for.
        rs = self.backend().for_family(fwd.family).read()
        return _checks.preflight(fwd, rs, _facts.probed(facts(), fwd, rs))

    def doctor(self, name: str | None = None, probe: bool = True) -> dict[str, list[Finding]]:
        """Findings for the forwards in the kernel (or one), broken ones included."""
        out: dict[str, list[Finding]] = {}
        for bound in families(self.backend()):
            rs = bound.read()
            states = [s for s in forward_states(rs) if name is None or s.name == name]
            out.update(self._health(rs, states, probe=probe, flows=True))
        if name is not None and not out:
            raise NotFoundError(f"there is no forward named {name}", "natbox list shows them")
        return out

    def apply(
        self,
        fwd: Forward,
        *,
        confirm_seconds: float | None = None,
        enable_forwarding: bool = False,
        adopt: bool = False,
        judge: Callable[[list[Finding]], None] | None = None,
    ) -> txn.Outcome:
        """Apply `fwd`; with `confirm_seconds`, a detached watchdog rolls it back unless confirmed.

        With `judge`, the preflight diagnosis runs on the same ruleset read the change decides on
        (one read per command) and `judge(findings)` may raise to stop it before anything changes.
        """
        backend = self.backend()
        gate: Callable[[Ruleset], None] | None = None
        if judge is not None:
            other_side = self._other_side()
            # Read while the change takes the lock and iptables-save runs: the gate waits for it.
            facts = in_background(lambda: _facts.gather_facts(fwd, other_side=other_side))

            def gate(rs: Ruleset) -> None:
                judge(_checks.preflight(fwd, rs, facts()))

        def run() -> txn.Outcome:
            with tables.tracked(backend):  # an nft table this creates goes again once empty
                return txn.apply(
                    backend, fwd, enable_ip_forward=enable_forwarding, adopt=adopt, gate=gate
                )

        if confirm_seconds is None:
            return run()
        armed = watchdog.arm(fwd.name, confirm_seconds, self._choice)
        try:
            return run()
        except StateWriteError as exc:
            if not exc.committed:
                watchdog.disarm(armed)
                raise
            raise StateWriteError(
                exc.message, f"{exc.hint}; {watchdog.STILL_ARMED}", committed=True
            ) from None
        except BaseException:
            watchdog.disarm(armed)
            raise

    def confirm(self) -> str:
        """Keep the change waiting in its confirm window."""
        return watchdog.confirm()

    def rollback(self) -> str:
        """Roll back the change waiting in its confirm window, now."""
        return watchdog.rollback()

    def preview_remove(self, name: str) -> dict[str, list[str]]:
        """The exact lines removing `name` would commit (none for a disabled forward)."""
        try:
            return txn.preview_remove(self.backend(), name)
        except NotFoundError:
            if disabled.find(name) is None:
                raise
            return {}

    def remove(self, name: str, *, expect: Forward | None = None) -> txn.Outcome:
        """Remove a forward (all its rules, or none); an nft table natbox created goes if empty.
        A disabled forward is forgotten (nothing in the kernel changes). Refused, nothing
        touched, if the forward is no longer `expect` (as the user saw it)."""
        try:
            with tables.tracked(self.backend()):
                return txn.remove(self.backend(), name, expect)
        except NotFoundError:
            if not modify.discard(name, expect):
                raise
            return txn.Outcome(
                "forget", name, self.backend().label, notes=[f"forgot the disabled {name}"]
            )

    def _modified(
        self,
        planned: modify.Planned,
        confirm_seconds: float | None,
        enable_forwarding: bool = False,
    ) -> txn.Outcome:
        # Preflight errors stop it (carry_out, without force), as the preview showed them; an nft
        # table the change creates or empties is looked after by converge.execute.
        return modify.carry(
            self.backend(),
            planned,
            enable_forwarding=enable_forwarding,
            confirm_seconds=confirm_seconds,
            backend_choice=self._choice,
        )

    def preview_edit(self, name: str, fwd: Forward) -> ChangePreview:
        """What replacing forward `name` by `fwd` would commit, with the preflight findings of `fwd`
        (against the ruleset without the old forward)."""
        return modify.plan_edit(self.backend(), name, fwd, other_side=self._other_side()).preview()

    def edit(
        self,
        name: str,
        fwd: Forward,
        *,
        confirm_seconds: float | None = None,
        enable_forwarding: bool = False,
        expect: Forward | None = None,
    ) -> txn.Outcome:
        """Replace forward `name` by `fwd`: one transaction per table, journaled; with
        `confirm_seconds` the watchdog puts the old one back unless confirmed. Preflight errors
        stop it (as the preview shows them); so does a forward that is no longer `expect`."""
        planned = modify.plan_edit(
            self.backend(),
            name,
            fwd,
            other_side=self._other_side(),
            enable_forwarding=enable_forwarding,
            expect=expect,
        )
        return self._modified(planned, confirm_seconds, enable_forwarding)

    def preview_disable(self, name: str) -> ChangePreview:
        """What disabling `name` would commit."""
        return modify.plan_disable(self.backend(), name).preview()

    def disable(
        self, name: str, *, confirm_seconds: float | None = None, expect: Forward | None = None
    ) -> txn.Outcome:
        """Take forward `name` out and remember it (natbox disable); refused if it is no longer
        `expect`."""
        planned = modify.plan_disable(self.backend(), name, expect)
        return self._modified(planned, confirm_seconds)

    def preview_enable(self, name: str) -> ChangePreview:
        """What enabling the disabled `name` would commit, with its preflight findings."""
        return modify.plan_enable(self.backend(), name, other_side=self._other_side()).preview()

    def enable(
        self, name: str, *, confirm_seconds: float | None = None, enable_forwarding: bool = False
    ) -> txn.Outcome:
        """Put the disabled forward `name` back (natbox enable); preflight errors stop it."""
        planned = modify.plan_enable(
            self.backend(),
            name,
            other_side=self._other_side(),
            enable_forwarding=enable_forwarding,
        )
        return self._modified(planned, confirm_seconds, enable_forwarding)

    def kill(self, flows: list[conntrack.Flow]) -> int:
        """Delete flows by tuple."""
        return conntrack.kill(flows)

    def kill_forward_flows(self, name: str) -> int:
        """Delete every flow of forward `name` (read, select by its listen ip:port, delete)."""
        snap = self.flows()
        return conntrack.kill(conntrack.select(snap.flows, index=snap.index, forward=name))

    def _forward(self, name: str) -> Forward:
        for state in txn.all_forward_states(self.backend()):
            if state.name == name and state.forward is not None and state.intact:
                return state.forward
        raise NotFoundError(f"there is no intact forward named {name}", "natbox doctor shows why")

    def trace(
        self,
        fwd: Forward,
        *,
        timeout: float = 30.0,
        on_packet: Callable[[trace.TracedPacket], None] | None = None,
        stop: threading.Event | None = None,
    ) -> trace.Result:
        """The kernel's path for the forward's next connection (TRACE rules for the moment)."""
        why = trace.unavailable()
        if why is not None:
            raise trace.TraceUnavailable(why, "natbox doctor diagnoses without a trace")
        return trace.run(fwd, timeout=timeout, on_packet=on_packet, stop=stop)

    def save(self, name: str) -> str:
        """Add `name` to the saved set and install the boot-time restore (as `natbox save`)."""
        txn.require_root()
        fwd = self._forward(name)
        saved = [f for f in persist.load() if f.name != name]
        with writes(
            f"{name} was not saved: the saved set could not be written (its rules in the kernel "
            "stay as they are)",
            "free space or fix the permissions there, then w again",
        ):
            path = persist.write([*saved, fwd])
        with writes(
            f"saved {name} to {path}, but the boot-time restore could not be installed",
            "free space or fix the permissions there, then w again",
        ):
            persist.install_boot(txn.forwarding_enabled_by_natbox())
        return f"saved {name} to {path}: restored at boot"

    def forget(self, name: str) -> str:
        """Drop `name` from the saved set (as `natbox forget`)."""
        txn.require_root()
        saved = persist.load()
        if name not in [f.name for f in saved]:
            raise NatboxError(f"{name} is not saved", "w saves the marked forward")
        with writes(
            f"{name} was not forgotten: the saved set could not be written (boot still restores "
            "it; its rules in the kernel stay as they are)",
            "free space or fix the permissions there, then f again",
        ):
            persist.write([f for f in saved if f.name != name])
        return f"forgot {name}: its rules stay until removed, it is not restored at boot"

    def export(self, name: str, fmt: str) -> str:
        """Forward `name` for other tools (as `natbox export`)."""
        return export.export([self._forward(name)], fmt)


if TYPE_CHECKING:  # mypy checks that Engine keeps the contract the TUI sees
    _contract: EngineAPI = Engine()
