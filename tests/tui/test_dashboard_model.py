"""The dashboard's data flow, driven by keys over the SampleEngine: failures reported and survived,
rows updated by key, what shows before the slow reads finish, the confirm window's end said plainly,
toasts off the dialog's buttons, and a 1,000-forward table that stays usable."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from rich.segment import Segment
from textual.widgets import Button
from textual.widgets._toast import Toast

import tui.screens.dashboard as dashboard_module
from natbox.api import Dashboard
from natbox.sample import SampleEngine, scaled_forwards
from tests.tui.conftest import settle
from tui.app import make_app
from tui.screens.confirm import ConfirmScreen
from tui.screens.countdown import CountdownScreen
from tui.screens.dashboard import DashboardScreen


def names(screen: DashboardScreen) -> list[str]:
    return screen.forwards_table.keys()


async def test_a_failing_read_is_reported_and_polling_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dashboard_module, "RULES_EVERY", 0.05)
    engine = SampleEngine()
    real = engine.dashboard
    calls = {"n": 0}

    def flaky() -> Dashboard:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("iptables-save vanished")
        return real()

    engine.dashboard = flaky  # type: ignore[method-assign]
    engine.fingerprint = object  # type: ignore[method-assign]  # always read anew
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        for _ in range(100):
            if calls["n"] >= 4:
                break
            await asyncio.sleep(0.05)
        messages = [n.message for n in app._notifications]
        assert any(
            "reading rules failed" in m and "iptables-save vanished" in m for m in messages
        ), messages
        assert calls["n"] >= 4, "the refresh goes on after the failure"
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        assert any("iptables-save vanished" in e for e in screen.events), "and it is in History"


async def test_refresh_keeps_the_rules_cursor_and_changes_nothing_when_nothing_changed() -> None:
    engine = SampleEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        rules = screen.rules_table
        rules.focus()
        for _ in range(12):
            await pilot.press("down")
        key = rules.cursor_key
        assert rules.cursor_row == 12
        await pilot.press("r")
        await settle(pilot)
        assert rules.cursor_row == 12 and rules.cursor_key == key, "a refresh keeps the place"
        assert rules.updates == 0 and screen.forwards_table.updates == 0, "nothing was rewritten"
        # A change elsewhere: the row under the cursor keeps its key, the new rows come in by key.
        engine.forwards = [*engine.forwards, *scaled_forwards(1)]
        engine.generation += 1
        await pilot.press("r")
        await settle(pilot)
        assert rules.cursor_key == key
        assert "cust-0000" in names(screen)


async def test_forwards_and_rules_show_while_the_flows_are_still_read() -> None:
    engine = SampleEngine(flow_delay=2.0)
    app = make_app(engine)
    seen_empty_text: list[str] = []
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        empty = screen.query_one("#forwards-empty")
        for _ in range(40):
            seen_empty_text.append(str(empty.render()))
            if screen.forwards_table.row_count:
                break
            await asyncio.sleep(0.05)
        assert names(screen) == ["dns", "web"], "forwards are on screen before the flows"
        for _ in range(40):  # the flow count starts once the first rules are on screen
            if engine.flow_reads:
                break
            await asyncio.sleep(0.05)
        assert engine.flow_reads == 1 and screen.counts is None, "the flow read is still running"
        assert screen.forwards_table.get_cell("web", "flows") == "…"
        assert screen.rules_table.row_count > 10
        assert not any("no natbox forwards" in t for t in seen_empty_text), seen_empty_text
        assert "reading" in seen_empty_text[0]
        await settle(pilot)
        assert int(str(screen.forwards_table.get_cell("web", "flows"))) > 0


async def test_the_first_dashboard_made_ahead_shows_at_once_and_its_interfaces_follow() -> None:
    """The Dashboard made while Textual loaded (ready_dashboard) goes in without a rule read, and
    without interfaces (not read ahead: psutil's import for a tab not shown); they are read once
    the first frame is out, alone (no second rule read), and fill the Interfaces tab."""
    engine = SampleEngine()
    made_ahead(engine)
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await settle(pilot)
        assert names(screen) == ["dns", "web"]
        assert engine.reads == 1, "the Dashboard made ahead was shown, not read again"
        assert engine.interface_reads == 1
        assert screen.query_one("#interfaces").row_count == 3  # type: ignore[attr-defined]
        assert screen.local_addresses()[0] == ("192.168.1.30", "lan0")


async def test_rows_synced_into_a_busy_table_are_measured_at_once() -> None:
    """DataTable measures new rows only when its app goes idle; a table synced while the app is
    busy (its first frame) was painted blank until then. KeyedTable.sync measures them at once."""
    from textual.app import App, ComposeResult

    from widgets.keyed_table import KeyedTable

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield KeyedTable()

    async with One().run_test(size=(60, 10)) as pilot:
        table = pilot.app.query_one(KeyedTable)
        table.add_column("A", key="a")
        table.add_column("B", key="b")
        table.sync([(f"r{i}", [f"row {i}", "x" * 20]) for i in range(5)])
        # No await in between: nothing has gone idle yet.
        assert table.virtual_size.height == 6, "header + 5 rows measured without waiting"
        assert table.columns["b"].content_width == 20  # type: ignore[index]


async def test_a_cell_drawn_the_short_way_is_the_same_as_datatables() -> None:
    """KeyedTable draws a one-line text cell itself (#13): every kind of cell comes out the same,
    character and style, as DataTable's own Styled(Padding(text)), cursor, hover and header too."""
    from rich.style import Style
    from rich.text import Text
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    from widgets.keyed_table import KeyedTable

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield KeyedTable(cursor_type="row", zebra_stripes=True)

    cells: list[str | Text] = [
        "plain",
        "[bold red]markup[/] and [reverse]more[/]",
        Text("own style, no spans", style="green"),
        Text.assemble(("ab", "bold"), "cd", ("ef", "italic blue"), style="underline"),
        "x" * 40,  # cut to the column
        Text("ellipsis " * 6, overflow="ellipsis", style="red"),
        "宽字符宽字符宽字符宽字符宽字符",  # double-width, cut in the middle of one
        "",
        Text("two\nlines"),  # DataTable's path
        Text("right", justify="right"),  # DataTable's path
        Text("ab cdefgh ijkl mnop", no_wrap=False),  # DataTable wraps it: its path
        Text("x" * 30, overflow="ignore"),  # never cut: DataTable's path
        Text("ab", end="XYZ"),  # DataTable draws the end: its path
    ]

    def chars(lines: list[list[Segment]]) -> list[tuple[str, Style | None]]:
        return [(ch, seg.style) for line in lines for seg in line for ch in seg.text]

    async with One().run_test(size=(60, 14)) as pilot:
        table = pilot.app.query_one(KeyedTable)
        table.add_column("[b]HEAD[/]", key="a", width=12)
        table.add_column("B", key="b")
        table.sync([(f"r{i}", [cell, cell]) for i, cell in enumerate(cells)])
        await pilot.pause()
        compared = 0
        for row in range(-1, len(cells)):
            for column, width in ((0, 14), (1, 9), (1, 1)):
                for cursor, hover in ((False, False), (True, False), (False, True)):
                    for base in (Style(), Style(bgcolor="black", bold=True)):
                        table._cell_render_cache.clear()
                        short = table._render_cell(row, column, base, width, cursor, hover)
                        table._cell_render_cache.clear()
                        rich = DataTable._render_cell(
                            table, row, column, base, width, cursor, hover
                        )
                        assert chars(short) == chars(rich), (row, column, width, cursor, hover)
                        compared += 1
        assert compared == (len(cells) + 1) * 3 * 3 * 2


async def test_the_cycle_collector_is_on_again_after_the_first_frame() -> None:
    """natbox.__main__ turns Python's cycle collector off for the start-up (#13); the dashboard turns
    it on again once its first frame is out, whether its first read was ready or not."""
    import gc

    for engine in (SampleEngine(), SampleEngine(dashboard_delay=0.3)):
        gc.disable()
        try:
            async with make_app(engine, polling=False).run_test(size=(100, 30)) as pilot:
                assert not gc.isenabled(), "not during the start-up"
                await settle(pilot)
                assert gc.isenabled()
        finally:
            gc.unfreeze()  # natbox.gcpause froze what the start-up made
            gc.enable()


def made_ahead(engine: SampleEngine) -> None:
    """The engine hands out a first Dashboard made ahead (without interfaces), as Engine does."""
    from dataclasses import replace

    given = [replace(engine.dashboard(), interfaces=())]
    engine.ready_dashboard = lambda: given.pop() if given else None  # type: ignore[method-assign]


async def test_a_wizard_typed_ahead_before_the_first_read_has_the_boxs_addresses() -> None:
    """`a` typed before the first rule read is in (it is slow here): the wizard reads this box's
    addresses itself, as in a real terminal where the key arrives 0.15 s after start."""
    from tui.screens.wizard import WizardScreen

    app = make_app(SampleEngine(dashboard_delay=1.0))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("a")
        wizard = app.screen
        assert isinstance(wizard, WizardScreen)
        assert ("192.168.1.30", "lan0") in wizard.addresses


async def test_a_wizard_typed_ahead_at_start_up_has_the_boxs_addresses() -> None:
    """`a` typed before the first Dashboard's interfaces were read (a paste, a laggy link): the
    wizard still lists this box's addresses (read on the key), and a late interface read that
    started before a newer one never replaces it."""
    from tui.screens.wizard import WizardScreen

    engine = SampleEngine()
    made_ahead(engine)
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("a")
        wizard = app.screen
        assert isinstance(wizard, WizardScreen)
        assert ("192.168.1.30", "lan0") in wizard.addresses
        await pilot.press("escape")
        await settle(pilot)
        board = app.screen
        assert isinstance(board, DashboardScreen) and board.data is not None
        newer = board.data.interfaces
        older = tuple(i for i in newer if i.name != "lan0")
        board._show_interfaces(older, 0.0, seq=1)  # started before the reads shown: dropped
        assert board.data.interfaces == newer
        assert board.query_one("#interfaces").row_count == len(newer)  # type: ignore[attr-defined]


async def add_tcp_8082(pilot: Any) -> None:
    """Through the wizard: listen port 8082, backend 10.0.2.50:80, the defaults, then apply."""
    await pilot.press("a", "tab", *"8082", "enter", *"10.0.2.50:80")
    await settle(pilot)
    await pilot.press("enter", "enter")
    await settle(pilot)
    await pilot.press("enter")
    await settle(pilot)


async def test_window_running_out_says_the_forward_was_rolled_back() -> None:
    now = [1000.0]
    engine = SampleEngine()
    app = make_app(engine, confirm_seconds=30, clock=lambda: now[0])
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        await add_tcp_8082(pilot)
        assert isinstance(app.screen, CountdownScreen)
        engine.waiting = None  # the watchdog rolled it back at the deadline, before the TUI asked
        engine.forwards = [f for f in engine.forwards if f.name != "tcp-8082"]
        now[0] += 31
        await asyncio.sleep(0.7)
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        messages = [n.message for n in app._notifications]
        assert "tcp-8082 rolled back: not confirmed within 30 s" in messages, messages
        assert not any("no change waits" in m for m in messages)
        assert any("tcp-8082 rolled back: not confirmed within 30 s" in e for e in screen.events)


async def test_toasts_do_not_cover_the_dialog_buttons() -> None:
    app = make_app(SampleEngine())
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        for i in range(3):
            app.notify(f"something long happened elsewhere, number {i}", timeout=30)
        toasts: list[Toast] = []
        for _ in range(40):
            await pilot.pause(0.05)
            toasts = [t for t in app.screen.query(Toast) if t.region.area]
            if len(toasts) == 3:
                break
        assert toasts, "the toasts are up"
        buttons = list(app.screen.query(Button))
        assert len(buttons) == 2
        for button in buttons:
            for toast in toasts:
                assert not button.region.overlaps(toast.region), (button, toast.region)


async def test_thousand_forwards_filter_sort_and_go_to() -> None:
    engine = SampleEngine(forwards=scaled_forwards(1000))
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        assert len(names(screen)) == 1000
        await pilot.press("slash", *"cust-09")
        await pilot.pause(0.3)
        shown = names(screen)
        assert len(shown) == 100 and all(n.startswith("cust-09") for n in shown)
        await pilot.press("enter")  # keeps the filter, keys go back to the forwards
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("slash", "escape")  # Escape in the box clears the filter
        await pilot.pause()
        assert len(names(screen)) == 1000
        await pilot.press("g", *"cust-0421", "enter")
        await pilot.pause()
        assert screen.selected == "cust-0421"
        assert screen.forwards_table.cursor_key == "cust-0421"
        assert len(names(screen)) == 1000, "go to moves, it does not filter"
        await pilot.press("s")  # by flows
        await pilot.pause()
        assert screen.sort == "flows"
        assert screen.selected == "cust-0421", "sorting keeps the mark on the same forward"


def test_the_engines_meet_the_contract() -> None:
    # mypy checks this statically (engine.py, sample.py); this is the runtime twin.
    from natbox.api import EngineAPI
    from natbox.engine import Engine

    members = [m for m in vars(EngineAPI) if not m.startswith("_")]
    for cls in (Engine, SampleEngine):
        fields = getattr(cls, "__dataclass_fields__", {})
        missing = [m for m in members if not hasattr(cls, m) and m not in fields]
        assert not missing, (cls, missing)


async def test_save_forget_export_doctor_and_kill_the_marked_forward() -> None:
    from textual.widgets import Static

    from tui.screens.confirm import TextScreen

    engine = SampleEngine(flow_count=100)
    app = make_app(engine)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        assert screen.selected == "dns" and "dns" not in engine.saved
        await pilot.press("w")
        await settle(pilot)
        assert "dns" in engine.saved
        assert screen.forwards_table.get_cell("dns", "saved") == "yes"
        await pilot.press("f")
        await settle(pilot)
        assert "dns" not in engine.saved
        await pilot.press("down", "e")
        await settle(pilot)
        assert isinstance(app.screen, TextScreen)
        text = str(app.screen.query_one("#text", Static).render())
        assert "# restore" in text and "# ansible" in text and "natbox:web" in text
        await pilot.press("escape")
        await pilot.press("D")
        await settle(pilot)
        detail = str(screen.query_one("#health-detail", Static).render())
        assert detail.startswith("web: healthy")
        before = len(engine.flows().flows)
        await pilot.press("K")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert "Kill all" in str(app.screen.query_one("#question").render())
        await pilot.press("y")
        await settle(pilot)
        assert engine.killed and all(f.orig.dport == 1234 for f in engine.killed)
        assert len(engine.flows().flows) < before
        commands = [c.help for c in app.get_system_commands(screen)]
        assert any("Restored at boot" in h for h in commands)


async def test_a_read_overtaken_by_a_change_never_moves_the_mark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """#14 item 1 under load: a poll's read that started before a new forward was kept ends after
    it. Showing that old read would move the mark (and `d`) back to `web`; it is dropped."""
    import threading

    monkeypatch.setattr(dashboard_module, "RULES_EVERY", 0.05)
    engine = SampleEngine()
    engine.fingerprint = object  # type: ignore[method-assign]  # every poll reads anew
    real = engine.dashboard
    slow = threading.Event()
    started = threading.Event()
    release = threading.Event()

    def dashboard() -> Dashboard:
        data = real()  # the firewall as it is when the read starts
        if slow.is_set():
            slow.clear()
            started.set()
            release.wait(10)  # ... and the read ends late
        return data

    engine.dashboard = dashboard  # type: ignore[method-assign]
    app = make_app(engine, confirm_seconds=30)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await pilot.press("down")
        assert screen.selected == "web"
        slow.set()
        for _ in range(100):
            if started.is_set():
                break
            await asyncio.sleep(0.02)
        assert started.is_set(), "a poll read is under way"
        await add_tcp_8082(pilot)
        assert isinstance(app.screen, CountdownScreen)
        await pilot.press("y")
        await settle(pilot)
        assert screen.selected == "tcp-8082"
        release.set()  # the old read (no tcp-8082 in it) ends now
        await asyncio.sleep(0.3)
        await settle(pilot)
        assert screen.selected == "tcp-8082", "the overtaken read moved the mark"
        assert screen.forwards_table.cursor_key == "tcp-8082"
        await pilot.press("tab", "down", "down", "d")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        question = str(app.screen.query_one("#question").render())
        assert "Remove forward tcp-8082 (192.168.1.30:8082 → 10.0.2.50:80)?" in question, question


async def test_edit_disable_enable_and_undo_the_marked_forward() -> None:
    """#14 item 12: E edits the marked forward through the prefilled wizard, its preview and the
    confirm window; x disables it (the row stays, `off`) and enables it again; u undoes each."""
    from textual.widgets import Input

    from tui.screens.wizard import WizardScreen

    engine = SampleEngine()
    app = make_app(engine, confirm_seconds=30)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await pilot.press("down")
        assert screen.selected == "web"
        await pilot.press("E")
        await settle(pilot)
        wizard = app.screen
        assert isinstance(wizard, WizardScreen) and wizard.title == "edit web"
        assert wizard.query_one("#listen-port", Input).value == "1234", "prefilled, not suggested"
        await pilot.press("enter")  # listen as it is
        await settle(pilot)
        backend = wizard.query_one("#backend", Input)
        assert backend.value == "10.0.2.50:80"
        backend.value = ""
        await pilot.press(*"10.0.2.51:8080", "enter")
        await settle(pilot)
        assert wizard.query_one("#name", Input).value == "web", "an edit keeps the name"
        await pilot.press("enter")
        await settle(pilot)
        restore = str(wizard.query_one("#restore").render())
        assert "-D NATBOX-PREROUTING" in restore and "10.0.2.51:8080" in restore, restore
        assert "no natbox forward" not in restore
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, CountdownScreen)
        await pilot.press("y")
        await settle(pilot)
        web = next(f for f in engine.forwards if f.name == "web")
        assert str(web.backend) == "10.0.2.51:8080"
        assert screen.selected == "web"
        assert screen.history[-1].kind == "edited"
        # x: disable, after a yes that names it; the row stays, greyed.
        await pilot.press("x")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        question = str(app.screen.query_one("#question").render())
        assert question.startswith("Disable web (192.168.1.30:1234 → 10.0.2.51:8080)?"), question
        await pilot.press("y")
        await settle(pilot)
        assert [f.name for f in engine.disabled] == ["web"]
        assert "web" not in [f.name for f in engine.forwards]
        assert "web" in names(screen) and screen.selected == "web"
        assert str(screen.forwards_table.get_cell("web", "health")) == "off"
        # u: undo the disable = enable it (after a yes, with the window).
        await pilot.press("u")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert "Undo: Enable web" in str(app.screen.query_one("#question").render())
        await pilot.press("y")
        await settle(pilot)
        assert isinstance(app.screen, CountdownScreen)
        await pilot.press("y")
        await settle(pilot)
        assert "web" in [f.name for f in engine.forwards] and not engine.disabled
        assert screen.history[-1].kind == "edited", "the undone disable left the history"
        # u again: the edit is undone, web goes back to its old backend.
        await pilot.press("u")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert "back to web (192.168.1.30:1234 → 10.0.2.50:80)" in str(
            app.screen.query_one("#question").render()
        )
        await pilot.press("y")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        web = next(f for f in engine.forwards if f.name == "web")
        assert str(web.backend) == "10.0.2.50:80"
        assert screen.history == []


async def test_an_edit_that_moves_the_backend_takes_the_new_routes_snat_source() -> None:
    """E, backend moved to another network: the SNAT source follows the route to it (as
    `natbox edit --backend` does), instead of keeping the old side's address."""
    from textual.widgets import Input

    engine = SampleEngine()
    app = make_app(engine, confirm_seconds=30)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        await pilot.press("down", "E")
        await settle(pilot)
        wizard = app.screen
        await pilot.press("enter")
        await settle(pilot)
        assert wizard.query_one("#snat", Input).value == "10.0.2.40"
        wizard.query_one("#backend", Input).value = ""
        await pilot.press(*"192.168.1.77:80")
        await settle(pilot)
        assert wizard.query_one("#snat", Input).value == "192.168.1.30"


async def test_an_undo_that_is_not_kept_leaves_the_change_to_undo() -> None:
    """u on a disable enables the forward with the confirm window; answered n, the forward stays
    disabled and the disable stays in the history (u offers it again)."""
    engine = SampleEngine()
    app = make_app(engine, confirm_seconds=30)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await pilot.press("down", "x")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert [c.kind for c in screen.history] == ["disabled"]
        await pilot.press("u")
        await settle(pilot)
        await pilot.press("y")  # the dialog
        await settle(pilot)
        assert isinstance(app.screen, CountdownScreen)
        await pilot.press("n")  # roll the enable back
        await settle(pilot)
        assert [f.name for f in engine.disabled] == ["web"]
        assert [c.kind for c in screen.history] == ["disabled"], "the disable still stands"


async def test_an_edit_of_a_forward_changed_meanwhile_touches_nothing() -> None:
    """Another shell changes web while E's wizard is open: applying the wizard's web would wipe
    that out unseen, so the engine refuses and the dashboard says why."""
    from dataclasses import replace
    from ipaddress import ip_network

    from textual.widgets import Input

    engine = SampleEngine()
    app = make_app(engine, confirm_seconds=30)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        await pilot.press("down", "E")
        await settle(pilot)
        wizard = app.screen
        await pilot.press("enter")
        await settle(pilot)
        wizard.query_one("#backend", Input).value = ""
        await pilot.press(*"10.0.2.51:80", "enter")
        await settle(pilot)
        # Meanwhile, elsewhere: web now admits only 10.0.0.0/8.
        web = next(f for f in engine.forwards if f.name == "web")
        narrowed = replace(web, sources=(ip_network("10.0.0.0/8"),))
        engine.forwards = [narrowed if f.name == "web" else f for f in engine.forwards]
        await pilot.press("enter", "enter")
        await settle(pilot)
        assert not isinstance(app.screen, CountdownScreen)
        assert next(f for f in engine.forwards if f.name == "web") == narrowed, "untouched"
        messages = [n.message for n in app._notifications]
        assert any("web changed since it was shown" in m for m in messages), messages


async def test_a_removal_of_a_forward_changed_meanwhile_touches_nothing() -> None:
    """Another shell changes web while d's question is open: removing it would take away what the
    question never showed, so the engine refuses and the dashboard says why; unchanged, d removes."""
    from dataclasses import replace
    from ipaddress import ip_network

    engine = SampleEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        await pilot.press("down", "d")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        # Meanwhile, elsewhere: web now admits only 10.0.0.0/8.
        web = next(f for f in engine.forwards if f.name == "web")
        narrowed = replace(web, sources=(ip_network("10.0.0.0/8"),))
        engine.forwards = [narrowed if f.name == "web" else f for f in engine.forwards]
        await pilot.press("y")
        await settle(pilot)
        assert engine.removed == []
        assert next(f for f in engine.forwards if f.name == "web") == narrowed, "untouched"
        messages = [n.message for n in app._notifications]
        assert any("web changed since it was shown" in m for m in messages), messages
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        assert screen.history == [], "nothing was removed, nothing to undo"
        await pilot.press("r")  # read again: the question now shows web as it is
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert engine.removed == ["web"]


async def test_forgetting_a_disabled_forward_changed_meanwhile_forgets_nothing() -> None:
    """d on a disabled forward forgets it for good: not if another shell re-disabled it with
    other settings while the question was open (that copy was never shown)."""
    from dataclasses import replace
    from ipaddress import ip_network

    engine = SampleEngine()
    engine.disable("web")
    app = make_app(engine)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        while screen.selected != "web":
            await pilot.press("down")
            await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert "Forget the disabled web" in str(app.screen.query_one("#question").render())
        narrowed = replace(engine.disabled[0], sources=(ip_network("10.0.0.0/8"),))
        engine.disabled = [narrowed]
        await pilot.press("y")
        await settle(pilot)
        assert engine.disabled == [narrowed] and engine.removed == []
        messages = [n.message for n in app._notifications]
        assert any("web changed since it was shown" in m for m in messages), messages


async def test_a_change_in_the_kernel_whose_record_failed_still_gets_its_countdown() -> None:
    """The apply is in the kernel, only its journal could not be cleared (StateWriteError with
    committed): the watchdog still counts down, so the TUI shows the countdown (keep it, or it is
    rolled back) and says what could not be written, instead of calling the change failed."""
    from natbox.paths import StateWriteError

    engine = SampleEngine()
    applied = engine.apply

    def apply_then_fail_the_record(*args: Any, **kwargs: Any) -> Any:
        applied(*args, **kwargs)
        raise StateWriteError(
            "tcp-8082 is in the kernel, all its rules; the journal could not be cleared",
            "fix that",
            committed=True,
        )

    engine.apply = apply_then_fail_the_record  # type: ignore[method-assign]
    app = make_app(engine, confirm_seconds=30)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(pilot)
        await add_tcp_8082(pilot)
        assert isinstance(app.screen, CountdownScreen)
        (board,) = [s for s in app.screen_stack if isinstance(s, DashboardScreen)]
        assert any("journal could not be cleared" in e for e in board.events), board.events
