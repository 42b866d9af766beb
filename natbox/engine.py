"""Provides the Engine: the one object the TUI talks to (and tests replace with a fake).

Every method may block (it runs iptables-save, reads /proc); the TUI calls them from thread workers.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address

from natbox import conntrack, persist, tables, txn, watchdog
from natbox.backends import Backend
from natbox.backends.detect import choose_backend
from natbox.checks import ERROR, Finding, diagnose, preflight
from natbox.errors import NatboxError, NotFoundError
from natbox.facts import BoxFacts, box_facts, gather_facts, prefetch
from natbox.model import Chain, Forward, Ruleset
from natbox.ruleset import ForwardState, forward_states
from natbox.status import display_chains
from natbox.system import InterfaceStat, interface_stats, ip_forward_enabled, is_root, route_to


@dataclass
class Dashboard:
    """Everything the dashboard shows, read in one go."""

    host: str
    backend: str
    read_only: bool
    ip_forward: bool
    fill: conntrack.Fill
    forwards: list[ForwardState] = field(default_factory=list)
    chains: list[tuple[str, Chain]] = field(default_factory=list)
    """(table, chain) for the watched built-in chains and natbox's own, in display order."""
    interfaces: list[InterfaceStat] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    taken_at: float = 0.0
    saved: set[str] | None = None
    """Names in the saved set (None: it could not be read)."""
    recovered: str | None = None
    """What crash recovery did before this read, if anything."""
    health: dict[str, list[Finding]] = field(default_factory=dict)
    """Each forward's findings (the cheap checks: no backend probe, no conntrack read)."""


@dataclass(frozen=True)
class Derived:
    """What natbox works out from the listen and backend addresses (the wizard shows and prefills it)."""

    snat: str | None
    """The local address the kernel uses to reach the backend."""
    backend_dev: str | None
    listen_dev: str | None
    mtu_listen: int | None
    mtu_backend: int | None
    ip_forward: bool
    route_error: str = ""

    @property
    def mss_suggested(self) -> bool:
        """The two sides' MTUs differ: clamp the MSS."""
        return bool(self.mtu_listen and self.mtu_backend and self.mtu_listen != self.mtu_backend)


@dataclass
class FlowSnapshot:
    """One read of the conntrack table, with the index that tags flows with forwards."""

    flows: list[conntrack.Flow]
    index: conntrack.ForwardIndex
    fill: conntrack.Fill
    skipped: int = 0


def _mtu(stats: dict[str, InterfaceStat], dev: str | None) -> int | None:
    return stats[dev].mtu if dev in stats else None


class Engine:
    """The real engine: this host's netfilter, conntrack and interfaces."""

    def __init__(self, backend_choice: str | None = None) -> None:
        self._choice = backend_choice
        self._backend: Backend | None = None
        self._warnings: list[str] = []
        self._forwards: list[Forward] = []
        self._recovered = False

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

    def dashboard(self) -> Dashboard:
        """Read rules, forwards, facts and interfaces."""
        data = Dashboard(
            host=socket.gethostname(),
            backend="?",
            read_only=self.read_only,
            ip_forward=ip_forward_enabled(),
            fill=conntrack.table_fill(),
            interfaces=interface_stats(),
            taken_at=time.time(),
        )
        try:
            backend = self.backend()
            data.backend = backend.label
            rs = backend.read()
        except NatboxError as exc:
            data.error = exc.one_line().removeprefix("natbox: ")
            return data
        if not self.read_only and not self._recovered:
            # Once per session, before the first look: finish what a crashed natbox left behind.
            self._recovered = True
            try:
                data.recovered = txn.recover(backend)
            except NatboxError as exc:
                data.recovered = f"recovery failed: {exc.message}"
            if data.recovered:
                rs = backend.read()
        if not self.read_only:
            # Every poll: a confirm window whose watchdog died is taken over or rolled back here.
            try:
                supervised = watchdog.supervise()
            except NatboxError as exc:
                supervised = exc.message
            if supervised:
                data.recovered = supervised
                rs = backend.read()
        try:
            data.saved = {f.name for f in persist.load()}
        except NatboxError:
            data.saved = None
        data.forwards = forward_states(rs)
        v6 = [b for b in txn.families(backend) if b.family == 6]
        rs6 = v6[0].read(natbox_only=True) if v6 else None
        v6_states = forward_states(rs6) if rs6 is not None else []
        data.forwards += v6_states
        self._forwards = [s.forward for s in data.forwards if s.forward is not None]
        data.chains = display_chains(rs)
        data.warnings = list(dict.fromkeys([*self._warnings, *rs.warnings]))
        data.health = self._health(
            rs, [s for s in data.forwards if s not in v6_states], probe=False, flows=False
        )
        if rs6 is not None:
            data.health.update(self._health(rs6, v6_states, probe=False, flows=False))
        return data

    def _health(
        self, rs: Ruleset, states: list[ForwardState], *, probe: bool, flows: bool
    ) -> dict[str, list[Finding]]:
        out: dict[str, list[Finding]] = {}
        box: BoxFacts | None = None
        forwards = [s.forward for s in states if s.forward is not None]
        if forwards:
            box = box_facts(flows=flows)  # once for all forwards
            prefetch(box, forwards, probe=probe)  # each backend once, in parallel
        for state in states:
            findings = [
                Finding(
                    "broken",
                    ERROR,
                    f"forward {state.name}: {p}",
                    f"natbox remove {state.name}, then add it again",
                )
                for p in state.problems
            ]
            if state.forward is not None:
                box = box or box_facts(flows=flows)  # once for all forwards
                facts = gather_facts(
                    state.forward, other_side=self._other_side(), probe=probe, box=box, rs=rs
                )
                findings += diagnose(state.forward, rs, facts, existing=True)
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
        """(address, interface) of this host, loopback last: the wizard's choices for the listen side."""
        return [(a, i.name) for i in interface_stats() for a in i.addresses]

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
        # The whole ruleset, read once: foreign DNATs and DROPs are what the checks look for.
        rs = self.backend().for_family(fwd.family).read()
        facts = gather_facts(fwd, other_side=self._other_side(), rs=rs)
        return preflight(fwd, rs, facts)

    def doctor(self, name: str | None = None, probe: bool = True) -> dict[str, list[Finding]]:
        """Findings for the forwards in the kernel (or one), broken ones included."""
        out: dict[str, list[Finding]] = {}
        for bound in txn.families(self.backend()):
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
            facts = gather_facts(fwd, other_side=self._other_side())

            def gate(rs: Ruleset) -> None:
                judge(preflight(fwd, rs, facts))

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
        """The exact lines removing `name` would commit."""
        return txn.preview_remove(self.backend(), name)

    def remove(self, name: str) -> txn.Outcome:
        """Remove a forward (all its rules, or none); an nft table natbox created goes if empty."""
        with tables.tracked(self.backend()):
            return txn.remove(self.backend(), name)

    def kill(self, flows: list[conntrack.Flow]) -> int:
        """Delete flows by tuple."""
        return conntrack.kill(flows)
