"""The add wizard driven by keys over the SampleEngine: ask, derive, validate, preview, apply with the
confirm window, keep or roll back, undo."""

from __future__ import annotations

from textual.pilot import Pilot
from textual.widgets import Checkbox, Input, Static

from natbox.sample import SampleEngine
from tests.tui.conftest import settle
from tui.app import NatboxApp, make_app
from tui.screens.confirm import ConfirmScreen
from tui.screens.countdown import CountdownScreen
from tui.screens.dashboard import Change, DashboardScreen
from tui.screens.wizard import WizardScreen


def text(app: NatboxApp, id_: str) -> str:
    return str(app.screen.query_one(f"#{id_}", Static).render())


async def fill(pilot: Pilot[int], port: str, backend: str) -> WizardScreen:
    """From the dashboard to the preview, as a person types."""
    app = pilot.app
    await pilot.press("a")
    await settle(pilot)
    wizard = app.screen
    assert isinstance(wizard, WizardScreen)
    assert wizard.query_one("#listen-ip", Input).value == "192.168.1.30", (
        "prefilled with this box's address"
    )
    await pilot.press("tab", *port, "enter")
    await settle(pilot)
    assert wizard.step == 1
    await pilot.press(*backend)
    await settle(pilot)
    await pilot.press("enter")
    await settle(pilot)
    assert wizard.step == 2
    await pilot.press("enter")
    await settle(pilot)
    assert wizard.step == 3
    return wizard


async def test_wizard_derives_previews_applies_and_keeps() -> None:
    engine = SampleEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        await pilot.press("a")
        await settle(pilot)
        wizard = app.screen
        assert isinstance(wizard, WizardScreen)
        await pilot.press("tab", *"8080", "enter", *"10.0.2.50:80")
        await settle(pilot)
        assert wizard.query_one("#snat", Input).value == "10.0.2.40", (
            "SNAT source derived from the route"
        )
        assert "via dmz0, from 10.0.2.40" in text(app, "derived")
        await pilot.press("enter")
        await settle(pilot)
        assert wizard.query_one("#name", Input).value == "tcp-8080"
        assert wizard.query_one("#mss", Checkbox).value, "MTUs 1500/1400 differ: clamp pre-ticked"
        assert "lan0 has MTU 1500, dmz0 1400" in text(app, "mss-reason")
        await pilot.press("enter")
        await settle(pilot)
        assert "DNAT       tcp 192.168.1.30:8080 → 10.0.2.50:80" in text(app, "plain")
        commands = text(app, "commands")
        assert "iptables -w -t nat -A NATBOX-PREROUTING -d 192.168.1.30/32" in commands
        # natbox's chains and jumps exist on the sample box (web uses them): not created again.
        assert " -N " not in commands and "-I PREROUTING" not in commands
        assert ":NATBOX-" not in text(app, "restore")
        plain = text(app, "plain")
        assert "RETURN" not in plain
        assert "ACCEPT     let this forward's tcp replies" in plain
        assert "-j TCPMSS --clamp-mss-to-pmtu" in text(app, "restore")
        assert "Enter applies, with a 30 s window" in text(app, "apply-state")
        assert "FORWARD policy is DROP" in text(app, "findings")
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, CountdownScreen)
        assert [f.name for f in engine.applied] == ["tcp-8080"] and engine.waiting == "tcp-8080"
        await pilot.press("y")
        await settle(pilot)
        assert engine.waiting is None and "tcp-8080" in [f.name for f in engine.forwards]
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        assert screen.history == [Change("added", engine.applied[0])]
        await settle(pilot)
        rows = [
            str(screen.forwards_table.get_cell(r.key, "name"))
            for r in screen.forwards_table.ordered_rows
        ]
        assert "tcp-8080" in rows
        assert screen.selected == "tcp-8080", "the kept forward is the marked one: d acts on it"
        assert str(screen.forwards_table.get_cell("tcp-8080", "mark")) == "▶"
        await pilot.press("down", "up")  # the cursor moves, and the mark with it
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert screen.selected in str(app.screen.query_one("#question").render())
        await pilot.press("n")
        await settle(pilot)
        screen.select_forward("tcp-8080")

        # u undoes it, after showing the rules that go.
        await pilot.press("u")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert "-D NATBOX-PREROUTING -d 192.168.1.30/32 -p tcp -m tcp --dport 8080" in text(
            app, "detail"
        )
        await pilot.press("y")
        await settle(pilot)
        assert "tcp-8080" not in [f.name for f in engine.forwards] and engine.removed == [
            "tcp-8080"
        ]


async def test_no_answer_or_n_rolls_back() -> None:
    engine = SampleEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        await fill(pilot, "8080", "10.0.2.50:80")
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, CountdownScreen)
        await pilot.press("n")
        await settle(pilot)
        assert engine.waiting is None
        assert "tcp-8080" not in [f.name for f in engine.forwards]
        screen = app.screen
        assert isinstance(screen, DashboardScreen) and screen.history == []


async def test_bad_input_shows_the_core_message_and_blocks() -> None:
    engine = SampleEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        await pilot.press("a")
        await settle(pilot)
        wizard = app.screen
        assert isinstance(wizard, WizardScreen)
        await pilot.press("tab", *"70000")
        assert "port 70000 is out of range 1-65535" in text(app, "listen-port-error")
        await pilot.press("enter")
        assert wizard.step == 0, "Enter does not leave a step with errors"
        await pilot.press(
            "backspace", "backspace", "backspace", "backspace", "backspace", *"1234", "enter"
        )
        await pilot.press(*"10.0.2.300:80")
        assert "10.0.2.300 is not an IPv4 address" in text(app, "backend-error")
        for _ in "10.0.2.300:80":
            await pilot.press("backspace")
        await pilot.press(*"172.31.9.9:80")
        await settle(pilot)
        assert "no route to 172.31.9.9" in text(app, "derived")
        await pilot.press("enter")
        assert wizard.step == 1, "no SNAT source could be derived, and none was typed"
        await pilot.press("tab", *"10.0.2.40", "enter", "enter")
        await settle(pilot)
        assert wizard.step == 3
        findings = text(app, "findings")
        assert "already forwarded by web" in findings, (
            "tcp 192.168.1.30:1234 is the sample's web forward"
        )
        assert "no route to the backend 172.31.9.9" in findings
        assert "Apply is not offered" in text(app, "apply-state")
        assert "mark web and press d" in findings, "the fix names the key, not a CLI command"
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, WizardScreen) and engine.applied == []
        for _ in range(4):
            await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, DashboardScreen), "Escape walks back out of the wizard"


async def test_prefills_are_real_values_on_the_clients_side() -> None:
    """The port is a free port as a value (not a grey placeholder), so Enter works at once; the
    address is the clients' side: once the backend is known, never the backend's interface."""
    engine = SampleEngine()
    engine.local_addresses = lambda: [  # type: ignore[method-assign]
        ("10.0.2.40", "dmz0"),
        ("192.168.1.30", "lan0"),
        ("127.0.0.1", "lo"),
    ]
    app = make_app(engine)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        # The dashboard lists the box's interfaces with the default route's first: here dmz0.
        screen.local_addresses = engine.local_addresses  # type: ignore[method-assign]
        await pilot.press("a")
        await settle(pilot)
        wizard = app.screen
        assert isinstance(wizard, WizardScreen)
        port = wizard.query_one("#listen-port", Input)
        assert port.value == "8081", "8080 listens on the sample box; 1234 and 5353 are forwarded"
        await pilot.press("enter")
        await settle(pilot)
        assert wizard.step == 1, "the suggested port is a value: Enter goes on"
        await pilot.press(*"10.0.2.50:80")
        await settle(pilot)
        assert wizard.query_one("#listen-ip", Input).value == "192.168.1.30", (
            "10.0.2.40 is on dmz0, the backend's side: clients are on lan0"
        )
        assert wizard.query_one("#listen-port", Input).placeholder == "e.g. 1234"


async def test_countdown_shows_the_watchdogs_real_deadline_after_a_slow_apply() -> None:
    """The watchdog's window starts before the rules go in: a 12 s apply leaves 18 s of 30."""
    engine = SampleEngine()
    now = [1000.0]
    real_apply = engine.apply

    def slow_apply(fwd: object, **kw: object) -> object:
        now[0] += 12.0  # the apply took 12 s on this (frozen) clock
        return real_apply(fwd, **kw)  # type: ignore[arg-type]

    engine.apply = slow_apply  # type: ignore[method-assign, assignment]
    app = make_app(engine, clock=lambda: now[0])
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        await fill(pilot, "8080", "10.0.2.50:80")
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, CountdownScreen)
        assert screen.seconds == 18.0
        await pilot.press("y")
        await settle(pilot)
