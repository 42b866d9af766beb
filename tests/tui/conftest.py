"""Pilot helpers: the app around a SampleEngine, settled (workers done, messages handled)."""

from __future__ import annotations

import asyncio

from textual.pilot import Pilot
from textual.worker import WorkerState

from tui.app import NatboxApp


async def settle(pilot: Pilot[int]) -> None:
    """Let thread workers finish and their messages be handled (repeatedly: handlers start new work).

    Async workers are not waited for: one may be waiting on a modal for a key press.
    """
    app = pilot.app
    assert isinstance(app, NatboxApp)
    for _ in range(3):
        busy = [
            w
            for w in app.workers
            if w._thread_worker and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
        ]
        if busy:
            await asyncio.wait([asyncio.ensure_future(w.wait()) for w in busy], timeout=10)
        await pilot.pause()
