"""Provides the app's messages (past tense: they report what happened). Each carries an immutable
result from a thread worker to the UI thread, which alone touches widgets."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

from natbox.api import Dashboard, FlowSnapshot, InterfaceStat
from natbox.conntrack import Fill, Flow

if TYPE_CHECKING:  # the diagnosis loads when first used (not before the first frame, #13)
    from natbox.checks import Finding


class DashboardLoaded(Message):
    """A fresh read of rules, forwards, facts and interfaces (no flows, no health yet)."""

    def __init__(self, data: Dashboard, fingerprint: Hashable, seq: int = 0) -> None:
        self.data = data
        self.fingerprint = fingerprint
        self.seq = seq
        """Which read this is: a read that ends after a newer one (or after a change the screen made
        itself) is stale and is dropped."""
        super().__init__()


class DashboardUnchanged(Message):
    """The fingerprint said nothing changed: only the interface counters were read (or only they
    were asked for)."""

    def __init__(
        self, interfaces: tuple[InterfaceStat, ...] | None, taken_at: float, seq: int = 0
    ) -> None:
        self.interfaces = interfaces
        self.taken_at = taken_at
        self.seq = seq
        """Which read this is (as DashboardLoaded's): interfaces from an older read that ends
        after a newer one are dropped."""
        super().__init__()


class HealthChecked(Message):
    """The cheap checks of each forward of one dashboard read."""

    def __init__(self, health: Mapping[str, Sequence[Finding]], taken_at: float) -> None:
        self.health = health
        self.taken_at = taken_at
        super().__init__()


@dataclass(frozen=True)
class FlowCount:
    """A forward's flows and their bytes."""

    flows: int
    bytes: int


class FlowsCounted(Message):
    """Per-forward flow counts and bytes from one read of the conntrack table."""

    def __init__(self, counts: Mapping[str, FlowCount], fill: Fill, fingerprint: Hashable) -> None:
        self.counts = counts
        self.fill = fill
        self.fingerprint = fingerprint
        super().__init__()


class ForwardRemoved(Message):
    """A forward's rules were removed."""

    def __init__(self, name: str, seconds: float) -> None:
        self.name = name
        self.seconds = seconds
        super().__init__()


class FlowsRefreshed(Message):
    """The viewer's rows after reading, filtering and sorting (done off the UI thread)."""

    def __init__(
        self,
        rows: list[Flow],
        total: int,
        cursor: int,
        snapshot: FlowSnapshot,
        generation: int,
        *,
        found: object = None,
        took: float = 0.0,
        partial: bool = False,
    ) -> None:
        self.rows = rows
        self.generation = generation
        self.total = total
        self.cursor = cursor
        self.snapshot = snapshot
        self.found = found
        """The viewer's filter state to start the next keystroke from."""
        self.took = took
        """Seconds the read took (0: no read, the rows of the last one re-filtered)."""
        self.partial = partial
        """Only the table's first flows (a first look); the whole table follows."""
        super().__init__()
