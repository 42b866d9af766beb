"""The screen states the snapshots and PNGs show are the same on a slow machine."""

from __future__ import annotations

import asyncio

import pytest

import tui.screens.conntrack as conntrack_screen
import tui.screens.dashboard as dashboard_screen
from natbox.sample import SampleEngine
from tui.screenshots import STATES


@pytest.mark.parametrize("polling", [False, True])
def test_a_state_reached_slowly_has_no_timed_reads(
    monkeypatch: pytest.MonkeyPatch, polling: bool
) -> None:
    """Polls due while a loaded CI machine reaches a state (seconds) would change it (the
    Interfaces tab's rates and sparklines): snapshot apps read only on keys. With polling on, the
    app does read on the timers (the flag is what stops them)."""
    monkeypatch.setattr(dashboard_screen, "RULES_EVERY", 0.02)
    monkeypatch.setattr(dashboard_screen, "FLOWS_EVERY", 0.02)
    monkeypatch.setattr(conntrack_screen, "REFRESH_EVERY", 0.02)
    state = next(s for s in STATES if s.name == "dashboard-interfaces-80x24")

    async def walk() -> SampleEngine:
        app = state.app()
        app.polling = polling
        engine = app.engine
        assert isinstance(engine, SampleEngine)
        async with app.run_test(size=state.size) as pilot:
            if not polling:  # (with polls on, settle() would wait for them to stop: never)
                await state.reach(pilot)
            await asyncio.sleep(0.3)  # fifteen poll intervals
            await pilot.pause()
        return engine

    engine = asyncio.run(walk())
    if polling:
        assert engine.polls > 20  # fingerprint() calls: a poll that found nothing new costs one
    else:  # the first read and four `r`, each a rule read and a flow count
        assert (engine.reads, engine.interface_reads, engine.flow_reads) == (5, 0, 5)
