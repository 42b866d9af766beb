"""Provides EngineAPI, the contract the TUI sees, and the immutable snapshots it hands over.

`Engine` (the host) and `SampleEngine` (fixed data for tests, snapshots and the demo benchmark) both
implement it; mypy checks both against it (a typed assignment at the end of engine.py and of
sample.py), so they cannot drift.
Every method may block: the TUI calls them from thread workers and passes their results by message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from natbox import conntrack
from natbox.model import Chain, Forward, Ruleset
from natbox.ruleset import ForwardState
from natbox.system import InterfaceStat

if TYPE_CHECKING:  # annotations only: the diagnosis and the trace load when first used (#13)
    from natbox.checks import Finding
    from natbox.trace import Result as TraceResult
    from natbox.trace import TracedPacket
    from natbox.txn import Outcome

__all__ = [
    "ChangePreview",
    "Dashboard",
    "Derived",
    "EngineAPI",
    "FlowSnapshot",
    "InterfaceStat",
    "ShownChain",
]


@dataclass(frozen=True)
class ShownChain:
    """A chain the dashboard lists: IPv4 or IPv6, its table, the chain with its rules."""

    family: int
    table: str
    chain: Chain

    @property
    def key(self) -> str:
        """Stable across reads: `4/nat/PREROUTING`."""
        return f"{self.family}/{self.table}/{self.chain.name}"

    @property
    def title(self) -> str:
        """`nat PREROUTING` (IPv4) or `ip6 nat PREROUTING`."""
        prefix = "ip6 " if self.family == 6 else ""
        return f"{prefix}{self.table} {self.chain.name}"


@dataclass(frozen=True)
class Dashboard:
    """One read of the rules (IPv4 and IPv6), forwards, facts and interfaces: all the dashboard needs
    before flows and health arrive. Frozen: the TUI reads it, never changes it."""

    host: str
    backend: str
    read_only: bool
    ip_forward: bool
    fill: conntrack.Fill
    forwards: tuple[ForwardState, ...] = ()
    chains: tuple[ShownChain, ...] = ()
    """The watched built-in chains and natbox's own, IPv4 then IPv6, in display order."""
    interfaces: tuple[InterfaceStat, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str | None = None
    taken_at: float = 0.0
    saved: frozenset[str] | None = None
    """Names in the saved set (None: it could not be read)."""
    drifted: frozenset[str] = frozenset()
    """Saved forwards whose rules in the kernel are not what was saved (changed or broken behind
    natbox's back): `natbox diff` shows how, `natbox restore` puts them back."""
    recovered: str | None = None
    """What crash recovery did before this read, if anything."""
    disabled: tuple[Forward, ...] = ()
    """Forwards taken out by `natbox disable`, remembered whole (`enable` puts them back); none of
    them is in `forwards`."""
    rulesets: tuple[Ruleset, ...] = field(default=(), compare=False, repr=False)
    """The rulesets read (IPv4, then IPv6 if any): the health check works on them, not a new read."""
    complete: bool = True
    """Whether `rulesets` hold every rule. False for the first screen's early read, which parsed
    only what the dashboard shows (natbox's rules and the NAT/FORWARD built-ins'): the health
    check, which follows jumps into other software's chains, reads the whole ruleset itself."""


@dataclass(frozen=True)
class ChangePreview:
    """What an edit, disable or enable of one forward would do, before it is done: the forward before
    and after, the exact restore lines (old rules out and new ones in, one transaction per table)
    and the preflight findings of what comes in (errors stop the change)."""

    action: str
    """"edit", "disable" or "enable"."""
    name: str
    before: Forward | None
    """The forward as it is now (for enable: as it was disabled)."""
    after: Forward | None
    """What it becomes (None: disabled)."""
    lines: dict[str, list[str]]
    """Per table (`ip6 nat` when the change spans both IP versions), the lines committed."""
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether anything would be committed."""
        return any(self.lines.values())

    @property
    def blocked(self) -> bool:
        """Whether a preflight error stops the change."""
        from natbox.checks import ERROR

        return any(f.severity == ERROR for f in self.findings)


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


class EngineAPI(Protocol):
    """What the TUI may ask of an engine. Every call may block; errors are NatboxError."""

    @property
    def read_only(self) -> bool:
        """Without root nothing can be changed."""
        ...

    def fingerprint(self) -> Hashable:
        """Something cheap that changes when the rules may have changed (the nft generation and the
        conntrack count): the dashboard skips the full read when it is the same as last time."""
        ...

    def dashboard(self) -> Dashboard:
        """One read of the rules (both families), forwards, facts and interfaces; no flows, no health."""
        ...

    def interfaces(self) -> tuple[InterfaceStat, ...]:
        """This host's interfaces and their counters now (no ruleset read), the default route's
        first: what the Interfaces tab polls."""
        ...

    def ready_dashboard(self) -> Dashboard | None:
        """The first Dashboard, if it was made ahead (while the UI loaded), is there already and
        is still current; never blocks. None: read one with `dashboard` as usual. Its interfaces
        may be empty (not read yet): `interfaces` reads them."""
        ...

    def health(self, data: Dashboard) -> Mapping[str, Sequence[Finding]]:
        """The cheap checks of each forward in `data` (no backend probe, no conntrack read)."""
        ...

    def flows(self, head: bool = False) -> FlowSnapshot:
        """One read of the conntrack table, tagged with the forwards of the last dashboard();
        `head`: only the first screenful or so (the viewer's first look)."""
        ...

    def local_addresses(self) -> list[tuple[str, str]]:
        """(address, interface) of this box; the interface of the default route first, lo last."""
        ...

    def listening_ports(self) -> frozenset[tuple[str, int]]:
        """(proto, port) bound on this box: the wizard suggests a port outside these."""
        ...

    def derive(self, listen_ip: str, backend_ip: str) -> Derived:
        """The SNAT source (route lookup), both sides' interfaces and MTUs, ip_forward."""
        ...

    def preflight(self, fwd: Forward) -> list[Finding]:
        """Everything that would make `fwd` fail here."""
        ...

    def apply_preview(self, fwd: Forward) -> dict[str, list[str]]:
        """Per table, the exact restore lines apply(fwd) would commit (no chain that exists)."""
        ...

    def doctor(self, name: str | None = None, probe: bool = True) -> dict[str, list[Finding]]:
        """Findings for the forwards in the kernel (or one), broken ones included."""
        ...

    def apply(
        self, fwd: Forward, *, confirm_seconds: float | None = None, enable_forwarding: bool = False
    ) -> Outcome:
        """Apply `fwd`; with `confirm_seconds` it is rolled back unless confirmed in time."""
        ...

    def confirm(self) -> str:
        """Keep the change waiting in its confirm window; returns its name."""
        ...

    def rollback(self) -> str:
        """Roll back the change waiting in its confirm window; returns its name."""
        ...

    def preview_remove(self, name: str) -> dict[str, list[str]]:
        """The exact lines removing `name` would commit."""
        ...

    def remove(self, name: str, *, expect: Forward | None = None) -> Outcome:
        """Remove a forward (all its rules, or none); a disabled forward is forgotten. `expect`:
        the forward as the user saw it; refused (ConflictError) if it changed since."""
        ...

    def preview_edit(self, name: str, fwd: Forward) -> ChangePreview:
        """What replacing forward `name` by `fwd` would commit (fwd.name may be a new name)."""
        ...

    def edit(
        self,
        name: str,
        fwd: Forward,
        *,
        confirm_seconds: float | None = None,
        enable_forwarding: bool = False,
        expect: Forward | None = None,
    ) -> Outcome:
        """Replace forward `name` by `fwd` in one transaction; with `confirm_seconds` the old one comes
        back unless confirmed in time. A saved forward's entry follows the edit once it is kept.
        `expect`: the forward as the user saw it; refused (ConflictError) if it changed since."""
        ...

    def preview_disable(self, name: str) -> ChangePreview:
        """What disabling forward `name` would commit."""
        ...

    def disable(
        self, name: str, *, confirm_seconds: float | None = None, expect: Forward | None = None
    ) -> Outcome:
        """Take forward `name` out of the kernel and remember it whole (enable puts it back);
        refused if it is no longer `expect`."""
        ...

    def preview_enable(self, name: str) -> ChangePreview:
        """What enabling the disabled forward `name` would commit, with its preflight findings."""
        ...

    def enable(
        self, name: str, *, confirm_seconds: float | None = None, enable_forwarding: bool = False
    ) -> Outcome:
        """Put the disabled forward `name` back (preflight, apply, read back); with
        `confirm_seconds` it is disabled again unless confirmed in time."""
        ...

    def kill(self, flows: list[conntrack.Flow]) -> int:
        """Delete flows by tuple; returns how many went."""
        ...

    def kill_forward_flows(self, name: str) -> int:
        """Delete every flow of forward `name`; returns how many went."""
        ...

    def trace(
        self,
        fwd: Forward,
        *,
        timeout: float = 30.0,
        on_packet: Callable[[TracedPacket], None] | None = None,
        stop: threading.Event | None = None,
    ) -> TraceResult:
        """The kernel's path for the forward's next connection (`natbox trace`)."""
        ...

    def save(self, name: str) -> str:
        """Add forward `name` to the saved set (restored at boot); says what was done."""
        ...

    def forget(self, name: str) -> str:
        """Drop forward `name` from the saved set (its rules stay); says what was done."""
        ...

    def export(self, name: str, fmt: str) -> str:
        """Forward `name` as `restore`, `commands` or `ansible` text."""
        ...
