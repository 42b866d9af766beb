"""Provides the screen states worth looking at, and `python -m tui.screenshots DIR` to write them as
SVG and PNG. The snapshot tests use the same STATES, so the pictures are what the tests check."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Input
from textual.worker import WorkerState

from natbox.sample import SampleEngine
from tui.app import NatboxApp, make_app


async def settle(pilot: Pilot[int]) -> None:
    """Let thread workers finish and their messages be handled (a modal's async worker may wait).

    Handlers start new work, so it repeats until two rounds in a row found nothing running.
    """
    quiet = 0
    for _ in range(30):
        busy = [
            w
            for w in pilot.app.workers
            if w._thread_worker and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
        ]
        # Work the dashboard holds back until its first frame is out (its flow count, its health).
        waiting = any(getattr(screen, "starting", 0) for screen in pilot.app.screen_stack)
        if busy:
            quiet = 0
            await asyncio.wait([asyncio.ensure_future(w.wait()) for w in busy], timeout=10)
        elif waiting:
            quiet = 0
            await asyncio.sleep(0.05)
        else:
            quiet += 1
            if quiet == 2:
                break
        await pilot.pause()


async def _no_blink(pilot: Pilot[int]) -> None:
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False
    await pilot.pause()


async def _filter_settled(pilot: Pilot[int]) -> None:
    await asyncio.sleep(0.3)  # the filter follows the keys after 0.15 s
    await _no_blink(pilot)


@dataclass(frozen=True)
class State:
    """One screen state: its name, terminal size, the keys that reach it, the sample size."""

    name: str
    size: tuple[int, int]
    keys: tuple[str, ...] = ()
    flows: int = 60
    after: Callable[[Pilot[int]], Awaitable[None]] | None = field(default=None, compare=False)

    def app(self) -> NatboxApp:
        """A fresh app over a fresh sample engine, with a frozen clock and no timed polls (a
        state reached on a slow machine is the same state)."""
        return make_app(SampleEngine(flow_count=self.flows), clock=lambda: 1000.0, polling=False)

    async def reach(self, pilot: Pilot[int]) -> None:
        """Drive the app to this state."""
        await settle(pilot)
        for key in self.keys:
            await pilot.press(key)
            await settle(pilot)
        if self.after is not None:
            await self.after(pilot)


STATES = [
    State("dashboard", (120, 34)),
    State("dashboard-80x24", (80, 24)),
    State("dashboard-interfaces-80x24", (80, 24), ("2", "r", "r", "r", "r")),
    State("rules-filter-80x24", (80, 24), ("slash", *"masq"), after=_filter_settled),
    State("rules-ip6-80x24", (80, 24), ("slash", *"2001:db8"), after=_filter_settled),
    State("dashboard-health-80x24", (80, 24), ("3",)),
    State("remove-confirm-80x24", (80, 24), ("d",)),
    State("help-80x24", (80, 24), ("question_mark",)),
    State(
        "edit-preview-80x24",
        (80, 24),
        ("down", "E", "enter", "ctrl+u", *"10.0.2.51:80", "enter", "enter"),
    ),
    State("disabled-80x24", (80, 24), ("down", "x", "y")),
    State("conntrack", (130, 34), ("c",), flows=100_000),
    State("conntrack-80x24", (80, 24), ("c",), flows=100_000),
    State("conntrack-filter-80x24", (80, 24), ("c", "slash", *"icmp", "enter"), after=_no_blink),
    State("conntrack-kill-80x24", (80, 24), ("c", "down", "x")),
    State("wizard-listen-80x24", (80, 24), ("a", "tab", *"8080"), after=_no_blink),
    State(
        "wizard-backend-80x24",
        (80, 24),
        ("a", "tab", *"8080", "enter", *"10.0.2.50:80"),
        after=_no_blink,
    ),
    State(
        "wizard-options-80x24",
        (80, 24),
        ("a", "tab", *"8080", "enter", *"10.0.2.50:80", "enter"),
        after=_no_blink,
    ),
    State(
        "wizard-preview",
        (110, 34),
        ("a", "tab", *"8080", "enter", *"10.0.2.50:80", "enter", "enter"),
    ),
    State(
        "wizard-preview-80x24",
        (80, 24),
        ("a", "tab", *"8080", "enter", *"10.0.2.50:80", "enter", "enter"),
    ),
    State(
        "wizard-blocked-80x24",
        (80, 24),
        ("a", "tab", *"1234", "enter", *"10.0.2.50:80", "enter", "enter"),
    ),
    State(
        "countdown-80x24",
        (80, 24),
        ("a", "tab", *"8080", "enter", *"10.0.2.50:80", "enter", "enter", "enter"),
    ),
]


async def shoot(state: State, out: Path) -> Path:
    """Save one state as SVG (and PNG when cairosvg is there); returns the SVG path."""
    app = state.app()
    async with app.run_test(size=state.size) as pilot:
        await state.reach(pilot)
        svg = Path(app.save_screenshot(filename=f"{state.name}.svg", path=str(out)))
    try:
        import cairosvg
    except ImportError:  # PNGs need cairosvg (pip) and the Fira Code font (fonts-firacode)
        return svg
    cairosvg.svg2png(
        url=str(svg), write_to=str(svg.with_suffix(".png")), output_width=state.size[0] * 12
    )
    return svg


def main(argv: list[str]) -> int:
    """Write every state to the directory given (default screenshots/)."""
    out = Path(argv[0] if argv else "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    for state in STATES:
        path = asyncio.run(shoot(state, out))
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
