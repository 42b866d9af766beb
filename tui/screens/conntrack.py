"""Provides ConntrackScreen: the live flow table, fluid at 100k flows.

Reading, filtering and sorting run in a thread worker; the UI thread only swaps the row list and
repaints the visible rows. The worker also finds where the highlighted flow went, so the cursor
stays on the same flow across refreshes without any scan on the UI thread.
"""

from __future__ import annotations

from typing import ClassVar

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Header, Input, Static

from natbox.conntrack import Flow, select
from natbox.engine import FlowSnapshot
from natbox.errors import NatboxError
from tui.messages import FlowsRefreshed
from widgets.flow_table import FlowTable, compact_path

REFRESH_EVERY = 1.0
SORTS: tuple[str | None, ...] = (None, "timeout", "bytes", "packets", "age")


def matches(flow: Flow, terms: list[str], owner: str | None) -> bool:
    """Every term appears in the flow's fields (addresses, ports, proto, state, forward)."""
    hay = " ".join(flow).lower() + " " + (owner or "")
    return all(t in hay for t in terms)


class ConntrackScreen(Screen[None]):
    """Flows with both tuples; `/` filters, `s` sorts, space pauses, `x` kills."""

    DEFAULT_CSS = """
    ConntrackScreen #filter {
        display: none;
        height: 3;
    }
    ConntrackScreen #filter.-visible {
        display: block;
    }
    ConntrackScreen #columns {
        height: 1;
        background: $panel;
        text-style: bold;
    }
    ConntrackScreen #state {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    ConntrackScreen.-paused #state {
        color: $warning;
        text-style: bold;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", id="flows.filter", tooltip="Filter as you type"),
        Binding(
            "s", "sort", "Sort", id="flows.sort", tooltip="Sort by timeout, bytes, packets, age"
        ),
        Binding("space", "pause", "Pause", id="flows.pause", tooltip="Pause or resume refreshing"),
        Binding("x", "kill", "Kill", id="flows.kill", tooltip="Kill the selected flow"),
        Binding("r", "refresh", "Refresh", id="flows.refresh", tooltip="Read the table now"),
        Binding("escape", "back", "Back", id="flows.back", tooltip="Back to the dashboard"),
        Binding("question_mark", "help", "Help", id="flows.help", tooltip="Every key"),
    ]

    def __init__(self, forward: str | None = None) -> None:
        super().__init__()
        self.forward = forward
        self.paused = False
        self.sort_index = 0
        self.terms: list[str] = []
        self.snapshot: FlowSnapshot | None = None
        self._total = 0
        self._generation = 0
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Header(icon="≡")
        yield Input(placeholder="filter: words that must all appear (Esc closes)", id="filter")
        yield Static("", id="columns")
        yield FlowTable(id="flows")
        yield Static("reading conntrack…", id="state")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"flows of {self.forward}" if self.forward else "flows"
        self.sub_title = "reading…"
        self.table.focus()
        self.refresh_flows(read=True)

    def on_resize(self, event: events.Resize) -> None:
        self._columns()

    def _columns(self) -> None:
        width = self.table.scrollable_content_region.width or self.size.width
        self.query_one("#columns", Static).update(self.table.header(width))

    # ---------------------------------------------------------------- worker

    def refresh_flows(self, read: bool = True) -> None:
        """Start a refresh; only the newest one's result is shown."""
        self._generation += 1
        self._refresh_worker(read, self._generation)

    @work(
        thread=True,
        exclusive=True,
        group="viewer",
        exit_on_error=False,
        description="Reading conntrack",
    )
    def _refresh_worker(self, read: bool, generation: int) -> None:
        """Read (or reuse), filter, sort, and locate the highlighted flow, off the UI thread."""
        snap = self.snapshot
        if read or snap is None:
            try:
                snap = self.app.engine.flows()  # type: ignore[attr-defined]
            except NatboxError as exc:
                self.app.call_from_thread(self._failed, exc.one_line())
                return
        assert snap is not None
        owner = snap.index
        rows = select(snap.flows, index=owner, forward=self.forward, sort=SORTS[self.sort_index])
        if self.terms:
            rows = [f for f in rows if matches(f, self.terms, owner(f))]
        current = self.table.current
        cursor = 0
        if current is not None:
            key = current.key
            cursor = next(
                (i for i, f in enumerate(rows) if f.key == key),
                min(self.table.cursor, len(rows) - 1),
            )
        self.post_message(FlowsRefreshed(rows, len(snap.flows), max(cursor, 0), snap, generation))

    def _failed(self, text: str) -> None:
        self.query_one("#state", Static).update(text)
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(REFRESH_EVERY, self._tick)

    def _tick(self) -> None:
        if self.paused or self.app.screen is not self:
            self._schedule()
        else:
            self.refresh_flows(read=True)

    # ---------------------------------------------------------------- handlers

    @on(FlowsRefreshed)
    def _refreshed(self, message: FlowsRefreshed) -> None:
        if message.generation != self._generation:
            return  # a newer refresh (a keystroke in the filter) is on its way
        self.snapshot = message.snapshot
        self._total = message.total
        with self.app.batch_update():
            self.table.set_rows(message.rows, message.snapshot.index, message.cursor)
            self._status()
        # After layout: the scrollbar (when rows overflow) narrows the rows the header must match.
        self.call_after_refresh(self._columns)
        self._schedule()

    def _status(self) -> None:
        shown = len(self.table.rows)
        self.sub_title = f"{shown} of {self._total} flows"
        sort = SORTS[self.sort_index] or "table order"
        fill = self.snapshot.fill if self.snapshot else None
        parts = [f"sort: {sort}"]
        if self.terms:
            parts.append(f"filter: {' '.join(self.terms)}")
        if fill is not None and not fill.accounting:
            parts.append("bytes: off (natbox conntrack --enable-accounting)")
        if self.paused:
            parts.insert(0, "PAUSED (space resumes)")
        self.query_one("#state", Static).update("  ".join(parts))
        self.set_class(self.paused, "-paused")

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.terms = event.value.lower().split()
        self.refresh_flows(read=False)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def on_key(self, event: events.Key) -> None:
        box = self.query_one("#filter", Input)
        if event.key == "escape" and box.has_focus:
            event.stop()
            box.remove_class("-visible")
            self.table.focus()

    # ---------------------------------------------------------------- actions

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-visible")
        box.focus()

    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self._status()
        self.refresh_flows(read=False)

    def action_pause(self) -> None:
        self.paused = not self.paused
        self._status()

    def action_refresh(self) -> None:
        self.refresh_flows(read=True)

    def action_kill(self) -> None:
        flow = self.table.current
        if flow is None:
            self.notify("no flow selected", severity="warning")
            return
        self._confirm_kill(flow)

    @work(exclusive=True, group="kill", exit_on_error=False)
    async def _confirm_kill(self, flow: Flow) -> None:
        from tui.screens.confirm import ConfirmScreen

        question = f"Kill this {flow.proto} flow?"
        if await self.app.push_screen_wait(ConfirmScreen(question, flow.path())):
            self._kill(flow)

    @work(
        thread=True, exclusive=True, group="kill", exit_on_error=False, description="Killing a flow"
    )
    def _kill(self, flow: Flow) -> None:
        try:
            n = self.app.engine.kill([flow])  # type: ignore[attr-defined]
        except NatboxError as exc:
            self.app.call_from_thread(self.notify, exc.one_line(), severity="error")
            return
        text = f"killed {compact_path(flow)}" if n else "that flow was already gone"
        self.app.call_from_thread(self.notify, text, title="natbox")
        self.app.call_from_thread(self.refresh_flows, True)

    def action_back(self) -> None:
        self.dismiss()

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        self.app.push_screen(HelpScreen(self))

    # ---------------------------------------------------------------- queries

    @property
    def table(self) -> FlowTable:
        """The flow rows."""
        return self.query_one("#flows", FlowTable)
