"""Keys typed faster than the screen follows (a laggy SSH link, a paste) land where they would have
landed had the user waited: sent as one burst, as a terminal delivers them."""

from __future__ import annotations

import unicodedata

from textual import events
from textual.pilot import Pilot
from textual.widgets import Input

from natbox.sample import SampleEngine
from tests.tui.conftest import settle
from tui.app import make_app
from tui.screens.countdown import CountdownScreen
from tui.screens.dashboard import DashboardScreen


def burst(pilot: Pilot[int], *keys: str) -> None:
    """Hand every key to the driver at once, with no wait between them (unlike pilot.press)."""
    driver = pilot.app._driver
    assert driver is not None
    for one in keys:
        name = {".": "full_stop", ":": "colon", "/": "slash"}.get(one, one)
        try:
            char: str | None = unicodedata.lookup(name.upper().replace("_", " "))
        except KeyError:
            char = one if len(one) == 1 else None
        if name == "enter":
            char = "\r"
        elif name == "tab":
            char = "\t"
        event = events.Key(name, char)
        event.set_sender(pilot.app)
        driver.send_message(event)


def chars(text: str) -> list[str]:
    return list(text)


async def test_address_tab_port_in_one_burst() -> None:
    app = make_app(SampleEngine())
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        burst(pilot, "a", *chars("192.168.1.30"), "tab", *chars("8090"))
        await pilot.pause(1.5)
        await settle(pilot)
        wizard = app.screen
        assert wizard.query_one("#listen-ip", Input).value == "192.168.1.30"
        assert wizard.query_one("#listen-port", Input).value == "8090"


async def test_the_whole_wizard_in_one_burst_adds_the_forward() -> None:
    engine = SampleEngine()
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        burst(
            pilot,
            "a",
            *chars("192.168.1.30"),
            "tab",
            *chars("8090"),
            "enter",
            *chars("10.0.2.50:80"),
            "enter",
            "enter",
            "enter",
        )
        for _ in range(60):
            await pilot.pause(0.1)
            if isinstance(app.screen, CountdownScreen):
                break
        assert isinstance(app.screen, CountdownScreen), app.screen
        burst(pilot, "y")
        await pilot.pause(0.5)
        await settle(pilot)
        assert engine.waiting is None
        assert [f.name for f in engine.applied] == ["tcp-8090"]
        assert str(engine.applied[0].backend) == "10.0.2.50:80"
        assert isinstance(app.screen, DashboardScreen)


async def test_a_filter_typed_in_one_burst_scans_the_flows_once_for_its_last_key(
    monkeypatch: object,
) -> None:
    """A filter pasted (or typed over a laggy link) into the viewer at 100k flows: one scan for the
    whole text, not one per character (each scan kept the next keys waiting: 0.3-3 s in tmux)."""
    import pytest

    import tui.screens.conntrack as viewer

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    scanned: list[str] = []
    real = viewer.ConntrackScreen.refresh_flows

    def refresh_flows(self: viewer.ConntrackScreen, read: bool = True) -> None:
        # Recorded as each scan starts, on the UI thread: two scans' threads may end in either
        # order (only the newest one's rows are shown), so the order they end in proves nothing.
        # Only the filter's scans (no read): the timed refreshes (a read, then a scan) are not
        # the keys'.
        if not read:
            scanned.append(self.filter.text)
        real(self, read)

    monkeypatch.setattr(viewer.ConntrackScreen, "refresh_flows", refresh_flows)
    app = make_app(SampleEngine(flow_count=20_000))
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        await pilot.pause(0.5)
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, viewer.ConntrackScreen)
        await pilot.press("slash")
        await settle(pilot)
        scanned.clear()
        burst(pilot, *chars("port:1234"))
        await pilot.pause(1.0)
        await settle(pilot)
        typed = [t for t in scanned if t]
        assert typed and typed[-1] == "port:1234", scanned
        assert len(typed) <= 2, f"one scan per character: {typed}"
        assert screen.filter.text == "port:1234"
        shown = {row.orig.dport for row in screen.table.rows} | {
            row.orig.sport for row in screen.table.rows
        }
        assert 1234 in shown and len(screen.table.rows) < 20_000
