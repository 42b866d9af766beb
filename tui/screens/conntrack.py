"""Provides ConntrackScreen: the live flow table, fluid at 100k flows.

Reading, filtering and sorting run in a thread worker; the UI thread only swaps the row list and
repaints the visible rows. The worker also finds where the highlighted flow went, so the cursor
stays on the same flow across refreshes without any scan on the UI thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Input, Static

from natbox.api import EngineAPI, FlowSnapshot
from natbox.conntrack import Flow, ForwardIndex, locate, select
from natbox.conntrack.select import DESCENDING, FlowFilter, row_text
from natbox.errors import NatboxError
from tui.messages import FlowsRefreshed
from widgets.flow_table import FlowTable, compact_path
from widgets.key_bar import KeyBar
from widgets.title_bar import TitleBar

REFRESH_EVERY = 1.0
KEYS_PENDING_RECHECK = 0.02
"""While typed-ahead keys wait, the filter looks again this often (seconds) for the last one."""
"""Seconds between reads; a read that takes longer than half of it stretches the interval."""
SORTS: tuple[str | None, ...] = (None, "timeout", "bytes", "packets", "age")
FILTER_HELP = (
    "filter: words from the rows, proto:udp state:ESTABLISHED fwd:NAME port:1234 (Esc clears)"
)


@dataclass(frozen=True)
class Found:
    """What the last refresh found, kept so that the next keystroke can start from it."""

    snapshot: FlowSnapshot
    filter: FlowFilter
    pairs: list[tuple[Flow, str]] | None
    """The filtered flows with their row text (None without a text filter), in table order."""
    hays: list[str] | None
    """Every flow's row text for this snapshot, once a text filter asked for it."""


def find_rows(
    snap: FlowSnapshot,
    forward: str | None,
    flt: FlowFilter,
    sort: str | None,
    reverse: bool,
    before: Found | None,
) -> tuple[list[Flow], Found]:
    """Filter and sort one snapshot (a worker calls this; it touches no widget)."""
    index: ForwardIndex = snap.index
    same = before is not None and before.snapshot is snap
    pairs: list[tuple[Flow, str]] | None = None
    hays = before.hays if same and before is not None else None
    if flt.terms:
        if same and before is not None and before.pairs is not None and flt.narrows(before.filter):
            source: list[tuple[Flow, str]] | zip[tuple[Flow, str]] = before.pairs
        else:
            if hays is None:
                hays = [row_text(f, index(f)) for f in snap.flows]
            source = zip(snap.flows, hays, strict=True)
        pairs = flt.apply_pairs(source, index)
        rows = [f for f, _ in pairs]
    elif flt:
        rows = flt.apply(snap.flows, index)
    else:
        rows = snap.flows
    fill = snap.fill
    if (sort in ("bytes", "packets") and not fill.accounting) or (
        sort == "age" and not fill.timestamps
    ):
        sort = None  # every key would be the same: keep the table's order
    rows = select(rows, index=index, forward=forward, sort=sort, reverse=reverse)
    return rows, Found(snap, flt, pairs, hays)


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
        text-wrap: nowrap;
        text-overflow: clip;
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
        Binding(
            "S", "reverse", "Reverse", id="flows.reverse", tooltip="Reverse the sort", show=False
        ),
        Binding("space", "pause", "Pause", id="flows.pause", tooltip="Pause or resume refreshing"),
        Binding("x", "kill", "Kill", id="flows.kill", tooltip="Kill the selected flow"),
        Binding("r", "refresh", "Refresh", id="flows.refresh", tooltip="Read the table now"),
        Binding("escape", "back", "Back", id="flows.back", tooltip="Back to the dashboard"),
        Binding("question_mark", "help", "Help", id="flows.help", tooltip="Every key"),
    ]

    def __init__(self, engine: EngineAPI, forward: str | None = None) -> None:
        super().__init__()
        self.engine = engine
        """What the viewer reads flows from and kills them with."""
        self.forward = forward
        self.paused = False
        self.sort_index = 0
        self.reverse = False
        self.filter = FlowFilter()
        self.snapshot: FlowSnapshot | None = None
        self._found: Found | None = None
        self._total = 0
        self._generation = 0
        self._interval = REFRESH_EVERY
        self._timer: Timer | None = None
        self._filter_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield TitleBar(icon="»")
        yield Input(placeholder=FILTER_HELP, id="filter")
        yield Static("", id="columns")
        yield FlowTable(id="flows")
        yield Static("reading conntrack…", id="state")
        yield KeyBar()

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
        self._refresh_worker(
            read,
            self._generation,
            self.snapshot,
            self.filter,
            SORTS[self.sort_index],
            self.reverse,
            self._found,
            self.table.current,
            self.table.cursor,
        )

    @work(
        thread=True,
        exclusive=True,
        group="viewer",
        exit_on_error=False,
        description="Reading conntrack",
    )
    def _refresh_worker(
        self,
        read: bool,
        generation: int,
        snap: FlowSnapshot | None,
        flt: FlowFilter,
        sort: str | None,
        reverse: bool,
        before: Found | None,
        current: Flow | None,
        cursor: int,
    ) -> None:
        """Read (or reuse), filter, sort, and locate the highlighted flow, off the UI thread."""
        took = 0.0
        engine = self.engine
        if snap is None:
            # The first look: the table's first flows now, the whole table when it is read.
            try:
                head = engine.flows(head=True)
            except NatboxError:
                head = None  # the whole read below says why
            if head is not None:
                rows, _found = find_rows(head, self.forward, flt, sort, reverse, None)
                total = head.fill.count or len(head.flows)
                self.post_message(FlowsRefreshed(rows, total, 0, head, generation, partial=True))
        if read or snap is None:
            start = time.perf_counter()
            try:
                snap = engine.flows()
            except NatboxError as exc:
                self.app.call_from_thread(self._failed, exc.one_line())
                return
            took = time.perf_counter() - start
        assert snap is not None
        rows, found = find_rows(snap, self.forward, flt, sort, reverse, before)
        at = locate(rows, current, cursor)
        self.post_message(
            FlowsRefreshed(rows, len(snap.flows), at, snap, generation, found=found, took=took)
        )

    def _failed(self, text: str) -> None:
        self.query_one("#state", Static).update(text)
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        # Off in snapshots (NatboxApp.polling); a screen in another app (a test's) polls.
        if getattr(self.app, "polling", True):
            self._timer = self.set_timer(self._interval, self._tick)

    def _tick(self) -> None:
        if self.paused or self.app.screen is not self:
            self._schedule()
        else:
            self.refresh_flows(read=True)

    # ---------------------------------------------------------------- handlers

    @on(FlowsRefreshed)
    def _refreshed(self, message: FlowsRefreshed) -> None:
        if message.took:
            # A big table: read at most every other interval's worth of time, not back to back.
            self._interval = max(REFRESH_EVERY, 2 * message.took)
        if message.generation != self._generation:
            return  # a newer refresh (a keystroke in the filter) is on its way
        if message.partial:
            with self.app.batch_update():
                self.table.set_rows(message.rows, message.snapshot.index, 0)
                self._total = message.total
                self._status()
                self.sub_title = f"first {len(message.rows)} of {message.total} flows, reading…"
            self.call_after_refresh(self._columns)
            return
        self.snapshot = message.snapshot
        self._found = message.found if isinstance(message.found, Found) else None
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
        sort = SORTS[self.sort_index]
        fill = self.snapshot.fill if self.snapshot else None
        if sort is None:
            parts = ["sort: table order" + (" reversed" if self.reverse else "")]
        else:
            arrow = "▼" if (sort in DESCENDING) != self.reverse else "▲"
            parts = [f"sort: {sort} {arrow} (S reverses)"]
        if self.filter:
            parts.append(f"filter: {self.filter.text.strip()}")
        if fill is not None and not fill.accounting:
            parts.append("bytes: off (natbox conntrack --enable-accounting)")
        if self.paused:
            parts.insert(0, "PAUSED (space resumes)")
        self.query_one("#state", Static).update("  ".join(parts))
        self.set_class(self.paused, "-paused")

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter = FlowFilter.parse(event.value)
        self._status()
        self._filter_rows()

    def _filter_rows(self) -> None:
        """Filter with the box's text now, or, while more typed-ahead keys wait, after the last of
        them: a burst (`port:1235` pasted, or over a laggy link) filters 100,000 flows once, not
        once per character, and the keys are not kept waiting behind those scans."""
        if self._filter_timer is not None:
            self._filter_timer.stop()
            self._filter_timer = None
        if getattr(self.app, "keys_pending", False):
            self._filter_timer = self.set_timer(KEYS_PENDING_RECHECK, self._filter_rows)
            return
        self.refresh_flows(read=False)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def on_key(self, event: events.Key) -> None:
        box = self.query_one("#filter", Input)
        if event.key == "escape" and box.has_focus:
            event.stop()
            self._clear_filter()

    def _clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.remove_class("-visible")
        self.table.focus()
        if box.value:
            box.value = ""  # Input.Changed refreshes the rows
        elif self.filter:
            self.filter = FlowFilter()
            self._status()
            self.refresh_flows(read=False)

    # ---------------------------------------------------------------- actions

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-visible")
        box.focus()

    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self.reverse = False
        self._sorted()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self._sorted()

    def _sorted(self) -> None:
        sort = SORTS[self.sort_index]
        self.table.set_sort(sort, (sort in DESCENDING) != self.reverse)
        self._columns()
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
            n = self.engine.kill([flow])
        except NatboxError as exc:
            self.app.call_from_thread(self.notify, exc.one_line(), severity="error")
            return
        text = f"killed {compact_path(flow)}" if n else "that flow was already gone"
        self.app.call_from_thread(self.notify, text, title="natbox")
        self.app.call_from_thread(self.refresh_flows, True)

    def action_back(self) -> None:
        if self.filter or self.query_one("#filter", Input).has_class("-visible"):
            self._clear_filter()  # Escape clears the filter first; the next one goes back
            return
        self.dismiss()

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        self.app.push_screen(HelpScreen(self))

    # ---------------------------------------------------------------- queries

    @property
    def table(self) -> FlowTable:
        """The flow rows."""
        return self.query_one("#flows", FlowTable)
