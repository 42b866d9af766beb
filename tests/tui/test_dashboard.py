"""The dashboard and the viewer driven by keys, over the SampleEngine (data by the engine, not mocks
of widgets): every key of the issue, and the behaviours behind them."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from rich.text import Text
from textual.widgets import DataTable, Static

import tui.screens.dashboard as dashboard_module
from natbox.api import Dashboard
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


def col(table: DataTable[object], key: str) -> list[str]:
    """A column's cells by its key, in display order."""
    return [str(table.get_cell(row.key, key)) for row in table.ordered_rows]


async def test_dashboard_shows_forwards_rules_and_facts() -> None:
    app = make_app(SampleEngine())
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        forwards = screen.forwards_table
        assert col(forwards, "name") == ["dns", "web"], "sorted by name"
        assert col(forwards, "path")[1] == "192.168.1.30:1234 → 10.0.2.50:80"
        assert col(forwards, "health") == ["ok", "ok"]
        assert int(col(forwards, "flows")[1]) > 0, "flows are counted per forward"
        assert col(forwards, "mark") == ["▶", " "], "the selected forward is marked"
        status = str(screen.status_bar.render())
        assert "natbox-lab" in status and "backend restore (nft)" in status
        assert "ip_forward on" in status and "conntrack" in status
        owners = set(col(screen.rules_table, "owner"))
        assert {"natbox", "natbox:web", "docker", "kube", "other"} <= owners
        targets = col(screen.rules_table, "target")
        assert "FORWARD" in targets and "DNAT → 10.0.2.50:80" in targets
        matches = col(screen.rules_table, "match")
        assert "policy DROP" in matches
        assert not any("--comment natbox" in r for r in matches), "the owner column says it"
        # IPv6: ip6tables chains and foreign IPv6 rules are listed like IPv4 ones.
        tables = col(screen.rules_table, "owner")
        assert "ip6 nat" in tables and "ip6 filter" in tables
        assert "DNAT → [2001:db8:2::60]:443" in targets


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

        assert highlighted() == {"▶natbox:dns"}
        screen.forwards_table.focus()
        await pilot.press("down")
        await settle(pilot)
        assert highlighted() == {"▶natbox:web"}
        assert screen.selected == "web"
        assert col(screen.forwards_table, "mark") == [" ", "▶"]


async def test_remove_asks_with_the_exact_rules_then_removes() -> None:
    engine = SampleEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("down", "d")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        question = str(app.screen.query_one("#question").render())
        assert "web (192.168.1.30:1234 → 10.0.2.50:80)" in question
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
        assert col(screen.forwards_table, "name") == ["dns"]


async def test_refresh_reads_again() -> None:
    engine = SampleEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        before = engine.reads
        await pilot.press("r")
        await settle(pilot)
        assert engine.reads == before + 1


screen_chain_names = {
    "PREROUTING",
    "POSTROUTING",
    "OUTPUT",
    "FORWARD",
    "NATBOX-PREROUTING",
    "NATBOX-POSTROUTING",
    "NATBOX-FORWARD",
}


async def test_rules_filter() -> None:
    app = make_app(SampleEngine())
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await pilot.press("slash", *"masq")
        await pilot.pause(0.3)
        rules = [r for r in col(screen.rules_table, "target") if r not in screen_chain_names]
        assert rules and all("MASQUERADE" in r for r in rules)
        await pilot.press("escape")
        await pilot.pause()
        assert len(col(screen.rules_table, "target")) > len(rules)


async def test_tabs_switch_by_key_and_by_a_click_on_their_label() -> None:
    """The tab strip (widgets/tab_strip.py): keys 1-4 and a click on a label show that tab and
    move the bar under it; a click between two labels changes nothing."""
    from textual.widgets import ContentSwitcher

    from widgets.tab_strip import TabStrip

    app = make_app(SampleEngine(), polling=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        strip = app.screen.query_one(TabStrip)
        switcher = app.screen.query_one("#tabs", ContentSwitcher)

        def shown() -> tuple[str | None, str, list[str]]:
            lines = [str(line.text) for line in (strip.render_line(0), strip.render_line(1))]
            return switcher.current, strip.active, lines

        assert shown()[:2] == ("rules", "rules")
        await pilot.press("3")
        assert shown()[:2] == ("health", "health")
        labels, bar = shown()[2]
        start = labels.index("3 Health")
        assert bar[start : start + len("3 Health")] == "━" * len("3 Health")
        assert bar.count("━") == len("3 Health"), "the bar is under the active label alone"
        pad = (
            strip.styles.padding.left
        )  # the lines are the content; a click is in the widget's cells
        await pilot.click(TabStrip, offset=(pad + labels.index("2 Interfaces") + 3, 0))
        await pilot.pause()
        assert shown()[:2] == ("interfaces", "interfaces")
        await pilot.click(TabStrip, offset=(pad + labels.index("2 Interfaces") - 1, 0))  # a gap
        await pilot.pause()
        assert shown()[:2] == ("interfaces", "interfaces")
        await pilot.click(TabStrip, offset=(pad + labels.index("4 History"), 0))
        await pilot.pause()
        assert shown()[:2] == ("history", "history")


async def test_a_tab_that_hides_the_focused_table_gives_the_keys_to_the_forwards() -> None:
    """Tab (to the rules), then 2: the rules table was hidden with the focus in it, and ↑↓ moved
    nothing until Tab was pressed again (a newcomer's pass in tmux). The forwards have it now; a
    tab switch from the forwards leaves the focus where it is."""
    app = make_app(SampleEngine(), polling=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await pilot.press("tab")
        assert app.focused is screen.rules_table
        await pilot.press("2")
        assert app.focused is screen.forwards_table
        before = screen.forwards_table.cursor_row
        await pilot.press("down")
        assert screen.forwards_table.cursor_row == before + 1
        await pilot.press("3", "1")
        assert app.focused is screen.forwards_table


@pytest.mark.parametrize("width", [80, 44, 43, 30, 16])
async def test_tab_labels_stay_on_one_line_and_clickable_when_narrow(width: int) -> None:
    """Below the labels' width (44 columns) they were wrapped onto the bar's line: no tab showed as
    active. Now they come closer, then are cut evenly: each is still drawn (its number first), the
    active one is underlined, and a click on each drawn label chooses it."""
    from textual.app import App, ComposeResult

    from tui.screens.dashboard import TABS
    from widgets.tab_strip import TabStrip

    chosen: list[str] = []

    class Strip(App[None]):
        def compose(self) -> ComposeResult:
            yield TabStrip(TABS, active="history")

        def on_tab_strip_chosen(self, message: TabStrip.Chosen) -> None:
            chosen.append(message.tab)

    async with Strip().run_test(size=(width, 4)) as pilot:
        strip = pilot.app.query_one(TabStrip)
        labels, bar = (str(strip.render_line(y).text) for y in (0, 1))
        starts = [labels.find(digit) for digit in "1234"]
        assert -1 not in starts and starts == sorted(starts), labels
        if width >= 44:
            assert all(label in labels for _, label in TABS), "whole labels when they fit"
        underlined = [i for i, ch in enumerate(bar) if ch == "━"]
        assert underlined and underlined[0] == starts[3], (labels, bar)  # under "4 History" alone
        assert len(underlined) == len(labels[starts[3] :].rstrip())
        for x in starts:
            await pilot.click(TabStrip, offset=(strip.styles.padding.left + x, 0))
            await pilot.pause()
        assert chosen == [tab for tab, _ in TABS], (labels, chosen)


async def test_the_title_line_names_natbox_and_its_icon_opens_the_commands() -> None:
    """The top line (widgets/title_bar.py): the title centred between the icon and the right edge's
    blank cells, as Textual's Header draws it; the icon is lit under the pointer, with a tooltip; a
    click on it opens the command palette, a click on the title does not."""
    from textual.command import CommandPalette

    from widgets.title_bar import ICON_CELLS, RIGHT_CELLS, TitleBar

    app = make_app(SampleEngine(), polling=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        line = str(app.screen.query_one(TitleBar).render_line(0).text)
        heading = "natbox — ? keys · ctrl+p commands"
        assert line.startswith(" ≡ ") and heading in line
        left = line.index(heading) - ICON_CELLS
        right = 100 - RIGHT_CELLS - (line.index(heading) + len(heading))
        assert left >= 0 and abs(left - right) <= 1, (left, right)
        bar = app.screen.query_one(TitleBar)
        await pilot.hover(TitleBar, offset=(2, 0))
        assert bar.icon_hover and bar.tooltip == "Open the command palette"
        lit = bar.render_line(0)
        await pilot.hover(TitleBar, offset=(40, 0))
        assert not bar.icon_hover and bar.tooltip is None
        assert bar.render_line(0) != lit, "the icon is lit only under the pointer"
        await pilot.click(TitleBar, offset=(40, 0))
        await pilot.pause()
        assert not isinstance(app.screen, CommandPalette)
        await pilot.click(TitleBar, offset=(1, 0))
        await pilot.pause()
        assert isinstance(app.screen, CommandPalette)


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
        for key in (
            "a",
            "d",
            "u",
            "c",
            "⏎",
            "r",
            "/",
            "g",
            "s",
            "1",
            "2",
            "3",
            "4",
            "?",
            "q",
            "ctrl+p",
        ):
            assert key in keys, keys
        polls = engine.polls
        await asyncio.sleep(0.4)
        assert engine.polls == polls, "no polling while a modal is open"
        await pilot.press("escape")
        await asyncio.sleep(0.4)
        await settle(pilot)
        assert engine.polls > polls


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
        await pilot.press("down", "enter")
        await settle(pilot)
        viewer = app.screen
        assert isinstance(viewer, ConntrackScreen) and viewer.forward == "web"
        assert len(app.screen_stack) == 2, "the dashboard and one viewer, not two"
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
        assert col(screen.forwards_table, "health") == ["ok", "ok"]
        await pilot.press("down", "3")
        await pilot.pause()
        detail = str(screen.query_one("#health-detail", Static).render())
        assert "web: healthy" in detail and "FORWARD policy is DROP" in detail
        engine.ip_forward = False
        await pilot.press("r")
        await settle(pilot)
        assert col(screen.forwards_table, "health") == ["error", "error"]
        detail = str(screen.query_one("#health-detail", Static).render())
        assert (
            "needs attention" in detail
            and "IPv4 forwarding is off" in detail
            and "fix: sysctl" in detail
        )


class FirstShownOnly(SampleEngine):
    """The first Dashboard holds only the chains shown (Engine.prefetch's): complete=False."""

    def dashboard(self) -> Dashboard:
        return replace(super().dashboard(), complete=self.reads > 1)


@pytest.mark.parametrize("first_complete", [False, True])
async def test_after_a_first_read_of_the_shown_chains_the_whole_ruleset_is_read_at_once(
    first_complete: bool,
) -> None:
    """A tampering warning about a natbox tag in another software's chain, or a table iptables
    cannot show, is not in the first Dashboard (the chains shown, listed while Textual loaded):
    the whole ruleset is read right after the first frame, not at the first poll, and the health
    check runs on that read only. After a whole read, nothing is read again until a poll."""
    engine = SampleEngine() if first_complete else FirstShownOnly()
    app = make_app(engine, polling=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        if first_complete:
            assert (engine.reads, engine.health_reads) == (1, 1)
        else:
            assert (engine.reads, engine.health_reads) == (2, 1)
            screen = app.screen
            assert isinstance(screen, DashboardScreen) and screen.data is not None
            assert screen.data.complete


async def test_a_poll_before_the_whole_read_is_the_whole_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a big box the whole read after an incomplete first Dashboard takes seconds: a poll due
    meanwhile is that read (its fingerprint is None), and the one asked after the first frame is
    then not started as well: one whole read, never two saves at once."""
    monkeypatch.setattr(dashboard_module, "RULES_EVERY", 0.02)
    monkeypatch.setattr(dashboard_module, "FULL_READ_EVERY", 1000)  # (its own whole reads)
    engine = FirstShownOnly(dashboard_delay=0.2)
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await asyncio.sleep(1.2)
        await pilot.pause()
        assert engine.reads == 2, "the first read and one whole read, then generations only"


async def test_warnings_of_a_first_read_of_the_shown_chains_are_counted_so_far() -> None:
    """Until the whole ruleset is read, the status line does not present the warnings of the
    chains shown as all of them (a natbox tag in another chain is found by the whole read)."""
    engine = FirstShownOnly(dashboard_delay=0.3)
    app = make_app(engine, polling=False)
    async with app.run_test(size=(140, 30)) as pilot:
        for _ in range(100):  # the first Dashboard on screen, the whole read on its way
            await asyncio.sleep(0.02)
            screen = app.screen
            if isinstance(screen, DashboardScreen) and screen.data is not None:
                break
        assert isinstance(screen, DashboardScreen) and screen.data is not None
        assert not screen.data.complete
        assert "checking" in str(screen.status_bar.render())
        await settle(pilot)
        assert screen.data.complete and "checking" not in str(screen.status_bar.render())


async def test_the_filter_box_key_line_says_what_enter_esc_and_tab_do() -> None:
    """In the filter box the key line read only `/ Filter` (a key that types a slash there). Now it
    says what Enter, Esc and Tab do in the box, and each does it."""
    from widgets.key_bar import KeyBar

    app = make_app(SampleEngine(), polling=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        bar = screen.query_one(KeyBar)
        await pilot.press("slash")
        line = str(bar.render_line(0).text)
        assert "⏎ Done  esc Clear  tab Forwards" in line, line
        assert "Filter" not in line and "Go to" not in line
        await pilot.press("w", "e", "escape")
        await pilot.pause()
        assert screen.needle == "" and app.focused is screen.forwards_table
        await pilot.press("slash", "w", "tab")
        await pilot.pause(0.3)
        assert screen.needle == "w" and app.focused is screen.forwards_table
        assert "/ Filter" in str(bar.render_line(0).text)


async def test_a_title_line_without_a_title_follows_the_screens() -> None:
    """The wizard and the viewer give TitleBar no title: it shows the screen's, and follows it (the
    viewer's `12 of 100000 flows` as the flows come in)."""
    from textual.app import App, ComposeResult

    from widgets.title_bar import TitleBar

    class Titled(App[None]):
        TITLE = "natbox"

        def compose(self) -> ComposeResult:
            yield TitleBar(icon="»")

        def on_mount(self) -> None:
            self.screen.title = "flows of web"
            self.screen.sub_title = "reading…"

    async with Titled().run_test(size=(80, 5)) as pilot:
        bar = pilot.app.query_one(TitleBar)
        await pilot.pause()
        assert "flows of web — reading…" in str(bar.render_line(0).text)
        pilot.app.screen.sub_title = "12 of 100000 flows"
        await pilot.pause()
        line = str(bar.render_line(0).text)
        assert "flows of web — 12 of 100000 flows" in line and line.startswith(" » ")
