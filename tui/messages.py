"""Provides the app's messages (past tense: they report what happened)."""

from __future__ import annotations

from textual.message import Message

from natbox.conntrack import Flow
from natbox.engine import Dashboard, FlowSnapshot


class DashboardLoaded(Message):
    """A fresh read of rules, forwards, facts and interfaces."""

    def __init__(self, data: Dashboard) -> None:
        self.data = data
        super().__init__()


class FlowsCounted(Message):
    """Per-forward flow counts and bytes from one read of the conntrack table."""

    def __init__(self, counts: dict[str, tuple[int, int]], snapshot: FlowSnapshot) -> None:
        self.counts = counts
        self.snapshot = snapshot
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


class ForwardRemoved(Message):
    """A forward's rules were removed."""

    def __init__(self, name: str, seconds: float) -> None:
        self.name = name
        self.seconds = seconds
        super().__init__()
