"""Provides DashboardScreen: what this box forwards, the rules around it, and whether it works.

Data flow (Textual's own `_log.py` pattern): a timer starts a thread worker with its inputs as
arguments; the worker asks the engine and posts an immutable message; the handler on the UI thread
updates the tables by row key. One `Worker.StateChanged` handler reports a failed worker and re-arms
its polling, so a failure is seen and the dashboard keeps going.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.events import Resize, ScreenResume
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import ContentSwitcher, Input, Static
from textual.worker import Worker, WorkerFailed, WorkerState

from natbox import gcpause
from natbox.api import ChangePreview, Dashboard, EngineAPI, ShownChain
from natbox.errors import NatboxError
from natbox.model import Forward, Rule
from natbox.paths import StateWriteError
from natbox.plan import build_plan
from natbox.ruleset import ForwardState
from natbox.system import InterfaceStat
from natbox.txn import Outcome
from tui.messages import (
    DashboardLoaded,
    DashboardUnchanged,
    FlowCount,
    FlowsCounted,
    ForwardRemoved,
    HealthChecked,
)
from widgets.filter_box import FilterBox
from widgets.flow_table import human_bytes
from widgets.key_bar import KeyBar
from widgets.keyed_table import Cell, KeyedTable, Row, path_text
from widgets.rule_text import shown_rule, split_target
from widgets.sparkline import rate, spark
from widgets.status_bar import StatusBar
from widgets.tab_strip import TabStrip
from widgets.title_bar import TitleBar

if TYPE_CHECKING:  # the diagnosis loads when first used (not before the first frame, #13)
    from natbox.checks import Finding

RULES_EVERY = 3.0
FLOWS_EVERY = 1.0
FULL_READ_EVERY = 20
"""Polls: even when the fingerprint is unchanged, read everything every 20th (a minute: counters)."""
FORWARD_ROWS = 7
"""Forward rows shown at once (more scroll): the rules below keep most of the screen."""
OWNER_STYLE = {"docker": "cyan", "kube": "magenta", "other": "", "natbox": "green"}
SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}
FILTER_DELAY = 0.15
SUB_TITLE = "? keys · ctrl+p commands"
TABS = [
    ("rules", "1 Rules"),
    ("interfaces", "2 Interfaces"),
    ("health", "3 Health"),
    ("history", "4 History"),
]
"""The tabs under the forwards: (id, label); keys 1-4 show them."""
FIRST_FRAME_OUT = 0.15
"""After the first paint, this long before the flow count and the health check start: their
threads take the GIL and a CPU, and the frame must reach the terminal (tmux, sshd) first (#13)."""
FIRST_FRAME_MAX = 2.0
"""... and they start after this long in any case."""
SORTS = ("name", "flows", "bytes", "health")
MARK = "▶"


def _change_detail(preview: ChangePreview) -> str:
    """What a dialog shows of a change: its restore lines per table, then its warnings."""
    text = "\n".join(f"*{t}\n" + "\n".join(ls) for t, ls in preview.lines.items() if ls)
    warnings = [f"! {f.message}" for f in preview.findings if f.severity == "warning"]
    return "\n\n".join(part for part in (text, "\n".join(warnings)) if part)


class Change(NamedTuple):
    """One change of this session, for `u` and the History tab."""

    kind: str
    """added, removed, edited, disabled or enabled."""
    forward: Forward
    """The forward as the change left it (removed, disabled: as it was)."""
    before: Forward | None = None
    """An edit's forward before it."""


def health_cell(findings: Sequence[Finding] | None, intact: bool) -> Text:
    """The worst severity (ok / warn / error), for the forwards table (… while it is checked):
    one word however many findings, so a busy host never reads "2000 warn"."""
    if not intact:
        return Text("error", style="bold red")
    if findings is None:
        return Text("…", style="dim")
    from natbox.checks import worst

    level = worst(findings)
    if level == "error":
        return Text("error", style="bold red")
    if level == "warning":
        return Text("warn", style="yellow")
    return Text("ok", style="green")


def _health_rank(findings: Sequence[Finding] | None, intact: bool) -> int:
    if not intact or (findings and any(f.severity == "error" for f in findings)):
        return 0
    if findings and any(f.severity == "warning" for f in findings):
        return 1
    return 2


# The forwards table's columns, most telling first: at 80 columns the first five always show.
FORWARD_COLUMNS: list[tuple[str, str]] = [
    ("mark", " "),
    ("name", "NAME"),
    ("path", "LISTEN → BACKEND"),
    ("health", "HEALTH"),
    ("flows", "FLOWS"),
    ("bytes", "BYTES"),
    ("proto", "PROTO"),
    ("saved", "SAVED"),
    ("snat", "SNAT"),
    ("opts", "OPTS"),
]
ALWAYS = {"mark", "name", "path", "health", "flows"}


def saved_cell(name: str, known: frozenset[str] | None, drifted: frozenset[str]) -> Cell:
    """SAVED: yes / no / ? (unreadable), or DRIFT when the kernel no longer holds what was saved."""
    if known is None:
        return "?"
    if name in drifted:
        return Text("DRIFT", style="bold yellow")
    return "yes" if name in known else "no"


class DashboardScreen(Screen[None]):
    """The first screen: status bar, forwards, then rules, interfaces, health and history in tabs."""

    DEFAULT_CSS = """
    DashboardScreen #forwards {
        height: 3;
    }
    DashboardScreen #forwards-empty {
        height: auto;
        padding: 0 1;
        color: $text-muted;
    }
    DashboardScreen #tabs {
        height: 1fr;
    }
    DashboardScreen #filter {
        display: none;
        height: 1;
        border: none;
        padding: 0 1;
    }
    DashboardScreen #filter.-visible {
        display: block;
    }
    DashboardScreen #problem {
        display: none;
        color: $error;
        padding: 0 1;
    }
    DashboardScreen #problem.-visible {
        display: block;
    }
    DashboardScreen #rules-table {
        height: 1fr;
    }
    DashboardScreen #rule-detail {
        height: 2;
        color: $text-muted;
        padding: 0 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "add", "Add", id="dashboard.add", tooltip="Add a forward (wizard)"),
        Binding(
            "d", "remove", "Remove", id="dashboard.remove", tooltip="Remove the marked (▶) forward"
        ),
        Binding(
            "u", "undo", "Undo", id="dashboard.undo", tooltip="Undo the last change of this session"
        ),
        Binding(
            "E",
            "edit",
            "Edit",
            show=False,
            id="dashboard.edit",
            tooltip="Edit the marked forward: the wizard, prefilled; old rules out, new in, at once",
        ),
        Binding(
            "x",
            "toggle_forward",
            "Disable/enable",
            show=False,
            id="dashboard.toggle",
            tooltip="Disable the marked forward (rules out, remembered) or enable it again",
        ),
        Binding(
            "enter",
            "flows_of_forward",
            "Its flows",
            priority=True,  # whichever table has the focus, Enter means the marked forward
            id="dashboard.flows",
            tooltip="Flows of the marked (▶) forward",
        ),
        Binding(
            "c", "conntrack", "All flows", id="dashboard.conntrack", tooltip="All flows (viewer)"
        ),
        Binding(
            "slash",
            "filter",
            "Filter",
            id="dashboard.filter",
            tooltip="Filter forwards and rules as you type (Esc clears)",
        ),
        Binding(
            "g",
            "goto",
            "Go to",
            show=False,
            id="dashboard.goto",
            tooltip="Go to a forward by typing its name",
        ),
        Binding(
            "s",
            "sort",
            "Sort",
            show=False,
            id="dashboard.sort",
            tooltip="Sort forwards: name, flows, bytes, health",
        ),
        Binding("r", "refresh", "Refresh", show=False, id="dashboard.refresh", tooltip="Read now"),
        Binding(
            "w",
            "save",
            "Save",
            show=False,
            id="dashboard.save",
            tooltip="Save the marked forward: restored at boot",
        ),
        Binding(
            "f",
            "forget",
            "Forget",
            show=False,
            id="dashboard.forget",
            tooltip="Forget the marked forward (not restored at boot; its rules stay)",
        ),
        Binding(
            "e",
            "export",
            "Export",
            show=False,
            id="dashboard.export",
            tooltip="Export the marked forward (restore text, commands, Ansible)",
        ),
        Binding(
            "D",
            "doctor",
            "Doctor",
            show=False,
            id="dashboard.doctor",
            tooltip="Diagnose the marked forward fully (probes the backend, reads conntrack)",
        ),
        Binding(
            "K",
            "kill_flows",
            "Kill flows",
            show=False,
            id="dashboard.kill",
            tooltip="Kill every flow of the marked forward (after a yes)",
        ),
        Binding(
            "t",
            "trace",
            "Trace",
            show=False,
            id="dashboard.trace",
            tooltip="Trace the marked forward's next connection through the kernel (nft hosts)",
        ),
        Binding(
            "1",
            "tab('rules')",
            "Tabs",
            key_display="1-4",
            id="dashboard.rules",
            tooltip="Tabs: 1 rules, 2 interfaces, 3 health, 4 history",
        ),
        Binding(
            "2",
            "tab('interfaces')",
            "Ifaces",
            show=False,
            id="dashboard.ifaces",
            tooltip="Interfaces",
        ),
        Binding(
            "3", "tab('health')", "Health", show=False, id="dashboard.health", tooltip="Health"
        ),
        Binding(
            "4",
            "tab('history')",
            "History",
            show=False,
            id="dashboard.history",
            tooltip="History: what happened in this session",
        ),
        Binding(
            "tab,shift+tab",
            "switch_focus",
            "Next table",
            show=False,
            id="dashboard.tab",
            tooltip="Between the forwards and the rules (and out of the filter box)",
        ),
        Binding("question_mark", "help", "Help", id="dashboard.help", tooltip="Every key"),
        Binding("q", "quit", "Quit", id="dashboard.quit", tooltip="Leave natbox"),
    ]

    def __init__(
        self,
        engine: EngineAPI,
        confirm_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.confirm_seconds = confirm_seconds
        """How long a new forward waits for `y` before it is rolled back."""
        self.clock = clock
        self.data: Dashboard | None = None
        self.health: Mapping[str, Sequence[Finding]] = {}
        """Findings per forward of the last health check (missing: not checked yet)."""
        self.counts: Mapping[str, FlowCount] | None = None
        """Flows per forward (None: the conntrack table has not been read yet)."""
        self.selected: str | None = None
        """The forward every action acts on, marked ▶ in the table."""
        self.sort = "name"
        self.needle = ""
        """The filter (`/`): forwards and rules that contain it."""
        self.goto_mode = False
        self.history: list[Change] = []
        """This session's changes, newest last, for `u`."""
        self.events: list[str] = []
        """What happened in this session, for the History tab (and what the toasts said)."""
        self._iface_history: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=12))
        self._last_io: dict[str, tuple[float, int, int]] = {}
        self._polls: dict[str, Timer] = {}
        self._rules_fingerprint: Hashable = None
        self._flows_fingerprint: Hashable = None
        self._unchanged_polls = 0
        self._columns: list[str] = []
        self._filter_timer: Timer | None = None
        self._applying = False
        self.off_forwards: dict[str, Forward] = {}
        """Forwards taken out with `x` (or `natbox disable`), by name, from the last read (built
        once per read, not per row): shown, greyed; `x` enables them."""
        self._want: str | None = None
        """A forward to mark as soon as a read shows it (one just added)."""
        self._reads = 0
        """Rule reads started (each read's seq)."""
        self._fresh_from = 0
        """The oldest read that may still be shown: reads started before this screen's own last
        change (an apply, a confirm, a remove) are stale when they end, however late."""
        self._shown = 0
        """The seq of the read on screen: an older read that ends later never replaces it."""
        self._flows_started = False
        """Whether the flow count has started (after the first rule read, never before)."""
        self.starting = 0
        """Work waiting for the first frame to be out (_after_first_frame); tests settle on it."""
        self._whole_due = False
        """An incomplete Dashboard (the chains shown only) is on screen and no whole read has
        started since."""
        self._interfaces: tuple[InterfaceStat, ...] = ()
        self._interfaces_seq = 0
        """The interfaces on screen and the read they came from: an older read never replaces
        them."""

    def compose(self) -> ComposeResult:
        yield TitleBar("natbox", SUB_TITLE)
        yield StatusBar("reading the firewall…", id="status")
        yield Static("", id="problem")
        yield KeyedTable(id="forwards", cursor_type="row", zebra_stripes=True)
        yield Static("reading the firewall…", id="forwards-empty")
        yield TabStrip(TABS, id="tab-strip")
        with ContentSwitcher(id="tabs", initial=TABS[0][0]):
            with Vertical(id="rules"):
                yield KeyedTable(id="rules-table", cursor_type="row")
                yield Static("", id="rule-detail", markup=False)
            yield KeyedTable(id="interfaces", cursor_type="row")
            with VerticalScroll(id="health"):
                yield Static("", id="health-detail")
            with VerticalScroll(id="history"):
                yield Static("nothing changed in this session yet", id="history-log")
        yield KeyBar()

    def on_mount(self) -> None:
        self.title = "natbox"
        self.sub_title = SUB_TITLE
        self.forwards_table.display = False
        rules = self.rules_table
        for key, label in (("n", "#"), ("owner", "OWNER"), ("pkts", "PKTS")):
            rules.add_column(label, key=key)
        rules.add_column("TARGET", key="target")
        rules.add_column("MATCH", key="match")
        ifaces = self.query_one("#interfaces", KeyedTable)
        for col in ("NAME", "UP", "MTU", "ADDRESSES", "RX", "TX", "TRAFFIC"):
            ifaces.add_column(col, key=col)
        self.forwards_table.focus()
        self._first_read()

    def _first_read(self) -> None:
        """Show the Dashboard made while the UI loaded (Engine.prefetch) in the first frame, if it
        is done and still current, else start a read."""
        # Python's cycle collector is off for the start-up (natbox.__main__): on again after it.
        self._after_first_frame(gcpause.start_up_over)
        ready = self.engine.ready_dashboard()
        if ready is None:
            self._read_rules(None)
        else:
            self._reads += 1
            self._loaded(DashboardLoaded(ready, self.engine.fingerprint(), self._reads))
            self._schedule("rules", RULES_EVERY, self._poll_rules)
            # The rules first: the flow count (a read of up to 100,000s of flows) starts once the
            # first rule read is on screen, so it never holds the forwards back (#13).
            self._after_first_frame(self._start_flows)
            if not ready.interfaces:  # not read ahead (a tab not shown yet): read after
                self._after_first_frame(self._read_interfaces)

    def _after_first_frame(self, callback: Callable[..., object], *args: object) -> None:
        """Run `callback` FIRST_FRAME_OUT after the next paint (the flow count, the health check:
        threads that would hold the first frame back on its way to the terminal), or after
        FIRST_FRAME_MAX at the latest (an after-refresh callback is lost when the screen it went to
        is gone before its next refresh)."""
        self.starting += 1
        done = False

        def run() -> None:
            nonlocal done
            if not done:
                done = True
                self.starting -= 1
                callback(*args)

        self.call_after_refresh(self.set_timer, FIRST_FRAME_OUT, run)
        self.set_timer(FIRST_FRAME_MAX, run)

    # ---------------------------------------------------------------- workers

    @work(
        thread=True, exclusive=True, group="rules", exit_on_error=False, description="reading rules"
    )
    def read_rules(
        self, engine: EngineAPI, last: Hashable, interfaces: bool = False, seq: int = 0
    ) -> None:
        """Read rules and forwards unless the fingerprint says nothing changed since `last`."""
        fingerprint = engine.fingerprint()
        if last is not None and fingerprint == last:
            ifaces = None
            if interfaces:
                ifaces = engine.interfaces()
            self.post_message(DashboardUnchanged(ifaces, time.time(), seq))
            return
        self.post_message(DashboardLoaded(engine.dashboard(), fingerprint, seq))

    def _read_rules(self, last: Hashable, interfaces: bool = False, fresh: bool = False) -> None:
        """Start a rule read; `fresh`: every read started before this one is stale (the screen has
        just changed the firewall, so an older read would show the firewall as it was)."""
        self._reads += 1
        if fresh:
            self._fresh_from = self._reads
        if last is None:
            self._whole_due = False
        self.read_rules(self.engine, last, interfaces, self._reads)

    def _read_whole(self) -> None:
        """The whole read an incomplete Dashboard asks for, unless one has started since (a poll
        whose fingerprint was None): never two saves of a big box at once."""
        if self._whole_due:
            if (poll := self._polls.pop("rules", None)) is not None:
                poll.stop()  # the read's end schedules the next poll
            self._read_rules(None)

    def _read_interfaces(self) -> None:
        self._reads += 1
        self.read_interfaces(self.engine, self._reads)

    @work(thread=True, group="interfaces", exit_on_error=False, description="reading interfaces")
    def read_interfaces(self, engine: EngineAPI, seq: int) -> None:
        """The interfaces and their counters alone (no ruleset read)."""
        self.post_message(DashboardUnchanged(engine.interfaces(), time.time(), seq))

    @work(
        thread=True,
        exclusive=True,
        group="health",
        exit_on_error=False,
        description="checking health",
    )
    def check_health(self, engine: EngineAPI, data: Dashboard) -> None:
        """The cheap checks of each forward (after the rules are on screen)."""
        self.post_message(HealthChecked(dict(engine.health(data)), data.taken_at))

    @work(
        thread=True,
        exclusive=True,
        group="flows",
        exit_on_error=False,
        description="counting flows",
    )
    def count_flows(self, engine: EngineAPI, last: Hashable) -> None:
        """Count flows and bytes per forward, unless nothing changed since `last`."""
        fingerprint = engine.fingerprint()
        if last is not None and fingerprint == last:
            return
        snap = engine.flows()
        counts: dict[str, list[int]] = {}
        owner = snap.index
        for flow in snap.flows:
            name = owner(flow)
            if name is not None:
                entry = counts.setdefault(name, [0, 0])
                entry[0] += 1
                entry[1] += flow.bytes
        result = {k: FlowCount(v[0], v[1]) for k, v in counts.items()}
        self.post_message(FlowsCounted(result, snap.fill, fingerprint))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place that sees every worker end: a failure is said, and polling goes on."""
        worker = event.worker
        if event.state == WorkerState.ERROR:
            error = worker.error
            text = error.one_line() if isinstance(error, NatboxError) else f"{error!r}"
            what = worker.description or worker.group
            self.say(f"{what} failed: {text}", severity="error", title="natbox")
        if event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            if worker.group == "rules":
                self._schedule("rules", RULES_EVERY, self._poll_rules)
                if not self._flows_started:
                    # After the screen has been painted: its thread would hold up the paint.
                    self._after_first_frame(self._start_flows)
            elif worker.group == "flows":
                self._schedule("flows", FLOWS_EVERY, self._poll_flows)

    def _start_flows(self) -> None:
        # Marked started here, not when asked: a callback dropped (a modal came and went before
        # the refresh) is asked again when the next rule read ends.
        if not self._flows_started:
            self._flows_started = True
            self.count_flows(self.engine, None)

    def _polling_paused(self) -> bool:
        # Nothing is read while a modal (or another screen) is in front.
        return self.app.screen is not self or isinstance(self.app.screen, ModalScreen)

    def _schedule(self, what: str, delay: float, callback: Callable[[], None]) -> None:
        # One pending poll per kind: a manual refresh must not double the polling.
        if what in self._polls:
            self._polls[what].stop()
        # Off in snapshots (NatboxApp.polling); a screen in another app (a test's) polls.
        if getattr(self.app, "polling", True):
            self._polls[what] = self.set_timer(delay, callback)

    def _poll_rules(self) -> None:
        if self._polling_paused():
            self._schedule("rules", RULES_EVERY, self._poll_rules)
            return
        self._unchanged_polls += 1
        last = self._rules_fingerprint if self._unchanged_polls < FULL_READ_EVERY else None
        self._read_rules(last, self.active_tab == "interfaces")

    def _poll_flows(self) -> None:
        if self._polling_paused():
            self._schedule("flows", FLOWS_EVERY, self._poll_flows)
        else:
            self.count_flows(self.engine, self._flows_fingerprint)

    # ---------------------------------------------------------------- handlers

    @on(DashboardLoaded)
    def _loaded(self, message: DashboardLoaded) -> None:
        if message.seq < max(self._fresh_from, self._shown):
            # A thread worker cannot be stopped: a read that was overtaken still ends, and showing it
            # would move the mark off a forward that a newer read already showed (#14, item 1).
            return
        self._shown = message.seq
        data = message.data
        self.data = data
        self.off_forwards = {f.name: f for f in data.disabled}
        # A Dashboard of only the chains shown (the first, read while Textual loaded) lacks lines
        # naming natbox elsewhere (tampering warnings): it is never taken for an up-to-date one.
        self._rules_fingerprint = message.fingerprint if data.complete else None
        self._unchanged_polls = 0
        if data.recovered:
            self.say(data.recovered, title="natbox recovered", severity="warning", timeout=10)
        with self.app.batch_update():
            self._show_status()
            problem = self.query_one("#problem", Static)
            lines = ([data.error] if data.error else []) + [f"⚠ {w}" for w in data.warnings]
            problem.update("\n".join(lines))
            problem.set_class(bool(lines), "-visible")
            self._fill_forwards()
            self._fill_rules()
            # The first Dashboard may come without them (read after the first frame).
            self._show_interfaces(data.interfaces, data.taken_at, message.seq)
            self._fill_health()
        # After the paint; the first one after the first frame is out.
        if not data.complete:
            # Only the chains shown (listed while Textual loaded): the whole ruleset is read at
            # once after the first frame (~0.3 s on a 10,000-rule box), for what only it shows (a
            # natbox tag elsewhere, a table iptables cannot show); the health check runs on it.
            self._whole_due = True
            self._after_first_frame(self._read_whole)
        elif self._flows_started:
            self.call_after_refresh(self.check_health, self.engine, data)
        else:
            self._after_first_frame(self.check_health, self.engine, data)

    @on(DashboardUnchanged)
    def _unchanged(self, message: DashboardUnchanged) -> None:
        if message.interfaces is not None:
            self._show_interfaces(message.interfaces, message.taken_at, message.seq)

    def _show_interfaces(
        self, interfaces: tuple[InterfaceStat, ...], taken_at: float, seq: int
    ) -> None:
        """Show interfaces (a Dashboard's, or read alone: the Interfaces tab's polls, the first
        Dashboard's late ones) unless they are none or from a read older than the one shown (it
        ended late); self.data keeps the ones shown (the wizard's address choices)."""
        if interfaces and seq >= self._interfaces_seq:
            self._interfaces, self._interfaces_seq = interfaces, seq
            self._fill_interfaces(interfaces, taken_at)
        if self.data is not None and self.data.interfaces != self._interfaces:
            self.data = replace(self.data, interfaces=self._interfaces)

    @on(HealthChecked)
    def _health_checked(self, message: HealthChecked) -> None:
        if self.data is None or message.taken_at != self.data.taken_at:
            return
        self.health = message.health
        self._fill_forwards()
        self._fill_health()

    @on(FlowsCounted)
    def _counted(self, message: FlowsCounted) -> None:
        self.counts = message.counts
        self._flows_fingerprint = message.fingerprint
        if self.data is not None:
            self._show_status(message.fill)
            self._fill_forwards()

    @on(ForwardRemoved)
    def _removed(self, message: ForwardRemoved) -> None:
        self.say(f"removed {message.name} ({message.seconds * 1000:.0f} ms)", title="natbox")
        self.action_refresh(quiet=True)

    @on(KeyedTable.RowHighlighted, "#forwards")
    def _forward_highlighted(self, event: KeyedTable.RowHighlighted) -> None:
        name = str(event.row_key.value) if event.row_key is not None else None
        if name != self.forwards_table.cursor_key:
            return  # posted before a later move of the cursor (a refresh's): the cursor moved on
        if name != self.selected:
            self._select(name)

    @on(KeyedTable.RowHighlighted, "#rules-table")
    def _rule_highlighted(self) -> None:
        self._show_rule_detail()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Enter belongs to the filter box while it has the focus (it keeps the filter), and so do
        `/` and `g` (they are typed): their keys leave the key line then."""
        if action in ("flows_of_forward", "filter", "goto") and isinstance(self.focused, Input):
            return False
        return True

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        text = event.value.strip().lower()
        if self.goto_mode:
            self._goto(text)
            return
        self.needle = text
        # Typing never waits for the tables: they follow 0.15 s after the last key.
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(FILTER_DELAY, self._apply_filter)

    def _apply_filter(self) -> None:
        self._filter_timer = None
        self._fill_forwards()
        self._fill_rules()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        # Enter keeps the filter and gives the keys back to the forwards (d, Enter act on ▶).
        box = event.input
        if self._filter_timer is not None:
            self._filter_timer.stop()
            self._apply_filter()
        if self.goto_mode or not box.value:
            self._close_filter()
        self.forwards_table.focus()

    @property
    def _filter_box(self) -> Input | None:
        """The filter box, once `/` or `g` made it (not before the first frame, #13)."""
        boxes = self.query("#filter")
        return boxes.first(Input) if boxes else None

    async def _open_filter(self) -> Input:
        """The filter box, made and mounted above the forwards the first time it is wanted (it is
        hidden until then: its 14 style rules and its widget off the first frame, #13). Awaited,
        so a key typed right after `/` (type-ahead) lands in it."""
        box = self._filter_box
        if box is None:
            box = FilterBox(placeholder="filter: forwards and rules (Esc clears)", id="filter")
            await self.mount(box, before=self.forwards_table)
        return box

    @on(FilterBox.Cleared)
    def _filter_cleared(self) -> None:
        self._close_filter()

    def on_key(self, event: Any) -> None:
        box = self._filter_box
        if event.key == "escape" and box is not None and box.has_class("-visible"):
            event.stop()
            self._close_filter()

    def _close_filter(self) -> None:
        box = self._filter_box
        was_goto, self.goto_mode = self.goto_mode, False
        if box is not None:
            box.remove_class("-visible")
            if box.value:
                box.value = ""
        if not was_goto and self.needle:
            self.needle = ""
            self._fill_forwards()
            self._fill_rules()
        self.forwards_table.focus()

    @on(ScreenResume)
    def _resumed(self) -> None:
        # Back from the viewer, the wizard or a dialog: Enter, d, u act on the marked forward
        # whatever has the focus; give the focus back only if nothing has it.
        if self.focused is None:
            self.set_focus(self.forwards_table)  # now, not deferred: the next key is typed ahead

    def on_resize(self, event: Resize) -> None:
        if self.data is not None:
            self._fill_forwards()

    # ---------------------------------------------------------------- filling

    def say(
        self,
        text: str,
        *,
        severity: SeverityLevel = "information",
        title: str = "",
        timeout: float | None = None,
    ) -> None:
        """A toast, also kept in the History tab."""
        stamp = time.strftime("%H:%M:%S")
        self.events.append(f"{stamp}  {text}")
        self.notify(text, title=title, severity=severity, timeout=timeout)
        log = self.query_one("#history-log", Static)
        log.update("\n".join(reversed(self.events[-200:])))

    def _show_status(self, fill: Any = None) -> None:
        data = self.data
        assert data is not None
        self.status_bar.show(
            host=data.host,
            backend=data.backend,
            ip_forward=data.ip_forward,
            fill=fill or data.fill,
            read_only=data.read_only,
            warnings=len(data.warnings),
            partial=not data.complete,
        )

    def _visible_forwards(self) -> list[ForwardState]:
        assert self.data is not None
        needle = self.needle
        disabled = [ForwardState(f.name, [], f) for f in self.data.disabled]
        states = [
            s
            for s in [*self.data.forwards, *disabled]
            if not needle
            or needle in s.name.lower()
            or (s.forward is not None and needle in path_text(s.forward).lower())
        ]
        counts = self.counts or {}
        if self.sort == "flows":
            states.sort(key=lambda s: -counts.get(s.name, FlowCount(0, 0)).flows)
        elif self.sort == "bytes":
            states.sort(key=lambda s: -counts.get(s.name, FlowCount(0, 0)).bytes)
        elif self.sort == "health":
            states.sort(key=lambda s: _health_rank(self.health.get(s.name), s.intact))
        else:
            states.sort(key=lambda s: s.name)
        return states

    def _forward_cells(self, state: ForwardState) -> dict[str, Cell]:
        assert self.data is not None
        f = state.forward
        marked = state.name == self.selected
        count = None if self.counts is None else self.counts.get(state.name, FlowCount(0, 0))
        known = self.data.saved
        off = state.name in self.off_forwards
        cells: dict[str, Cell] = {
            "mark": MARK if marked else " ",
            "name": Text(state.name, style="bold" if marked else ""),
            "health": (
                Text("off", style="dim")
                if off
                else health_cell(self.health.get(state.name), state.intact)
            ),
            "flows": "-" if off else "…" if count is None else str(count.flows),
            "bytes": "-" if off else "…" if count is None else human_bytes(count.bytes),
            "saved": saved_cell(state.name, known, self.data.drifted),
        }
        if f is None:
            cells.update(path="?", proto="?", snat="?", opts="")
        else:
            cells.update(
                path=path_text(f),
                proto=f.proto,
                snat="masq" if f.masquerade else str(f.snat),
                opts=" ".join(
                    o
                    for o, on_ in (
                        ("mss", f.mss_clamp),
                        ("local", f.local),
                        (f"from {len(f.sources)}", bool(f.sources)),
                    )
                    if on_
                ),
            )
        return cells

    def _fit_columns(self, rows: list[dict[str, Cell]]) -> list[str]:
        """The columns that fit the screen's width, most telling first."""
        room = max(self.size.width, 40) - 2  # the scrollbar
        chosen: list[str] = []
        used = 0
        for key, label in FORWARD_COLUMNS:
            width = max([len(label)] + [len(str(r[key])) for r in rows]) + 2
            if key in ALWAYS or used + width <= room:
                chosen.append(key)
                used += width
        return chosen

    def _fill_forwards(self) -> None:
        if self.data is None:
            return
        table = self.forwards_table
        states = self._visible_forwards()
        if self._want is not None and self._want in [s.name for s in states]:
            self.selected, self._want = self._want, None
        cells = [self._forward_cells(s) for s in states]
        columns = self._fit_columns(cells)
        if columns != self._columns:
            # The width changed which columns fit: the one time the table is rebuilt.
            keep = table.cursor_key
            table.clear(columns=True)
            for key, label in FORWARD_COLUMNS:
                if key in columns:
                    table.add_column(label, key=key)
            self._columns = columns
            table.sync(
                [(s.name, [c[k] for k in columns]) for s, c in zip(states, cells, strict=True)]
            )
            if keep is not None and keep in table.rows:
                table.move_cursor(row=table.get_row_index(keep), scroll=False)
        else:
            table.sync(
                [(s.name, [c[k] for k in columns]) for s, c in zip(states, cells, strict=True)]
            )
        has_rows = bool(self.data.forwards or self.data.disabled)
        table.display = bool(states)
        # The height follows the rows, set here rather than left to `height: auto`: under load an
        # auto-height table could be laid out before its first rows were measured, and stayed blank.
        table.styles.height = min(len(states), FORWARD_ROWS) + 2  # + header and the bottom border
        empty = self.query_one("#forwards-empty", Static)
        if not has_rows:
            empty.update("no natbox forwards yet — press a to add one")
        elif not states:
            empty.update(f"no forward matches “{self.needle}” (Esc clears the filter)")
        empty.display = not states
        names = [s.name for s in states]
        if self.selected not in names:
            self._select(table.cursor_key if table.row_count else None)
        elif table.cursor_key != self.selected:
            # The cursor and the mark are one: the cursor goes where the mark is.
            table.move_cursor(row=table.get_row_index(self.selected))

    def _select(self, name: str | None) -> None:
        """Mark `name` as the forward every action acts on."""
        old, self.selected = self.selected, name
        table = self.forwards_table
        if "mark" in [c.key.value for c in table.ordered_columns]:
            for key, mark in ((old, " "), (name, MARK)):
                if key is not None and key in table.rows:
                    table.update_cell(key, "mark", mark)
                    table.update_cell(key, "name", Text(key, style="bold" if mark != " " else ""))
        if name is not None and name in table.rows and table.cursor_key != name:
            table.move_cursor(row=table.get_row_index(name))
        self._fill_rules()
        self._fill_health()

    def select_forward(self, name: str) -> None:
        """Put the mark (and the cursor) on `name`, e.g. a forward just added (now, or as soon as
        a read shows it)."""
        if name in self.forwards_table.rows:
            self._select(name)
        else:
            self._want = name

    def _rule_rows(self) -> list[Row]:
        assert self.data is not None
        selected = self.selected
        needle = self.needle
        rows: list[Row] = []
        for shown in self.data.chains:
            chain = shown.chain
            rules = [
                (i, r)
                for i, r in enumerate(chain.rules, 1)
                if not needle or needle in r.text.lower() or needle in r.owner
            ]
            if needle and not rules:
                continue
            rows.append((shown.key, self._chain_header(shown)))
            for i, rule in rules:
                rows.append((f"{shown.key}/{i}", self._rule_cells(i, rule, selected)))
        return rows

    @staticmethod
    def _chain_header(shown: ShownChain) -> list[Cell]:
        chain = shown.chain
        policy = f"policy {chain.policy}" if chain.policy else "natbox's chain"
        table = f"ip6 {shown.table}" if shown.family == 6 else shown.table
        return [
            "",
            Text(table, style="bold"),
            str(chain.packets) if chain.policy else "",
            Text(chain.name, style="bold underline"),
            Text(policy, style="dim"),
        ]

    @staticmethod
    def _rule_cells(i: int, rule: Rule, selected: str | None) -> list[Cell]:
        owner = rule.owner
        mine = selected is not None and owner == f"natbox:{selected}"
        style = "reverse green" if mine else OWNER_STYLE.get(owner.split(":")[0], "")
        target, match = split_target(rule.spec)
        return [
            str(i),
            Text(f"{MARK}{owner}" if mine else owner, style=style),
            str(rule.packets),
            Text(target, style="bold" if mine else ""),
            Text(match, style="bold" if mine else ""),
        ]

    def _fill_rules(self) -> None:
        if self.data is None:
            return
        self.rules_table.sync(self._rule_rows())
        self._show_rule_detail()

    def _show_rule_detail(self) -> None:
        """The full text of the rule under the rules cursor (the table may cut it at 80 columns)."""
        if self.data is None:
            return
        key = self.rules_table.cursor_key
        text = ""
        if key is not None and key.count("/") == 2:
            for shown in self.data.chains:
                if shown.key == key:
                    c = shown.chain
                    what = f"policy {c.policy}" if c.policy else "natbox's own chain"
                    text = f"{shown.title}: {what}, {len(c.rules)} rules (↑↓: each rule in full)"
        if key is not None and key.count("/") == 3:
            family, table, chain, index = key.split("/")
            for shown in self.data.chains:
                if shown.key == f"{family}/{table}/{chain}":
                    rule = shown.chain.rules[int(index) - 1]
                    ip = "ip6tables" if shown.family == 6 else "iptables"
                    text = f"{ip} -t {table} -A {chain} {shown_rule(rule.spec)}  [{rule.owner}]"
        self.query_one("#rule-detail", Static).update(text)

    def _fill_health(self) -> None:
        """The marked forward's findings, each with its fix."""
        if self.data is None:
            return
        name = self.selected
        text = Text()
        if name is None:
            text.append("no forward selected", style="dim")
        elif name in self.off_forwards:
            text.append(f"{name}: disabled — its rules are out; x puts them back", style="dim")
        elif name not in self.health:
            text.append(f"{name}: checking…", style="dim")
        else:
            findings = self.health[name]
            text.append(f"{name}: ", style="bold")
            serious = [f for f in findings if f.severity != "info"]
            text.append(
                "needs attention\n" if serious else "healthy\n",
                style="yellow" if serious else "green",
            )
            for f in findings:
                text.append(f"{f.severity:<8} {f.message}\n", style=SEVERITY_STYLE[f.severity])
                if f.severity != "info":
                    text.append(f"{'':<8} fix: {f.fix}\n", style="dim")
            text.append(
                "\nnatbox doctor also probes the backend and the conntrack table", style="dim"
            )
        self.query_one("#health-detail", Static).update(text)

    def _fill_interfaces(self, interfaces: Sequence[Any], now: float) -> None:
        table = self.query_one("#interfaces", KeyedTable)
        rows: list[Row] = []
        for iface in interfaces:
            rx_rate = tx_rate = 0.0
            last = self._last_io.get(iface.name)
            if last is not None and now > last[0]:
                dt = now - last[0]
                rx_rate = max(0, iface.rx_bytes - last[1]) / dt
                tx_rate = max(0, iface.tx_bytes - last[2]) / dt
                self._iface_history[iface.name].append(rx_rate + tx_rate)
            self._last_io[iface.name] = (now, iface.rx_bytes, iface.tx_bytes)
            rows.append(
                (
                    iface.name,
                    [
                        iface.name,
                        Text("up", style="green") if iface.up else Text("DOWN", style="red"),
                        str(iface.mtu),
                        " ".join(iface.addresses) or "-",
                        rate(rx_rate),
                        rate(tx_rate),
                        spark(self._iface_history[iface.name]),
                    ],
                )
            )
        table.sync(rows)

    # ---------------------------------------------------------------- actions

    def _selected_state(self) -> ForwardState | None:
        if self.data is None or self.selected is None:
            return None
        return next((s for s in self.data.forwards if s.name == self.selected), None)

    def _named(self, name: str) -> str:
        """`web (192.168.1.30:1234 → 10.0.2.50:80)`: how dialogs name a forward."""
        state = next((s for s in (self.data.forwards if self.data else ()) if s.name == name), None)
        if state is None or state.forward is None:
            return name
        return f"{name} ({path_text(state.forward)})"

    def action_add(self) -> None:
        if self.data is not None and self.data.read_only:
            self.say("read-only: run natbox with sudo to add forwards", severity="warning")
            return
        from tui.screens.wizard import WizardScreen

        # Pushed at once, with what is known now: keys typed ahead land in the wizard's fields.
        wizard = WizardScreen(
            self.engine, self.local_addresses(), self.confirm_seconds, self._taken()
        )
        self.app.push_screen(wizard, self._wizard_done)

    def _taken(self, but: str | None = None) -> set[tuple[str, int]]:
        """(proto, port) the forwards listen on (but `but`'s: an edit may keep its own port)."""
        forwards = [
            s.forward
            for s in (self.data.forwards if self.data else ())
            if s.forward and s.name != but
        ]
        return {
            (proto, port)
            for f in forwards
            for proto in f.protocols
            for port in range(f.listen.port, f.listen.port_end + 1)
        }

    def _wizard_done(self, result: Any) -> None:
        if result is not None:
            self._applying = True  # keys typed ahead (the `y`) wait for the confirm window
            self._apply_result(result.forward, result.enable_forwarding)

    @property
    def accepting_keys(self) -> bool:
        """False while an apply runs: keys typed ahead wait for the countdown (see NatboxApp)."""
        return not self._applying

    def local_addresses(self) -> list[tuple[str, str]]:
        """This box's addresses from the last read, the default route's interface first (read
        now if no read has brought them yet: `a` typed ahead at start-up, before the first
        Dashboard or its interfaces are in)."""
        interfaces = self.data.interfaces if self.data is not None else ()
        if not interfaces:
            self._reads += 1
            try:
                interfaces = self.engine.interfaces()
            except OSError:
                return []
            self._show_interfaces(interfaces, time.time(), self._reads)
        return [(a, i.name) for i in interfaces for a in i.addresses]

    @work(exclusive=True, group="wizard", exit_on_error=False, description="applying")
    async def _apply_result(self, fwd: Forward, enable_forwarding: bool) -> None:
        await self._apply_with_window(fwd, enable_forwarding)

    async def _in_thread(self, fn: Callable[[], Any], description: str = "engine call") -> Any:
        worker = self.app.run_worker(fn, thread=True, exit_on_error=False, description=description)
        try:
            return await worker.wait()
        except WorkerFailed as failed:
            # The engine's own errors surface as themselves, so callers catch NatboxError.
            if isinstance(failed.error, NatboxError):
                raise failed.error from None
            raise

    async def _apply_with_window(
        self, fwd: Forward, enable_forwarding: bool = False, record: bool = True
    ) -> bool:
        """Apply `fwd` with the confirm window; True when the user kept it."""
        engine = self.engine
        return await self._with_window(
            Change("added", fwd),
            lambda window: engine.apply(
                fwd, confirm_seconds=window, enable_forwarding=enable_forwarding
            ),
            record,
        )

    async def _with_window(
        self, change: Change, call: Callable[[float], Outcome], record: bool = True
    ) -> bool:
        """Make `change` with `call(window)` (an apply, an edit, an enable) and the confirm window:
        the countdown, then keep or roll back. True when the user kept it; `record`: a kept
        change goes into the history (an undo's does not: it takes the undone one out)."""
        from tui.screens.countdown import CountdownScreen

        engine = self.engine
        fwd = change.forward
        window = self.confirm_seconds
        armed_at = self.clock()  # the watchdog's deadline starts before the rules go in
        self._applying = True
        try:
            await self._in_thread(lambda: call(window), "applying")
        except StateWriteError as exc:
            self._applying = False
            if not exc.committed:
                self.say(exc.one_line(), severity="error")
                return False
            # In the kernel, only its record failed: the watchdog still counts down, so the
            # countdown is shown (keep or roll back), with what could not be written.
            self.say(exc.message, severity="warning", title="natbox", timeout=15)
        except NatboxError as exc:
            self.say(exc.one_line(), severity="error")
            return False
        finally:
            self._applying = False
        self.action_refresh(quiet=True)
        # The countdown shows the watchdog's real deadline: a slow apply has used part of it.
        left = max(1.0, window - (self.clock() - armed_at))
        answer = await self.app.push_screen_wait(
            CountdownScreen(fwd.name, path_text(fwd), left, self.clock)
        )
        kept = False
        try:
            if answer == "keep":
                said: str = await self._in_thread(engine.confirm, "confirming")
                if record:
                    self.history.append(change)
                note = said.removeprefix(fwd.name).strip()  # "(the saved set …)", if any
                self.say(f"kept {self._named_forward(fwd)} {note}".strip(), title="natbox")
                kept = True
            else:
                await self._in_thread(engine.rollback, "rolling back")
                self._say_rolled_back(change, answer == "expired")
        except NatboxError:
            # The watchdog got there first (the deadline passed): it rolled the forward back.
            self._say_rolled_back(change, True)
        self.action_refresh(quiet=True)
        if kept:
            self.select_forward(fwd.name)
            # The new forward is marked and the forwards table has the focus, whatever had it
            # before the wizard (the rules table, after 1): Tab, arrows and d then mean one thing.
            self.set_focus(self.forwards_table)
        return kept

    def _named_forward(self, fwd: Forward) -> str:
        return f"{fwd.name} ({path_text(fwd)})"

    def _say_rolled_back(self, change: Change, expired: bool) -> None:
        why = f"not confirmed within {self.confirm_seconds:.0f} s" if expired else "you chose n"
        after = {
            "edited": f"; {self._named_forward(change.before)} is back" if change.before else "",
            "enabled": "; it stays disabled",
        }.get(change.kind, "")
        self.say(
            f"{change.forward.name} rolled back: {why}{after}", title="natbox", severity="warning"
        )

    def action_undo(self) -> None:
        if not self.history:
            self.say("nothing to undo in this session", severity="warning")
            return
        self._undo()

    @work(exclusive=True, group="undo", exit_on_error=False, description="undo")
    async def _undo(self) -> None:
        from tui.screens.confirm import ConfirmScreen

        change = self.history[-1]
        kind, fwd = change.kind, change.forward
        if kind in ("edited", "disabled", "enabled"):
            await self._undo_change(change)
            return
        if kind == "added":
            try:
                lines = await self._preview_remove(fwd.name)
            except NatboxError as exc:
                self.say(exc.one_line(), severity="error")
                return
            detail = "\n".join(f"*{t}\n" + "\n".join(ls) for t, ls in lines.items())
            if await self.app.push_screen_wait(
                ConfirmScreen(f"Undo: remove {self._named_forward(fwd)}? These rules go:", detail)
            ):
                self._do_remove(self.engine, fwd.name, None, undo=change)
        else:
            plan = build_plan(fwd)
            detail = "\n".join(plan.plain()) + "\n\n" + plan.restore_text()
            if await self.app.push_screen_wait(
                ConfirmScreen(f"Undo: add {self._named_forward(fwd)} back?", detail)
            ):
                # Re-adding what was removed is not a new change to undo; and the removal leaves
                # the history only once it is undone (not kept: it still stands, `u` offers it).
                if await self._apply_with_window(fwd, record=False):
                    self._undone(change)

    def action_edit(self) -> None:
        name = self._marked("edit forwards", live=True)
        if name is None:
            return
        state = self._selected_state()
        if state is None or state.forward is None or not state.intact:
            self.say(
                f"{name}'s rules are not as natbox wrote them, so it cannot be edited "
                "(D diagnoses it; d removes it)",
                severity="warning",
            )
            return
        from tui.screens.wizard import WizardScreen

        old = state.forward
        wizard = WizardScreen(
            self.engine,
            self.local_addresses(),
            self.confirm_seconds,
            self._taken(but=name),
            editing=old,
        )
        self.app.push_screen(wizard, lambda result: self._edit_done(old, result))

    def _edit_done(self, old: Forward, result: Any) -> None:
        if result is None:
            return
        if result.forward == old and not result.enable_forwarding:
            self.say(f"{old.name} is unchanged: nothing to apply", title="natbox")
            return
        self._applying = True  # keys typed ahead (the `y`) wait for the confirm window
        self._edit(old, result.forward, result.enable_forwarding)

    @work(exclusive=True, group="wizard", exit_on_error=False, description="editing")
    async def _edit(self, old: Forward, new: Forward, enable_forwarding: bool) -> None:
        engine = self.engine
        await self._with_window(
            Change("edited", new, old),
            lambda window: engine.edit(
                old.name,
                new,
                confirm_seconds=window,
                enable_forwarding=enable_forwarding,
                expect=old,  # as the wizard showed it: changed meanwhile, nothing is touched
            ),
        )

    def action_toggle_forward(self) -> None:
        name = self._marked("disable or enable forwards")
        if name is not None:
            self._toggle(name, enable=name in self.off_forwards)

    @work(exclusive=True, group="toggle", exit_on_error=False, description="disable/enable")
    async def _toggle(self, name: str, enable: bool, undo: Change | None = None) -> None:
        """Disable `name` (after a yes) or enable it (after a yes, with the confirm window);
        `undo`: the change this undoes, dropped from the history once done."""
        from tui.screens.confirm import ConfirmScreen

        engine = self.engine
        try:
            preview: ChangePreview = await self._in_thread(
                (lambda: engine.preview_enable(name))
                if enable
                else lambda: engine.preview_disable(name),
                "reading the rules",
            )
        except NatboxError as exc:
            self.say(exc.one_line(), severity="error")
            return
        fwd = preview.after if enable else preview.before
        if fwd is None:
            self.say(f"{name} cannot be {'enabled' if enable else 'disabled'}", severity="error")
            return
        errors = [f for f in preview.findings if f.severity == "error"]
        if errors:
            self.say(
                f"{name} cannot be enabled: {errors[0].message} — fix: {errors[0].fix}",
                severity="error",
                timeout=10,
            )
            return
        detail = _change_detail(preview)
        prefix = "Undo: " if undo else ""
        if enable:
            question = f"{prefix}Enable {self._named_forward(fwd)}? These rules go back in:"
        else:
            question = (
                f"{prefix}Disable {self._named_forward(fwd)}? These rules go out "
                "(it is remembered; x puts it back):"
            )
        if not await self.app.push_screen_wait(ConfirmScreen(question, detail)):
            return
        if enable:
            kept = await self._with_window(
                Change("enabled", fwd),
                lambda window: engine.enable(name, confirm_seconds=window),
                record=undo is None,
            )
            if kept and undo is not None:
                self._undone(undo)
            return
        try:
            outcome: Outcome = await self._in_thread(
                lambda: engine.disable(name, expect=fwd), "disabling"
            )
        except NatboxError as exc:
            self.say(exc.one_line(), severity="error")
            return
        if undo is None:
            self.history.append(Change("disabled", fwd))
        else:
            self._undone(undo)
        self.say(
            f"disabled {self._named_forward(fwd)} ({outcome.seconds * 1000:.0f} ms): "
            "x puts it back",
            title="natbox",
        )
        self.action_refresh(quiet=True)

    async def _undo_change(self, change: Change) -> None:
        """Undo an edit (edit back), a disable (enable) or an enable (disable)."""
        from tui.screens.confirm import ConfirmScreen

        if change.kind == "disabled":
            self._toggle(change.forward.name, enable=True, undo=change)
            return
        if change.kind == "enabled":
            self._toggle(change.forward.name, enable=False, undo=change)
            return
        new, old = change.forward, change.before
        assert old is not None
        engine = self.engine
        try:
            preview: ChangePreview = await self._in_thread(
                lambda: engine.preview_edit(new.name, old), "reading the rules"
            )
        except NatboxError as exc:
            self.say(exc.one_line(), severity="error")
            return
        question = f"Undo the edit: {new.name} back to {self._named_forward(old)}?"
        if not await self.app.push_screen_wait(ConfirmScreen(question, _change_detail(preview))):
            return
        kept = await self._with_window(
            Change("edited", old, new),
            lambda window: engine.edit(new.name, old, confirm_seconds=window, expect=new),
            record=False,
        )
        if kept:
            self._undone(change)

    def _undone(self, change: Change) -> None:
        """`change` was undone (and only now): it leaves the history."""
        for i in range(len(self.history) - 1, -1, -1):
            if self.history[i] == change:
                del self.history[i]
                return

    def action_remove(self) -> None:
        name = self.selected
        if name is None:
            self.say("no forward selected", severity="warning")
            return
        if self.data is not None and self.data.read_only:
            self.say("read-only: run natbox with sudo to remove forwards", severity="warning")
            return
        off = self.off_forwards.get(name)
        if off is not None:
            self._confirm_forget(off)
            return
        state = self._selected_state()
        self._confirm_remove(name, state.forward if state else None)

    @work(exclusive=True, group="remove", exit_on_error=False, description="forget")
    async def _confirm_forget(self, fwd: Forward) -> None:
        """`d` on a disabled forward: it has no rules to remove; natbox forgets it, after a yes
        that says so (u cannot bring it back)."""
        from tui.screens.confirm import ConfirmScreen

        saved = (
            self.data is not None and self.data.saved is not None and fwd.name in self.data.saved
        )
        detail = (
            "It has no rules in the kernel. natbox forgets it for good; u cannot bring it back."
        )
        if saved:
            detail += (
                f"\n{fwd.name} is in the saved set: boot would add it again (f forgets it there)."
            )
        if await self.app.push_screen_wait(
            ConfirmScreen(f"Forget the disabled {self._named_forward(fwd)}?", detail)
        ):
            self._do_remove(self.engine, fwd.name, None, expect=fwd)

    @work(exclusive=True, group="remove", exit_on_error=False, description="remove")
    async def _confirm_remove(self, name: str, before: Forward | None) -> None:
        from tui.screens.confirm import ConfirmScreen

        try:
            lines = await self._preview_remove(name)
        except NatboxError as exc:
            self.say(exc.one_line(), severity="error")
            return
        detail = "\n".join(f"*{t}\n" + "\n".join(ls) for t, ls in lines.items())
        if await self.app.push_screen_wait(
            ConfirmScreen(f"Remove forward {self._named(name)}? These rules go:", detail)
        ):
            self._do_remove(self.engine, name, before, expect=before)

    async def _preview_remove(self, name: str) -> dict[str, list[str]]:
        engine = self.engine
        result: dict[str, list[str]] = await self._in_thread(
            lambda: engine.preview_remove(name), "reading the rules to remove"
        )
        return result

    @work(thread=True, exclusive=True, group="remove", exit_on_error=False, description="removing")
    def _do_remove(
        self,
        engine: EngineAPI,
        name: str,
        before: Forward | None,
        undo: Change | None = None,
        *,
        expect: Forward | None = None,
    ) -> None:
        """Remove (or forget) `name`; `before`: what u puts back (None: nothing); `expect`: the
        forward as the dashboard showed it (changed meanwhile: nothing is touched)."""
        outcome = engine.remove(name, expect=expect)
        self.app.call_from_thread(self._record_removal, before, undo)
        self.post_message(ForwardRemoved(name, outcome.seconds))

    def _record_removal(self, before: Forward | None, undo: Change | None) -> None:
        if undo is not None:
            self._undone(undo)  # the add this undid (only now that the removal is done)
        elif before is not None:
            self.history.append(Change("removed", before))

    def _marked(self, verb: str, writes: bool = True, live: bool = False) -> str | None:
        """The marked forward for an action, or None (said why); `live`: the action needs its
        rules in the kernel (a disabled forward has none)."""
        if self.selected is None:
            self.say("no forward selected", severity="warning")
            return None
        if writes and self.data is not None and self.data.read_only:
            self.say(f"read-only: run natbox with sudo to {verb}", severity="warning")
            return None
        if live and self.selected in self.off_forwards:
            self.say(f"{self.selected} is disabled: x enables it", severity="warning")
            return None
        return self.selected

    def action_save(self) -> None:
        name = self._marked("save forwards")
        if name is not None:
            self._engine_call(lambda: self.engine.save(name), "saving", refresh=True)

    def action_forget(self) -> None:
        name = self._marked("forget forwards")
        if name is not None:
            self._engine_call(lambda: self.engine.forget(name), "forgetting", refresh=True)

    @work(thread=True, group="calls", exit_on_error=False, description="engine call")
    def _engine_call(self, call: Callable[[], str], what: str, refresh: bool = False) -> None:
        """One engine call that says what it did (its failure: the StateChanged handler)."""
        try:
            said = call()
        except NatboxError as exc:
            self.app.call_from_thread(self.say, exc.one_line(), severity="error")
            return
        self.app.call_from_thread(self.say, said, title="natbox")
        if refresh:
            self.app.call_from_thread(self.action_refresh, True)

    def action_export(self) -> None:
        name = self._marked("export", writes=False, live=True)
        if name is not None:
            self._export(self.engine, name)

    @work(thread=True, group="calls", exit_on_error=False, description="exporting")
    def _export(self, engine: EngineAPI, name: str) -> None:
        try:
            parts = [
                f"# {fmt}\n{engine.export(name, fmt)}" for fmt in ("restore", "commands", "ansible")
            ]
        except NatboxError as exc:
            self.app.call_from_thread(self.say, exc.one_line(), severity="error")
            return
        from tui.screens.confirm import TextScreen

        self.app.call_from_thread(
            self.app.push_screen, TextScreen(f"export {name}", "\n".join(parts))
        )

    def action_doctor(self) -> None:
        name = self._marked("diagnose", writes=False, live=True)
        if name is not None:
            self.action_tab("health")
            self.query_one("#health-detail", Static).update(f"{name}: probing…")
            self._doctor(self.engine, name)

    @work(thread=True, group="calls", exit_on_error=False, description="doctor")
    def _doctor(self, engine: EngineAPI, name: str) -> None:
        try:
            found = engine.doctor(name, probe=True)
        except NatboxError as exc:
            self.app.call_from_thread(self.say, exc.one_line(), severity="error")
            return
        self.post_message(
            HealthChecked({**self.health, **found}, self.data.taken_at if self.data else 0.0)
        )

    def action_trace(self) -> None:
        name = self._marked("trace (it adds TRACE rules for a moment)", live=True)
        state = self._selected_state()
        if name is None or state is None:
            return
        if state.forward is None:
            self.say(f"{name} cannot be read back, so it cannot be traced", severity="warning")
            return
        from tui.screens.trace import TraceScreen

        self.app.push_screen(TraceScreen(state.forward, tracer=self.engine.trace))

    def action_kill_flows(self) -> None:
        name = self._marked("kill flows")
        if name is not None:
            self._confirm_kill(name)

    @work(exclusive=True, group="kill", exit_on_error=False, description="kill flows")
    async def _confirm_kill(self, name: str) -> None:
        from tui.screens.confirm import ConfirmScreen

        count = self.counts.get(name, FlowCount(0, 0)).flows if self.counts else 0
        if await self.app.push_screen_wait(
            ConfirmScreen(
                f"Kill all {count} flows of {self._named(name)}?",
                "Their connections break; new ones are made through the rules as they are now.",
            )
        ):
            engine = self.engine
            self._engine_call(
                lambda: f"killed {engine.kill_forward_flows(name)} flows of {name}", "killing"
            )

    def action_conntrack(self, forward: str | None = None) -> None:
        from tui.screens.conntrack import ConntrackScreen

        self.app.push_screen(ConntrackScreen(self.engine, forward=forward))

    def action_flows_of_forward(self) -> None:
        if self.selected is None:
            self.say("no forward selected", severity="warning")
            return
        self.action_conntrack(self.selected)

    def action_refresh(self, quiet: bool = False) -> None:
        self._read_rules(None, fresh=True)
        self.count_flows(self.engine, None)
        if not quiet:
            self.notify("reading", timeout=1)

    async def action_filter(self) -> None:
        box = await self._open_filter()
        self.goto_mode = False
        box.placeholder = "filter: forwards and rules (Enter keeps it, Esc clears)"
        box.add_class("-visible")
        box.focus()

    async def action_goto(self) -> None:
        box = await self._open_filter()
        self.goto_mode = True
        box.value = ""
        box.placeholder = "go to forward: type its name (Enter stays there)"
        box.add_class("-visible")
        box.focus()

    def _goto(self, text: str) -> None:
        table = self.forwards_table
        keys = table.keys()
        match = next((k for k in keys if k.lower().startswith(text)), None) or next(
            (k for k in keys if text in k.lower()), None
        )
        if match is not None:
            self._select(match)

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self._fill_forwards()
        self.notify(f"forwards sorted by {self.sort}", timeout=1.5)

    def action_switch_focus(self) -> None:
        # Two places to be, so Tab is a switch, set now (not deferred): a key typed right after it
        # lands in the table it names, whatever the state of the screen's focus chain.
        if self.focused is self.forwards_table:
            self.action_tab("rules")
            self.set_focus(self.rules_table)
        else:
            self.set_focus(self.forwards_table)

    @property
    def active_tab(self) -> str:
        """The id of the tab shown: rules, interfaces, health or history."""
        return self.query_one("#tabs", ContentSwitcher).current or TABS[0][0]

    def action_tab(self, tab: str) -> None:
        switcher = self.query_one("#tabs", ContentSwitcher)
        switcher.current = tab
        self.query_one(TabStrip).active = tab
        focused = self.focused
        if focused is not None and any(
            node.parent is switcher and node.id != tab for node in focused.ancestors_with_self
        ):
            # Its tab is hidden now: the keys go back to the forwards, not to nothing.
            self.set_focus(self.forwards_table)

    @on(TabStrip.Chosen)
    def _tab_clicked(self, message: TabStrip.Chosen) -> None:
        self.action_tab(message.tab)

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        self.app.push_screen(HelpScreen(self))

    def action_quit(self) -> None:
        self.app.exit(0)

    # ---------------------------------------------------------------- queries

    @property
    def forwards_table(self) -> KeyedTable:
        """The forwards table."""
        return self.query_one("#forwards", KeyedTable)

    @property
    def rules_table(self) -> KeyedTable:
        """The rules table."""
        return self.query_one("#rules-table", KeyedTable)

    @property
    def status_bar(self) -> StatusBar:
        """The status line."""
        return self.query_one("#status", StatusBar)
