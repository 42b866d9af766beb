"""Provides DashboardScreen: what this box forwards, the rules around it, and whether it works."""

from __future__ import annotations

import re
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, Static, TabbedContent, TabPane
from textual.worker import WorkerFailed

from natbox.checks import Finding
from natbox.engine import Dashboard
from natbox.errors import NatboxError
from natbox.model import Forward
from natbox.plan import build_plan
from tui.messages import DashboardLoaded, FlowsCounted, ForwardRemoved
from widgets.flow_table import human_bytes
from widgets.sparkline import rate, spark
from widgets.status_bar import StatusBar

RULES_EVERY = 3.0
FLOWS_EVERY = 1.0
OWNER_STYLE = {"docker": "cyan", "kube": "magenta", "other": "", "natbox": "green"}


def shown_rule(spec: str) -> str:
    """A rule as iptables prints it, less its comment (the owner column already says it)."""
    return _COMMENT.sub("", spec).strip()


_COMMENT = re.compile(r' ?-m comment --comment (?:"(?:[^"\\]|\\.)*"|\S+)')


SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}


def health_cell(findings: list[Finding], intact: bool) -> Text:
    """ok / N warn / error, for the forwards table."""
    errors = sum(f.severity == "error" for f in findings)
    warnings = sum(f.severity == "warning" for f in findings)
    if not intact or errors:
        return Text("error", style="bold red")
    if warnings:
        return Text(f"{warnings} warn", style="yellow")
    return Text("ok", style="green")


class DashboardScreen(Screen[None]):
    """The first screen: status bar, forwards, then rules and interfaces in tabs."""

    DEFAULT_CSS = """
    DashboardScreen #forwards {
        height: auto;
        max-height: 9;
    }
    DashboardScreen #forwards-empty {
        height: auto;
        padding: 0 1;
        color: $text-muted;
    }
    DashboardScreen TabbedContent {
        height: 1fr;
    }
    DashboardScreen #rules-filter {
        display: none;
        height: 3;
    }
    DashboardScreen #rules-filter.-visible {
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
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "add", "Add", id="dashboard.add", tooltip="Add a forward (wizard)"),
        Binding(
            "d", "remove", "Remove", id="dashboard.remove", tooltip="Remove the selected forward"
        ),
        Binding(
            "u",
            "undo",
            "Undo",
            show=False,
            id="dashboard.undo",
            tooltip="Undo the last change of this session",
        ),
        Binding(
            "c", "conntrack", "Flows", id="dashboard.conntrack", tooltip="Live conntrack viewer"
        ),
        Binding(
            "enter",
            "flows_of_forward",
            "Its flows",
            show=False,
            id="dashboard.flows",
            tooltip="Flows of the selected forward",
        ),
        Binding("r", "refresh", "Refresh", id="dashboard.refresh", tooltip="Read everything now"),
        Binding(
            "slash",
            "filter_rules",
            "Filter",
            show=False,
            id="dashboard.filter",
            tooltip="Filter the rules",
        ),
        Binding(
            "1",
            "tab('rules')",
            "Rules",
            show=False,
            id="dashboard.rules",
            tooltip="Show the rules tab",
        ),
        Binding(
            "2",
            "tab('interfaces')",
            "Ifaces",
            show=False,
            id="dashboard.ifaces",
            tooltip="Show the interfaces tab",
        ),
        Binding(
            "3",
            "tab('health')",
            "Health",
            show=False,
            id="dashboard.health",
            tooltip="Show the health of the selected forward",
        ),
        Binding("question_mark", "help", "Help", id="dashboard.help", tooltip="Every key"),
        Binding("q", "quit", "Quit", id="dashboard.quit", tooltip="Leave natbox"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.data: Dashboard | None = None
        self.counts: dict[str, tuple[int, int]] = {}
        self._history: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=12))
        self._last_io: dict[str, tuple[float, int, int]] = {}
        self._rules_filter = ""
        self._polls: dict[str, Timer] = {}
        self.history: list[tuple[str, Forward]] = []
        """This session's changes, newest last: ("added" | "removed", forward), for `u`."""

    def compose(self) -> ComposeResult:
        yield Header(icon="»")
        yield StatusBar("reading the firewall…", id="status")
        yield Static("", id="problem")
        yield DataTable(id="forwards", cursor_type="row", zebra_stripes=True)
        yield Static("no natbox forwards yet — press a to add one", id="forwards-empty")
        with TabbedContent(id="tabs"):
            with TabPane("Rules", id="rules"):
                with Vertical():
                    yield Input(placeholder="filter rules (Esc closes)", id="rules-filter")
                    yield DataTable(id="rules-table", cursor_type="row")
            with TabPane("Interfaces", id="interfaces"):
                yield DataTable(id="ifaces", cursor_type="row")
            with TabPane("Health", id="health"):
                with VerticalScroll():
                    yield Static("", id="health-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "natbox"
        forwards = self.forwards_table
        # Most telling first, so 80 columns show name, path, health and traffic.
        forwards.add_column("NAME", key="name")
        forwards.add_column("PROTO", key="proto")
        forwards.add_column("LISTEN → BACKEND", key="path")
        forwards.add_column("HEALTH", key="health")
        forwards.add_column("FLOWS", key="flows")
        forwards.add_column("BYTES", key="bytes")
        forwards.add_column("SAVED", key="saved")
        forwards.add_column("SNAT", key="snat")
        forwards.add_column("OPTS", key="opts")
        forwards.display = False
        rules = self.rules_table
        for col in ("#", "OWNER", "PKTS", "RULE"):
            rules.add_column(col, key=col)
        ifaces = self.query_one("#ifaces", DataTable)
        for col in ("NAME", "UP", "MTU", "ADDRESSES", "RX", "TX", "TRAFFIC"):
            ifaces.add_column(col, key=col)
        self.load_dashboard()
        self.count_flows()

    # ---------------------------------------------------------------- workers

    @work(
        thread=True, exclusive=True, group="rules", exit_on_error=False, description="Reading rules"
    )
    def load_dashboard(self) -> None:
        """Read rules, forwards and interfaces off the UI thread."""
        data = self.app.engine.dashboard()  # type: ignore[attr-defined]
        self.post_message(DashboardLoaded(data))

    @work(
        thread=True,
        exclusive=True,
        group="flows",
        exit_on_error=False,
        description="Counting flows",
    )
    def count_flows(self) -> None:
        """Read the conntrack table and count flows and bytes per forward."""
        try:
            snap = self.app.engine.flows()  # type: ignore[attr-defined]
        except NatboxError:
            self.app.call_from_thread(self._schedule_flows)
            return
        counts: dict[str, list[int]] = {}
        owner = snap.index
        for flow in snap.flows:
            name = owner(flow)
            if name is not None:
                entry = counts.setdefault(name, [0, 0])
                entry[0] += 1
                entry[1] += flow.bytes
        self.post_message(FlowsCounted({k: (v[0], v[1]) for k, v in counts.items()}, snap))

    def _polling_paused(self) -> bool:
        # Nothing is read while a modal (or another screen) is in front.
        return self.app.screen is not self or isinstance(self.app.screen, ModalScreen)

    def _schedule(self, what: str, delay: float, callback: Callable[[], None]) -> None:
        # One pending poll per kind: a manual refresh must not double the polling.
        if what in self._polls:
            self._polls[what].stop()
        self._polls[what] = self.set_timer(delay, callback)

    def _schedule_rules(self) -> None:
        self._schedule("rules", RULES_EVERY, self._poll_rules)

    def _schedule_flows(self) -> None:
        self._schedule("flows", FLOWS_EVERY, self._poll_flows)

    def _poll_rules(self) -> None:
        if self._polling_paused():
            self._schedule_rules()
        else:
            self.load_dashboard()

    def _poll_flows(self) -> None:
        if self._polling_paused():
            self._schedule_flows()
        else:
            self.count_flows()

    # ---------------------------------------------------------------- handlers

    @on(DashboardLoaded)
    def _loaded(self, message: DashboardLoaded) -> None:
        data = message.data
        self.data = data
        if data.recovered:
            self.notify(data.recovered, title="natbox recovered", severity="warning", timeout=10)
        with self.app.batch_update():
            self.status_bar.show(
                host=data.host,
                backend=data.backend,
                ip_forward=data.ip_forward,
                fill=data.fill,
                read_only=data.read_only,
                warnings=len(data.warnings),
            )
            problem = self.query_one("#problem", Static)
            lines = ([data.error] if data.error else []) + [f"⚠ {w}" for w in data.warnings]
            problem.update("\n".join(lines))
            problem.set_class(bool(lines), "-visible")
            self._fill_forwards()
            self._fill_rules()
            self._fill_interfaces()
            self._fill_health()
        self._schedule_rules()

    @on(FlowsCounted)
    def _counted(self, message: FlowsCounted) -> None:
        self.counts = message.counts
        if self.data is not None:
            self.data.fill = message.snapshot.fill
            self.status_bar.show(
                host=self.data.host,
                backend=self.data.backend,
                ip_forward=self.data.ip_forward,
                fill=message.snapshot.fill,
                read_only=self.data.read_only,
                warnings=len(self.data.warnings),
            )
        table = self.forwards_table
        for row_key in table.rows:
            name = str(row_key.value)
            n, b = self.counts.get(name, (0, 0))
            table.update_cell(row_key, "flows", str(n))
            table.update_cell(row_key, "bytes", human_bytes(b))
        self._schedule_flows()

    @on(ForwardRemoved)
    def _removed(self, message: ForwardRemoved) -> None:
        self.notify(f"removed {message.name} ({message.seconds * 1000:.0f} ms)", title="natbox")
        self.load_dashboard()

    @on(DataTable.RowHighlighted, "#forwards")
    def _forward_highlighted(self) -> None:
        self._fill_rules()
        self._fill_health()

    @on(Input.Changed, "#rules-filter")
    def _rules_filter_changed(self, event: Input.Changed) -> None:
        self._rules_filter = event.value.strip().lower()
        self._fill_rules()

    @on(DataTable.RowSelected, "#forwards")
    def _forward_selected(self) -> None:
        self.action_flows_of_forward()

    def on_key(self, event: events.Key) -> None:
        box = self.query_one("#rules-filter", Input)
        if event.key == "escape" and box.has_class("-visible"):
            box.value = ""
            box.remove_class("-visible")
            self.rules_table.focus()

    # ---------------------------------------------------------------- filling

    @property
    def selected_forward(self) -> str | None:
        """The name of the forward under the cursor, if any."""
        table = self.forwards_table
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return str(row_key.value)

    def _fill_forwards(self) -> None:
        assert self.data is not None
        table = self.forwards_table
        keep = self.selected_forward
        table.clear()
        for state in self.data.forwards:
            f = state.forward
            n, b = self.counts.get(state.name, (0, 0))
            health = health_cell(self.data.health.get(state.name, []), state.intact)
            known = self.data.saved
            saved = (
                "?"
                if known is None
                else Text("yes", style="green")
                if state.name in known
                else "no"
            )
            if f is None:
                cells: list[str | Text] = [
                    state.name,
                    "?",
                    "?",
                    health,
                    str(n),
                    human_bytes(b),
                    saved,
                    "?",
                    "",
                ]
            else:
                opts = " ".join(
                    o
                    for o, on_ in (
                        ("mss", f.mss_clamp),
                        (f"from {len(f.sources)}", bool(f.sources)),
                    )
                    if on_
                )
                snat = "masq" if f.masquerade else str(f.snat)
                path = f"{f.listen} → {f.backend}"
                cells = [f.name, f.proto, path, health, str(n), human_bytes(b), saved, snat, opts]
            table.add_row(*cells, key=state.name)
        has_rows = bool(self.data.forwards)
        table.display = has_rows
        self.query_one("#forwards-empty", Static).display = not has_rows
        if keep is not None and keep in [s.name for s in self.data.forwards]:
            table.move_cursor(row=table.get_row_index(keep))

    def _fill_rules(self) -> None:
        if self.data is None:
            return
        table = self.rules_table
        selected = self.selected_forward
        needle = self._rules_filter
        table.clear()
        for tname, chain in self.data.chains:
            policy = f"policy {chain.policy}" if chain.policy else "natbox's chain"
            rules = [
                (i, r)
                for i, r in enumerate(chain.rules, 1)
                if not needle or needle in r.text.lower() or needle in r.owner
            ]
            if needle and not rules:
                continue
            head = Text(f"{tname} {chain.name} — {policy}", style="bold underline")
            table.add_row("", "", str(chain.packets) if chain.policy else "", head)
            for i, rule in rules:
                owner = rule.owner
                mine = selected is not None and owner == f"natbox:{selected}"
                style = "reverse green" if mine else OWNER_STYLE.get(owner.split(":")[0], "")
                table.add_row(
                    str(i),
                    Text(owner, style=style),
                    str(rule.packets),
                    Text(shown_rule(rule.spec), style="bold" if mine else ""),
                )

    def _fill_health(self) -> None:
        """The selected forward's findings, each with its fix."""
        if self.data is None:
            return
        name = self.selected_forward
        text = Text()
        if name is None:
            text.append("no forward selected", style="dim")
        else:
            findings = self.data.health.get(name, [])
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

    def _fill_interfaces(self) -> None:
        assert self.data is not None
        table = self.query_one("#ifaces", DataTable)
        table.clear()
        now = self.data.taken_at
        for iface in self.data.interfaces:
            rx_rate = tx_rate = 0.0
            last = self._last_io.get(iface.name)
            if last is not None and now > last[0]:
                dt = now - last[0]
                rx_rate = max(0, iface.rx_bytes - last[1]) / dt
                tx_rate = max(0, iface.tx_bytes - last[2]) / dt
                self._history[iface.name].append(rx_rate + tx_rate)
            self._last_io[iface.name] = (now, iface.rx_bytes, iface.tx_bytes)
            table.add_row(
                iface.name,
                Text("up", style="green") if iface.up else Text("down", style="red"),
                str(iface.mtu),
                " ".join(iface.addresses) or "-",
                rate(rx_rate),
                rate(tx_rate),
                spark(self._history[iface.name]),
            )

    # ---------------------------------------------------------------- actions

    def action_add(self) -> None:
        if self.data is not None and self.data.read_only:
            self.notify("read-only: run natbox with sudo to add forwards", severity="warning")
            return
        self._wizard()

    @work(exclusive=True, group="wizard", exit_on_error=False)
    async def _wizard(self) -> None:
        from tui.screens.wizard import WizardScreen

        addresses = await self._in_thread(self.app.engine.local_addresses)  # type: ignore[attr-defined]
        result = await self.app.push_screen_wait(WizardScreen(addresses, self._window))
        if result is not None:
            await self._apply_with_window(result.forward, result.enable_forwarding)

    async def _in_thread(self, fn: Callable[[], Any]) -> Any:
        worker = self.app.run_worker(
            fn, thread=True, exit_on_error=False, description="Engine call"
        )
        try:
            return await worker.wait()
        except WorkerFailed as failed:
            # The engine's own errors surface as themselves, so callers catch NatboxError.
            if isinstance(failed.error, NatboxError):
                raise failed.error from None
            raise

    async def _apply_with_window(self, fwd: Forward, enable_forwarding: bool = False) -> bool:
        """Apply `fwd` with the confirm window; True when the user kept it."""
        from tui.screens.countdown import CountdownScreen

        engine = self.app.engine  # type: ignore[attr-defined]
        try:
            await self._in_thread(
                lambda: engine.apply(
                    fwd, confirm_seconds=self._window, enable_forwarding=enable_forwarding
                )
            )
        except NatboxError as exc:
            self.notify(exc.one_line(), severity="error")
            return False
        self.load_dashboard()
        keep = await self.app.push_screen_wait(CountdownScreen(fwd.name, self._window))
        try:
            if keep:
                await self._in_thread(engine.confirm)
                self.history.append(("added", fwd))
                self.notify(f"kept {fwd.name}", title="natbox")
            else:
                await self._in_thread(engine.rollback)
                self.notify(f"rolled back {fwd.name}", title="natbox")
        except NatboxError as exc:  # e.g. the watchdog rolled it back a moment earlier
            self.notify(exc.message, severity="warning")
            keep = False
        self.load_dashboard()
        self.count_flows()
        return bool(keep)

    def action_undo(self) -> None:
        if not self.history:
            self.notify("nothing to undo in this session", severity="warning")
            return
        self._undo()

    @work(exclusive=True, group="undo", exit_on_error=False)
    async def _undo(self) -> None:
        from tui.screens.confirm import ConfirmScreen

        kind, fwd = self.history[-1]
        if kind == "added":
            try:
                lines = await self._preview_remove(fwd.name)
            except NatboxError as exc:
                self.notify(exc.one_line(), severity="error")
                return
            detail = "\n".join(f"*{t}\n" + "\n".join(ls) for t, ls in lines.items())
            if await self.app.push_screen_wait(
                ConfirmScreen(f"Undo: remove {fwd.name}? These rules go:", detail)
            ):
                self.history.pop()
                self._do_remove(fwd.name, record=False)
        else:
            plan = build_plan(fwd)
            detail = "\n".join(plan.plain()) + "\n\n" + plan.restore_text()
            if await self.app.push_screen_wait(
                ConfirmScreen(f"Undo: add {fwd.name} back?", detail)
            ):
                self.history.pop()
                await self._apply_with_window(fwd)
                if self.history and self.history[-1] == ("added", fwd):
                    self.history.pop()  # re-adding what was removed is not a new change to undo

    def action_remove(self) -> None:
        name = self.selected_forward
        if name is None:
            self.notify("no forward selected", severity="warning")
            return
        if self.data is not None and self.data.read_only:
            self.notify("read-only: run natbox with sudo to remove forwards", severity="warning")
            return
        self._confirm_remove(name)

    @work(exclusive=True, group="remove", exit_on_error=False)
    async def _confirm_remove(self, name: str) -> None:
        from tui.screens.confirm import ConfirmScreen

        try:
            lines = await self._preview_remove(name)
        except NatboxError as exc:
            self.notify(exc.one_line(), severity="error")
            return
        detail = "\n".join(f"*{t}\n" + "\n".join(ls) for t, ls in lines.items())
        if await self.app.push_screen_wait(
            ConfirmScreen(f"Remove forward {name}? These rules go:", detail)
        ):
            self._do_remove(name, record=True)

    async def _preview_remove(self, name: str) -> dict[str, list[str]]:
        result: dict[str, list[str]] = await self._in_thread(
            lambda: self.app.engine.preview_remove(name)  # type: ignore[attr-defined]
        )
        return result

    @work(thread=True, exclusive=True, group="remove", exit_on_error=False, description="Removing")
    def _do_remove(self, name: str, record: bool) -> None:
        before = next(
            (s.forward for s in (self.data.forwards if self.data else []) if s.name == name), None
        )
        try:
            outcome = self.app.engine.remove(name)  # type: ignore[attr-defined]
        except NatboxError as exc:
            self.app.call_from_thread(self.notify, exc.one_line(), severity="error")
            return
        if record and before is not None:
            self.history.append(("removed", before))
        self.post_message(ForwardRemoved(name, outcome.seconds))

    def action_conntrack(self, forward: str | None = None) -> None:
        from tui.screens.conntrack import ConntrackScreen

        self.app.push_screen(ConntrackScreen(forward=forward))

    def action_flows_of_forward(self) -> None:
        self.action_conntrack(self.selected_forward)

    def action_refresh(self) -> None:
        self.load_dashboard()
        self.count_flows()
        self.notify("refreshing", timeout=1)

    def action_filter_rules(self) -> None:
        self.query_one("#tabs", TabbedContent).active = "rules"
        box = self.query_one("#rules-filter", Input)
        box.add_class("-visible")
        box.focus()

    def action_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        self.app.push_screen(HelpScreen(self))

    def action_quit(self) -> None:
        self.app.exit(0)

    # ---------------------------------------------------------------- queries

    @property
    def _window(self) -> float:
        """The confirm window of new forwards, in seconds."""
        seconds: float = self.app.confirm_seconds  # type: ignore[attr-defined]
        return seconds

    @property
    def forwards_table(self) -> DataTable[object]:
        """The forwards table."""
        return self.query_one("#forwards", DataTable)

    @property
    def rules_table(self) -> DataTable[object]:
        """The rules table."""
        return self.query_one("#rules-table", DataTable)

    @property
    def status_bar(self) -> StatusBar:
        """The status line."""
        return self.query_one("#status", StatusBar)
