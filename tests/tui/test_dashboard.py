"""The dashboard and the viewer driven by keys, over the SampleEngine (data by the engine, not mocks
of widgets): every key of the issue, and the behaviours behind them."""

from __future__ import annotations

import asyncio

import pytest
from rich.text import Text
from textual.widgets import DataTable, Static

import tui.screens.dashboard as dashboard_module
from natbox.sample import SampleEngine
from tests.tui.conftest import settle
from tui.app import make_app
from tui.screens.confirm import ConfirmScreen
from tui.screens.conntrack import ConntrackScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.help import HelpScreen, key_table
from widgets.flow_table import FlowTable


def cells(table: DataTable[object], column: int) -> list[str]:
    return [str(table.get_row_at(i)[column]) for i in range(table.row_count)]


async def test_dashboard_shows_forwards_rules_and_facts() -> None:
    app = make_app(SampleEngine())
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        forwards = screen.forwards_table
        assert cells(forwards, 0) == ["web", "dns"]
        assert cells(forwards, 2)[0] == "192.168.1.30:1234 → 10.0.2.50:80"
        assert cells(forwards, 3) == ["ok", "ok"]
        assert int(cells(forwards, 4)[0]) > 0, "flows are counted per forward"
        status = str(screen.status_bar.render())
        assert "natbox-lab" in status and "restore (nft)" in status and "fwd on" in status
        owners = set(cells(screen.rules_table, 1))
        assert {"natbox", "natbox:web", "docker", "kube", "other"} <= owners
        rules = cells(screen.rules_table, 3)
        assert any("filter FORWARD — policy DROP" in r for r in rules)
        assert not any("--comment natbox" in r for r in rules), "the owner column says it"


async def test_selecting_a_forward_highlights_its_rules() -> None:
    app = make_app(SampleEngine())
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)

        def highlighted() -> set[str]:
            table = screen.rules_table
            out = set()
            for i in range(table.row_count):
                owner = table.get_row_at(i)[1]
                if isinstance(owner, Text) and "reverse" in str(owner.style):
                    out.add(str(owner))
            return out

        assert highlighted() == {"natbox:web"}
        screen.forwards_table.focus()
        await pilot.press("down")
        await settle(pilot)
        assert highlighted() == {"natbox:dns"}


async def test_remove_asks_with_the_exact_rules_then_removes() -> None:
    engine = SampleEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        detail = str(app.screen.query_one("#detail", Static).render())
        assert (
            '-D NATBOX-PREROUTING -d 192.168.1.30/32 -p tcp -m tcp --dport 1234 -m comment --comment "natbox:web"'
            in detail
        )
        await pilot.press("n")
        await settle(pilot)
        assert engine.removed == []
        await pilot.press("d")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert engine.removed == ["web"]
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        assert cells(screen.forwards_table, 0) == ["dns"]


async def test_refresh_reads_again() -> None:
    engine = SampleEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        before = engine.reads
        await pilot.press("r")
        await settle(pilot)
        assert engine.reads == before + 1


async def test_rules_filter() -> None:
    app = make_app(SampleEngine())
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await pilot.press("slash", *"masq")
        await pilot.pause()
        rules = [r for r in cells(screen.rules_table, 3) if "—" not in r]
        assert rules and all("MASQUERADE" in r for r in rules)
        await pilot.press("escape")
        await pilot.pause()
        assert len(cells(screen.rules_table, 3)) > len(rules)


async def test_help_lists_every_dashboard_key_and_polling_pauses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dashboard_module, "RULES_EVERY", 0.05)
    engine = SampleEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        table = key_table(app.screen.below)
        keys = [str(c) for c in table.columns[0]._cells]
        for key in ("a", "d", "c", "⏎", "r", "/", "1", "2", "?", "q", "ctrl+p"):
            assert key in keys, keys
        reads = engine.reads
        await asyncio.sleep(0.4)
        assert engine.reads == reads, "no polling while a modal is open"
        await pilot.press("escape")
        await asyncio.sleep(0.4)
        await settle(pilot)
        assert engine.reads > reads


async def test_viewer_title_filter_sort_pause_and_back() -> None:
    app = make_app(SampleEngine(flow_count=200))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ConntrackScreen)
        assert screen.sub_title == "200 of 200 flows"
        await pilot.press("slash", *"icmp")
        await settle(pilot)
        table = screen.query_one(FlowTable)
        assert table.rows and all(f.proto == "icmp" for f in table.rows)
        assert screen.sub_title == f"{len(table.rows)} of 200 flows"
        await pilot.press("escape")  # clears the filter and closes its box
        await pilot.press("s")  # sort by timeout
        await settle(pilot)
        timeouts = [f.timeout for f in table.rows]
        assert timeouts == sorted(timeouts)
        await pilot.press("space")
        assert screen.paused and "PAUSED" in str(screen.query_one("#state", Static).render())
        await pilot.press("space")
        assert not screen.paused
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen)


async def test_enter_on_a_forward_opens_its_flows() -> None:
    app = make_app(SampleEngine(flow_count=100))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        screen.forwards_table.focus()
        await pilot.press("enter")
        await settle(pilot)
        viewer = app.screen
        assert isinstance(viewer, ConntrackScreen) and viewer.forward == "web"
        rows = viewer.query_one(FlowTable).rows
        assert rows and all(f.orig.dport == 1234 for f in rows)


async def test_kill_keeps_the_cursor_on_the_same_flow() -> None:
    engine = SampleEngine(flow_count=100)
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        table = app.screen.query_one(FlowTable)
        await pilot.press("down", "down", "down")
        first = table.current
        assert first is not None and table.cursor == 3
        await pilot.press("x")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        assert engine.killed == [first]
        # The killed flow is gone; now kill one above the cursor and check the cursor follows its flow.
        await pilot.press("up")
        mine = table.current
        assert mine is not None
        app.screen.query_one(FlowTable)  # same widget
        engine.kill([table.rows[0]])
        app.screen.refresh_flows(True)  # type: ignore[attr-defined]
        await settle(pilot)
        assert table.current is not None and table.current.key == mine.key
        assert table.cursor == 1


async def test_health_column_and_tab() -> None:
    engine = SampleEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        assert cells(screen.forwards_table, 3) == ["ok", "ok"]
        await pilot.press("3")
        await pilot.pause()
        detail = str(screen.query_one("#health-detail", Static).render())
        assert "web: healthy" in detail and "FORWARD policy is DROP" in detail
        engine.ip_forward = False
        await pilot.press("r")
        await settle(pilot)
        assert cells(screen.forwards_table, 3) == ["error", "error"]
        detail = str(screen.query_one("#health-detail", Static).render())
        assert (
            "needs attention" in detail
            and "IPv4 forwarding is off" in detail
            and "fix: sysctl" in detail
        )
