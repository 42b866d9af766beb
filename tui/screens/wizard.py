"""Provides WizardScreen: listen → backend → options → preview, keyboard only; returns the forward.

Enter goes to the next step (on the preview: apply), Escape goes back, Tab moves between fields.
Every field is validated as you type by the core's own validators; the derived SNAT source, MTUs and
the preflight findings come from the engine in thread workers.
"""

from __future__ import annotations

import re
from collections.abc import Set
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.widgets import (
    ContentSwitcher,
    Input,
    Label,
    RadioSet,
    Static,
    TabbedContent,
    TabPane,
)
from textual.worker import Worker, WorkerState

from natbox.api import Derived, EngineAPI
from natbox.checks import ERROR, Finding
from natbox.errors import NatboxError, ValidationError
from natbox.model import Endpoint, Forward, name_problem, parse_cidr, parse_ip, parse_port_range
from natbox.plan import build_plan
from widgets.key_bar import KeyBar
from widgets.rule_text import split_target
from widgets.step_bar import StepBar
from widgets.title_bar import TitleBar
from widgets.toggles import StateCheckbox as Checkbox
from widgets.toggles import StateRadioButton as RadioButton

STEPS = ["Listen", "Backend", "Options", "Preview"]
PROTOS = ("tcp", "udp", "both")
SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}
FIRST_SUGGESTED_PORT = 8080
EDIT_FIELDS = ("listen-ip", "listen-port", "backend", "name", "sources")
"""The fields an edit prefills: derived values never overwrite them."""
_REMOVE_HINT = re.compile(r"`?natbox remove ([\w.-]+)`?")


def suggest_port(taken: Set[tuple[str, int]], listening: Set[tuple[str, int]]) -> str:
    """The first port from 8080 that no forward and no listening socket uses (tcp or udp)."""
    used = {port for _proto, port in (*taken, *listening)}
    port = FIRST_SUGGESTED_PORT
    while port in used and port < 65535:
        port += 1
    return str(port)


def tui_fix(fix: str) -> str:
    """A finding's fix as keys in this TUI (the checks speak CLI)."""
    return _REMOVE_HINT.sub(r"Escape to the dashboard, mark \1 and press d", fix)


def commands_of(lines: dict[str, list[str]], family: int) -> list[str]:
    """Restore lines per table as the iptables commands that do the same, one per line."""
    out: list[str] = []
    for key, table_lines in lines.items():
        # A change that spans both IP versions names the IPv6 tables `ip6 nat`, `ip6 filter`.
        six = family == 6 or key.startswith("ip6 ")
        tool, table = ("ip6tables" if six else "iptables"), key.removeprefix("ip6 ")
        for line in table_lines:
            if line.startswith(":"):
                out.append(f"{tool} -w -t {table} -N {line[1:].split()[0]}")
            else:
                out.append(f"{tool} -w -t {table} {line}")
    return out


def restore_of(lines: dict[str, list[str]]) -> str:
    """Restore lines per table as the text `iptables-restore --noflush` is given."""
    return "".join(
        ("# ip6tables-restore --noflush\n" if t.startswith("ip6 ") else "")
        + f"*{t.removeprefix('ip6 ')}\n"
        + "".join(f"{line}\n" for line in ls)
        + "COMMIT\n"
        for t, ls in lines.items()
    )


def plain_of(fwd: Forward) -> list[str]:
    """One line per rule: its real target (ACCEPT, not the plan's kind) and what it does."""
    plan = build_plan(fwd)
    lines = []
    for rule in plan.rules:
        target = split_target(rule.save_line)[0].split(" ")[0] or rule.kind.upper()
        lines.append(f"{target:<10} {rule.purpose}")
    return [*lines, plan.plain()[-1]]


@dataclass(frozen=True)
class WizardResult:
    """What the wizard hands back: the forward, and whether to turn ip_forward on."""

    forward: Forward
    enable_forwarding: bool


class WizardScreen(Screen[WizardResult | None]):
    """Add a forward in four steps; or edit one (`editing`): the same steps, prefilled with it."""

    DEFAULT_CSS = """
    WizardScreen ContentSwitcher {
        height: 1fr;
        padding: 0 1;
    }
    WizardScreen .step {
        height: 1fr;
    }
    WizardScreen Label {
        margin-top: 1;
    }
    WizardScreen .hint {
        color: $text-muted;
    }
    WizardScreen .error {
        color: $error;
        height: auto;
    }
    WizardScreen .derived {
        color: $success;
        height: auto;
    }
    WizardScreen Input {
        width: 60;
    }
    WizardScreen RadioSet {
        layout: horizontal;
        height: auto;
    }
    WizardScreen #preview-tabs {
        height: 1fr;
    }
    WizardScreen #findings {
        height: auto;
        max-height: 7;
    }
    WizardScreen #apply-state {
        text-style: bold;
        height: 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "enter",
            "next",
            "Next",
            priority=True,
            id="wizard.next",
            tooltip="Next step",
        ),
        Binding(
            "enter",
            "apply",
            "Apply",
            priority=True,
            id="wizard.apply",
            tooltip="Apply (on the preview), with the confirm window",
        ),
        Binding("escape", "back", "Back", id="wizard.back", tooltip="Previous step (or leave)"),
        Binding("tab", "app.focus_next", "Next field", id="wizard.tab", tooltip="Next field"),
        Binding(
            "shift+tab",
            "app.focus_previous",
            "Prev field",
            show=False,
            id="wizard.shift-tab",
            tooltip="Previous field (or tab)",
        ),
        Binding("question_mark", "help", "Help", show=False, id="wizard.help", tooltip="Every key"),
    ]

    def __init__(
        self,
        engine: EngineAPI,
        addresses: list[tuple[str, str]],
        confirm_seconds: float = 30.0,
        taken: Set[tuple[str, int]] = frozenset(),
        editing: Forward | None = None,
    ) -> None:
        super().__init__()
        self.editing = editing
        """The forward being edited (its fields are the prefill; only the SNAT source is derived
        again, when the backend moves and you did not type one)."""
        self.engine = engine
        self.addresses = addresses
        """(address, interface): the default route's interface first."""
        self.confirm_seconds = confirm_seconds
        self.taken = taken
        """(proto, port) the box's forwards listen on."""
        self.port = editing.listen.ports if editing else suggest_port(taken, frozenset())
        """The suggested port (a real value, not a placeholder)."""
        self.touched: set[str] = set(EDIT_FIELDS if editing else ())
        """Fields the user typed into (prefills never overwrite them); an edit's are all set."""
        self.apply_lines: dict[str, list[str]] | None = None
        self._mounted = False
        self.step = 0
        self.derived: Derived | None = None
        self.snat_touched = False
        self.forward: Forward | None = None
        self.findings: list[Finding] = []
        self.checked = False
        """The preflight of the forward on the preview has come back."""

    def compose(self) -> ComposeResult:
        local = [a for a, dev in self.addresses if dev != "lo"]
        listed = "   ".join(f"{a} {dev}" for a, dev in self.addresses if dev != "lo")
        old = self.editing
        listen_ip = str(old.listen.ip) if old else (local[0] if local else "")
        proto = old.proto if old else PROTOS[0]
        yield TitleBar(icon="≡")
        yield StepBar(STEPS, id="steps")
        with ContentSwitcher(initial="step-0"):
            with VerticalScroll(id="step-0", classes="step"):
                yield Label("Client-facing address (where clients connect)")
                yield Static(f"this box: {listed or 'no addresses found'}", classes="hint")
                yield Input(
                    listen_ip,
                    id="listen-ip",
                    suggester=SuggestFromList(local, case_sensitive=False),
                )
                yield Static("", id="listen-ip-error", classes="error")
                yield Label("Port, or a range like 8000-8010")
                yield Input(self.port, id="listen-port", placeholder="e.g. 1234")
                yield Static("", id="listen-port-error", classes="error")
                yield Label("Protocol (arrows, then space)")
                with RadioSet(id="proto"):
                    for p in PROTOS:
                        yield RadioButton(p, value=p == proto, id=f"proto-{p}")
            with VerticalScroll(id="step-1", classes="step"):
                yield Label("Backend ip:port (the server clients should reach)")
                yield Input(
                    str(old.backend) if old else "", id="backend", placeholder="e.g. 10.0.2.50:80"
                )
                yield Static("", id="backend-error", classes="error")
                yield Static("", id="derived", classes="derived")
                yield Label("SNAT source (this box's backend-side address, derived from the route)")
                yield Input(
                    str(old.snat) if old and old.snat else "",
                    id="snat",
                    placeholder="derived when the backend is known",
                )
                yield Static("", id="snat-error", classes="error")
                yield Checkbox(
                    "Masquerade instead (SNAT to whatever the outgoing address is)",
                    bool(old and old.masquerade),
                    id="masquerade",
                )
            with VerticalScroll(id="step-2", classes="step"):
                yield Label("Name")
                yield Input(old.name if old else "", id="name")
                yield Static("", id="name-error", classes="error")
                yield Checkbox("MSS clamp", bool(old and old.mss_clamp), id="mss")
                yield Static("", id="mss-reason", classes="hint")
                yield Label("Allowed clients (CIDRs, comma-separated; empty = anyone)")
                yield Input(
                    ", ".join(str(n) for n in old.sources) if old else "",
                    id="sources",
                    placeholder="e.g. 192.168.1.0/24",
                )
                yield Static("", id="sources-error", classes="error")
                yield Checkbox(
                    "Also for this box's own connections (nat OUTPUT)",
                    bool(old and old.local),
                    id="local",
                )
                yield Checkbox("Enable ip_forward (it is off)", id="enable-forwarding")
            with Vertical(id="step-3"):
                with TabbedContent(id="preview-tabs"):
                    with TabPane("Plain", id="tab-plain"):
                        with VerticalScroll():
                            yield Static("", id="plain", markup=False)
                    with TabPane("Commands", id="tab-commands"):
                        with VerticalScroll():
                            yield Static("", id="commands", markup=False)
                    with TabPane("Restore", id="tab-restore"):
                        with VerticalScroll():
                            yield Static("", id="restore", markup=False)
                yield Static("", id="findings")
                yield Static("", id="apply-state")
        yield KeyBar()

    def on_mount(self) -> None:
        self.call_after_refresh(self._accept_keys)
        self.title = f"edit {self.editing.name}" if self.editing else "add a forward"
        if self.editing is not None and self.editing.masquerade:
            self.query_one("#snat", Input).disabled = True
        self.sub_title = "Enter next · Esc back · Tab next field"
        self.query_one("#enable-forwarding", Checkbox).display = False
        self.query_one("#listen-ip", Input).focus()
        self.read_listening(self.engine)

    def _accept_keys(self) -> None:
        self._mounted = True

    @work(thread=True, exclusive=True, group="ports", exit_on_error=False, description="Ports")
    def read_listening(self, engine: EngineAPI) -> None:
        """The box's listening sockets: the suggested port avoids them too."""
        listening = engine.listening_ports()
        self.app.call_from_thread(self._listening, listening)

    def _listening(self, listening: frozenset[tuple[str, int]]) -> None:
        box = self.query_one("#listen-port", Input)
        if "listen-port" in self.touched or box.value != self.port:
            return
        self.port = suggest_port(self.taken, listening)
        box.value = self.port

    # ---------------------------------------------------------------- validation

    def _value(self, id_: str) -> str:
        return self.query_one(f"#{id_}", Input).value.strip()

    def _show(self, id_: str, message: str) -> bool:
        self.query_one(f"#{id_}-error", Static).update(message)
        return not message

    def _check(self, id_: str) -> bool:
        """Validate one field with the core's validators; show and return whether it is fine."""
        value = self._value(id_)
        try:
            if id_ == "listen-ip":
                parse_ip(value, "listen address")
            elif id_ == "listen-port":
                parse_port_range(value)
            elif id_ == "backend":
                Endpoint.parse(value, "backend")
            elif id_ == "snat":
                if not self.query_one("#masquerade", Checkbox).value:
                    parse_ip(value, "SNAT source")
            elif id_ == "name":
                problem = name_problem(value)
                if problem:
                    return self._show(id_, problem)
            elif id_ == "sources":
                for part in filter(None, (p.strip() for p in value.split(","))):
                    parse_cidr(part)
        except ValidationError as exc:
            return self._show(id_, f"{exc.message} — {exc.hint}" if exc.hint else exc.message)
        return self._show(id_, "")

    STEP_FIELDS: ClassVar[dict[int, tuple[str, ...]]] = {
        0: ("listen-ip", "listen-port"),
        1: ("backend", "snat"),
        2: ("name", "sources"),
    }

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        id_ = event.input.id or ""
        if event.input.has_focus:
            self.touched.add(id_)
        if id_ == "snat" and event.input.has_focus:
            self.snat_touched = True
        if self._value(id_) or id_ in ("sources",):
            self._check(id_)
        if id_ in ("backend", "listen-ip") and self._check_quiet("backend"):
            self._derive()

    def _check_quiet(self, id_: str) -> bool:
        try:
            Endpoint.parse(self._value(id_), "backend")
        except ValidationError:
            return False
        return True

    @on(Checkbox.Changed, "#masquerade")
    def _masquerade(self, event: Checkbox.Changed) -> None:
        self.query_one("#snat", Input).disabled = event.value
        self._check("snat")

    # ---------------------------------------------------------------- derivation

    @work(
        thread=True, exclusive=True, group="derive", exit_on_error=False, description="Route lookup"
    )
    def derive(self, engine: EngineAPI, listen: str, backend_ip: str) -> None:
        """Ask the engine for the SNAT source, interfaces and MTUs (a route lookup)."""
        derived = engine.derive(listen, backend_ip)
        self.app.call_from_thread(self._derived, derived)

    def _derive(self) -> None:
        backend = Endpoint.parse(self._value("backend"), "backend")
        self.derive(self.engine, self._value("listen-ip"), str(backend.ip))

    @property
    def accepting_keys(self) -> bool:
        """Keys typed ahead (NatboxApp holds them) wait until the first field has the focus and the
        engine has answered: Enter after the backend then finds the derived SNAT source."""
        return self._mounted and not self.asking

    @property
    def asking(self) -> bool:
        """An engine call (route lookup, preflight) is in flight. Asked of the workers themselves,
        not counted: a worker replaced by a newer one (exclusive) never reports its end, and a
        count would then hold the keys typed ahead for good."""
        return any(
            w.node is self
            and w.group in ("derive", "preflight")
            and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
            and not w.is_cancelled
            for w in self.app.workers
        )

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group in ("derive", "preflight") and event.state == WorkerState.ERROR:
            self.notify(
                f"{event.worker.description} failed: {event.worker.error!r}", severity="error"
            )

    def _derived(self, d: Derived) -> None:
        self.derived = d
        listen = self.query_one("#listen-ip", Input)
        if "listen-ip" not in self.touched and d.backend_dev and d.listen_dev == d.backend_dev:
            # The prefilled address is on the backend's side: clients are on another interface.
            other = next((a for a, dev in self.addresses if dev not in (d.backend_dev, "lo")), None)
            if other is not None:
                listen.value = other
        if d.snat is None:
            text = f"⚠ {d.route_error or 'no route to the backend'}"
        else:
            text = f"✓ the route to the backend leaves via {d.backend_dev}, from {d.snat}"
        self.query_one("#derived", Static).update(text)
        snat = self.query_one("#snat", Input)
        # An edit keeps its SNAT source while the backend stays; a backend that moves takes the
        # source of the route to it (as `natbox edit --backend` does), unless you typed one.
        moved = self.editing is None or self._value("backend") != str(self.editing.backend)
        if d.snat and not self.snat_touched and moved:
            snat.value = d.snat
        mss = self.query_one("#mss", Checkbox)
        reason = self.query_one("#mss-reason", Static)
        if self.editing is not None:
            reason.update(
                "as the forward has it" + (" (suggested here)" if d.mss_suggested else "")
            )
        elif d.mss_suggested:
            mss.value = True
            reason.update(
                f"ticked: {d.listen_dev} has MTU {d.mtu_listen}, {d.backend_dev} {d.mtu_backend}; "
                "without a clamp big TCP segments can stall"
            )
        else:
            reason.update("the two sides' MTUs are the same; not needed")
        forwarding = self.query_one("#enable-forwarding", Checkbox)
        forwarding.display = not d.ip_forward
        if not d.ip_forward:
            forwarding.value = True

    # ---------------------------------------------------------------- steps

    def _go(self, step: int) -> None:
        self.step = step
        self.refresh_bindings()
        self.query_one(ContentSwitcher).current = f"step-{step}"
        self.query_one(StepBar).step = step
        if step == 2:
            name = self.query_one("#name", Input)
            if not name.value:
                name.value = Forward.default_name(
                    self._proto(),
                    Endpoint.parse(self._listen_text()),
                )
            name.focus()
        elif step == 1:
            self.query_one("#backend", Input).focus()
        elif step == 0:
            self.query_one("#listen-ip", Input).focus()
        elif step == 3:
            self._preview()

    def _listen_text(self) -> str:
        """ip:port as Endpoint.parse reads it ([v6]:port for an IPv6 address)."""
        ip = self._value("listen-ip")
        ip = f"[{ip}]" if ":" in ip and not ip.startswith("[") else ip
        return f"{ip}:{self._value('listen-port')}"

    def _proto(self) -> str:
        pressed = self.query_one("#proto", RadioSet).pressed_index
        return PROTOS[pressed if pressed >= 0 else 0]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Enter is `Next` on the first three steps and `Apply` on the preview (the footer says so)."""
        if action == "next":
            return self.step < 3
        if action == "apply":
            return self.step == 3
        return True

    def action_apply(self) -> None:
        self._apply()

    def action_next(self) -> None:
        if self.step == 3:
            self._apply()
            return
        fields = self.STEP_FIELDS[self.step]
        ok = [self._check(f) for f in fields]
        if all(ok):
            self._go(self.step + 1)
        else:
            self.notify("fix the fields in red first", severity="warning", timeout=2)

    def action_back(self) -> None:
        if self.step == 0:
            self.dismiss(None)
        else:
            self._go(self.step - 1)

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        self.app.push_screen(HelpScreen(self))

    # ---------------------------------------------------------------- preview and apply

    def build(self) -> Forward:
        """The forward the fields describe (raises ValidationError)."""
        masquerade = self.query_one("#masquerade", Checkbox).value
        return Forward.from_text(
            self._listen_text(),
            self._value("backend"),
            proto=self._proto(),
            name=self._value("name"),
            snat=None if masquerade else self._value("snat"),
            masquerade=masquerade,
            mss_clamp=self.query_one("#mss", Checkbox).value,
            local=self.query_one("#local", Checkbox).value,
            sources=[p.strip() for p in self._value("sources").split(",") if p.strip()],
        )

    def _preview(self) -> None:
        self.forward = None
        self.findings = []
        self.checked = False
        state = self.query_one("#apply-state", Static)
        try:
            fwd = self.build()
        except ValidationError as exc:
            for id_ in ("plain", "commands", "restore"):
                self.query_one(f"#{id_}", Static).update("")
            self.query_one("#findings", Static).update(f"× {exc.message} — {exc.hint}")
            state.update("Escape goes back to fix it; nothing can be applied yet")
            return
        self.forward = fwd
        plain = plain_of(fwd)
        if self.editing is not None:
            from natbox.declare import field_changes

            what = field_changes(self.editing, fwd) if fwd != self.editing else "nothing changes"
            plain = [f"edit {self.editing.name}: {what}", "", *plain]
        self.query_one("#plain", Static).update("\n".join(plain))
        # Commands and Restore show what apply would commit on this box now (read by the engine):
        # no -N for a chain that exists, no jump that is there.
        for id_ in ("commands", "restore"):
            self.query_one(f"#{id_}", Static).update("reading the rules…")
        self.query_one("#findings", Static).update("checking…")
        state.update("checking the box before apply…")
        self.query_one("#preview-tabs", TabbedContent).focus()
        self.run_preflight(self.engine, fwd)

    @work(
        thread=True, exclusive=True, group="preflight", exit_on_error=False, description="Preflight"
    )
    def run_preflight(self, engine: EngineAPI, fwd: Forward) -> None:
        """The engine's preflight findings for this forward, and the lines apply would commit."""
        lines: dict[str, list[str]] | None = None
        try:
            if self.editing is not None:
                # The old forward's rules go out in the same transaction: they are not in the way.
                change = engine.preview_edit(self.editing.name, fwd)
                findings, lines = list(change.findings), change.lines
            else:
                findings = engine.preflight(fwd)
                lines = engine.apply_preview(fwd)
        except NatboxError as exc:
            findings = [Finding("preflight", ERROR, exc.message, exc.hint)]
        self.app.call_from_thread(self._preflighted, fwd, findings, lines)

    def _preflighted(
        self, fwd: Forward, findings: list[Finding], lines: dict[str, list[str]] | None
    ) -> None:
        if fwd != self.forward:
            return
        self.findings = findings
        self.checked = True
        self.apply_lines = lines
        if lines is not None:
            self.query_one("#commands", Static).update("\n".join(commands_of(lines, fwd.family)))
            self.query_one("#restore", Static).update(restore_of(lines))
        else:
            for id_ in ("commands", "restore"):
                self.query_one(f"#{id_}", Static).update("(the rules could not be read)")
        text = Text()
        for f in findings:
            mark = {"error": "×", "warning": "!", "info": "·"}[f.severity]
            text.append(f"{mark} {f.message}\n", style=SEVERITY_STYLE[f.severity])
            if f.severity != "info":
                text.append(f"  fix: {tui_fix(f.fix)}\n", style="dim")
        if not findings:
            text.append("✓ preflight: nothing in the way", style="green")
        self.query_one("#findings", Static).update(text)
        state = self.query_one("#apply-state", Static)
        if self.blocked:
            state.update("× fix the errors above (Escape goes back); Apply is not offered")
        else:
            verb = "replaces the old rules" if self.editing else "applies"
            state.update(
                f"Enter {verb}, with a {self.confirm_seconds:.0f} s window to keep or roll back"
            )

    @property
    def blocked(self) -> bool:
        """Apply is offered only for a valid forward whose preflight came back without errors."""
        return (
            self.forward is None
            or not self.checked
            or any(f.severity == ERROR for f in self.findings)
        )

    def _apply(self) -> None:
        if self.forward is None or self.blocked:
            self.notify("nothing to apply yet: see the findings", severity="warning", timeout=2)
            return
        enable = self.query_one("#enable-forwarding", Checkbox)
        self.dismiss(WizardResult(self.forward, enable.display and enable.value))

    # ---------------------------------------------------------------- queries

    def field(self, id_: str) -> Any:
        """A widget of the wizard by id (tests use this)."""
        return self.query_one(f"#{id_}")
