"""TraceScreen with a fake tracer fed by real xtables-monitor output: the CLI's lines, in 80x24."""

from __future__ import annotations

import threading
from pathlib import Path

from textual.app import App
from textual.widgets import Static

from natbox import trace
from natbox.model import Forward
from tui.screens.trace import Tracer, TraceScreen

FIX = Path(__file__).parent.parent / "core" / "fixtures"
FWD = Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", name="tcp-1234", snat="10.0.2.40")


def fake(name: str, calls: list[dict[str, object]]) -> Tracer:
    def tracer(fwd: Forward, **kw: object) -> trace.Result:
        calls.append(kw)
        assert isinstance(kw["stop"], threading.Event), "the screen can stop the trace"
        pkts = trace.Assembler().feed_all((FIX / f"trace-{name}.txt").read_text().splitlines())[:4]
        on_packet = kw["on_packet"]
        for p in pkts:
            on_packet(p)  # type: ignore[operator]
        return trace.Result(pkts, False)

    return tracer


async def test_trace_screen_shows_the_cli_lines() -> None:
    calls: list[dict[str, object]] = []
    app: App[None] = App()
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(TraceScreen(FWD, timeout=5, tracer=fake("reject", calls)))
        await app.workers.wait_for_complete()
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, TraceScreen)
        pkt = trace.Assembler().feed_all((FIX / "trace-reject.txt").read_text().splitlines())[0]
        assert screen.shown[: len(pkt.lines(FWD))] == pkt.lines(FWD)
        status = str(screen.query_one("#trace-status", Static).render())
        assert "1 dropped" in status
        await pilot.press("r")
        await app.workers.wait_for_complete()
        assert len(calls) == 2
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, TraceScreen)


async def test_t_traces_the_marked_forward_through_the_engine() -> None:
    """`t` on the dashboard opens the trace of the marked forward, asking the engine (the sample
    engine has no kernel: no packet comes, and this host's firewall is never touched)."""
    from natbox.sample import SampleEngine
    from tests.tui.conftest import settle
    from tui.app import make_app

    engine = SampleEngine()
    asked: list[Forward] = []
    real = engine.trace

    def spy(fwd: Forward, **kw: object) -> trace.Result:
        asked.append(fwd)
        return real(fwd, **kw)  # type: ignore[arg-type]

    engine.trace = spy  # type: ignore[method-assign]
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        marked = app.screen.selected  # type: ignore[attr-defined]
        await pilot.press("t")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, TraceScreen)
        assert [f.name for f in asked] == [marked]
        status = str(app.screen.query_one("#trace-status", Static).render())
        assert "no packet" in status
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, TraceScreen)
