"""The conntrack viewer as a person uses it (#14 items 10 and 11): both tuples at every width, the
sort column with its direction, `S` reverses, the filter matches what the rows show (plus field
filters), and Escape clears it."""

from __future__ import annotations

import pytest
from textual.widgets import Input, Static

from natbox.sample import SampleEngine
from tests.tui.conftest import settle
from tui.app import make_app
from tui.screens.conntrack import ConntrackScreen
from widgets.flow_table import FlowTable


def screen_rows(table: FlowTable) -> list[str]:
    return [table.render_line(y).text for y in range(table.size.height)]


def header(screen: ConntrackScreen) -> str:
    return str(screen.query_one("#columns", Static).render())


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_rows_show_both_tuples_at_every_width(size: tuple[int, int]) -> None:
    app = make_app(SampleEngine(flow_count=200))
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        table = app.screen.query_one(FlowTable)
        nated = [r for r in screen_rows(table) if "=>" in r]
        assert nated, "the sample has NATed flows on the first screen"
        for row in nated:
            # listen address (whole or as .30 after the client's /24), SNAT source, backend
            assert "192.168.1.30:1234" in row or ".30:1234" in row, row
            assert "=> 10.0.2.40" in row, row
            assert row.rstrip().split("=>")[1].split("→")[1].strip().split()[0].endswith(":80"), row


async def test_sort_column_and_direction_and_reverse() -> None:
    app = make_app(SampleEngine(flow_count=200))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ConntrackScreen)
        table = screen.query_one(FlowTable)
        await pilot.press("s")  # timeout: soonest first
        await settle(pilot)
        assert "TTL▲" in header(screen)
        await pilot.press("s", "s")  # packets, biggest first
        await settle(pilot)
        assert "PKTS▼" in header(screen) and "BYTES" not in header(screen)
        packets = [f.packets for f in table.rows]
        assert packets == sorted(packets, reverse=True) and packets[0] > packets[-1]
        await pilot.press("home")  # the cursor stayed on its flow; the top shows the biggest
        await pilot.pause()
        first = screen_rows(table)[0]
        assert first.rstrip().endswith(str(packets[0])), "the sort's column is on the row"
        await pilot.press("S")
        await settle(pilot)
        assert "PKTS▲" in header(screen)
        assert [f.packets for f in table.rows] == sorted(packets)
        assert "▲" in str(screen.query_one("#state", Static).render())


async def test_filter_matches_what_the_rows_show() -> None:
    app = make_app(SampleEngine(flow_count=200))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ConntrackScreen)
        table = screen.query_one(FlowTable)
        total = len(table.rows)
        await pilot.press("slash", *"10.0.2.40")  # the SNAT source, shown on NATed rows only
        await settle(pilot)
        assert 0 < len(table.rows) < total
        assert all(f.snat for f in table.rows)
        box = screen.query_one("#filter", Input)
        box.value = ":1234"  # copied from a row
        await settle(pilot)
        assert table.rows and all(f.orig.dport == 1234 for f in table.rows)
        for text, check in [
            ("proto:udp", lambda f: f.proto == "udp"),
            ("state:ESTABLISHED", lambda f: f.state == "ESTABLISHED"),
            ("fwd:web", lambda f: f.orig.dport == 1234),
            ("port:22", lambda f: 22 in (f.orig.dport, f.reply.sport)),
            ("proto:tcp port:1234", lambda f: f.proto == "tcp" and f.orig.dport == 1234),
        ]:
            box.value = text
            await settle(pilot)
            assert table.rows and all(check(f) for f in table.rows), text
        # hidden text does not match: no row shows "mark" or "zone"
        box.value = "zone"
        await settle(pilot)
        assert table.rows == []
        # Escape clears the filter (and closes the box); all flows are back
        await pilot.press("escape")
        await settle(pilot)
        assert box.value == "" and not box.has_class("-visible")
        assert len(table.rows) == total
        assert isinstance(app.screen, ConntrackScreen), "the first Escape only cleared the filter"


async def test_typing_on_narrows_without_waiting_for_a_read() -> None:
    engine = SampleEngine(flow_count=2000)
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ConntrackScreen)
        table = screen.query_one(FlowTable)
        reads = engine.reads
        await pilot.press("slash", *"192.168.1.20:1001")
        await settle(pilot)
        assert table.rows and all(
            f"192.168.1.20:{f.orig.sport}".startswith("192.168.1.20:1001") for f in table.rows
        )
        assert engine.reads - reads <= 1, "keystrokes re-filter the last read, they do not read"


async def test_first_rows_show_while_the_whole_table_is_read() -> None:
    import asyncio
    import threading

    from natbox.engine import FlowSnapshot

    release = threading.Event()

    class SlowEngine(SampleEngine):
        def flows(self, head: bool = False) -> FlowSnapshot:
            if not head:
                release.wait(10)  # the whole table takes its time
            return super().flows(head)

    engine = SlowEngine(flow_count=5000)
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, ConntrackScreen)
        table = screen.query_one(FlowTable)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if table.rows:
                break
        assert 0 < len(table.rows) < 5000, "the first flows are on screen before the whole read"
        assert "reading" in str(screen.sub_title)
        assert any("=>" in row for row in screen_rows(table))
        release.set()
        await settle(pilot)
        assert len(table.rows) == 5000 and screen.sub_title == "5000 of 5000 flows"
