"""Provides TraceScreen: the kernel's path for a forward's next connection, live, in the CLI's words.

A thread worker gets the forward and the timeout as arguments, runs natbox.trace.run() and posts
each finished packet as an immutable message (the lines `natbox trace` prints); the screen only
appends them. Escape stops the trace (its TRACE rules are removed by the worker on the way out);
`r` traces the next connection again. Fits 80x24: long rule lines wrap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import RichLog, Static

from natbox import trace
from natbox.errors import NatboxError
from natbox.model import Forward
from widgets.key_bar import KeyBar

Tracer = Callable[..., trace.Result]


class TraceScreen(Screen[None]):
    """One forward's trace: waits for a connection, shows every packet's path as it comes."""

    DEFAULT_CSS = """
    TraceScreen #trace-title { height: auto; padding: 0 1; background: $panel; }
    TraceScreen RichLog { height: 1fr; }
    TraceScreen #trace-status { height: 1; padding: 0 1; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "back", tooltip="stop the trace (its rules go) and go back"),
        Binding("r", "again", "trace again", tooltip="wait for the next connection again"),
    ]

    class PacketTraced(Message):
        """One packet's path, as the CLI prints it (a tuple: nothing shared with the worker)."""

        def __init__(self, lines: tuple[str, ...]) -> None:
            super().__init__()
            self.lines = lines

    class TraceEnded(Message):
        """The trace is over: why, in one line."""

        def __init__(self, summary: str) -> None:
            super().__init__()
            self.summary = summary

    def __init__(self, fwd: Forward, timeout: float = 30.0, tracer: Tracer = trace.run) -> None:
        super().__init__()
        self.fwd = fwd
        self.timeout = timeout
        self._tracer = tracer
        self._stop = threading.Event()
        self.shown: list[str] = []
        """Every line shown so far (what the log holds)."""

    def compose(self) -> ComposeResult:
        fwd = self.fwd
        yield Static(
            f"trace {fwd.name}: {fwd.proto} {fwd.listen} → {fwd.backend}", id="trace-title"
        )
        yield RichLog(id="trace-log", wrap=True, markup=False, highlight=False)
        yield Static("", id="trace-status")
        yield KeyBar()

    def on_mount(self) -> None:
        self._start()

    def _start(self) -> None:
        self._stop = threading.Event()
        self.query_one("#trace-status", Static).update(
            f"waiting up to {self.timeout:g} s for a connection (Escape stops)"
        )
        self.run_trace(self.fwd, self.timeout, self._stop)

    @work(thread=True, exclusive=True, group="trace", description="Tracing")
    def run_trace(self, fwd: Forward, timeout: float, stop: threading.Event) -> None:
        """Run the trace in a thread; everything it learns goes back by message."""
        try:
            result = self._tracer(
                fwd,
                timeout=timeout,
                stop=stop,
                on_packet=lambda p: self.post_message(self.PacketTraced(tuple(p.lines(fwd)))),
            )
        except NatboxError as exc:
            self.post_message(self.TraceEnded(exc.one_line().removeprefix("natbox: ")))
            return
        dropped = sum(1 for p in result.packets if p.dropped_by is not None)
        if not result.packets:
            summary = f"no packet for {fwd.listen} within {timeout:g} s (is a client trying?)"
        elif dropped:
            summary = f"{len(result.packets)} packet(s) traced, {dropped} dropped: r traces again"
        else:
            summary = f"{len(result.packets)} packet(s) traced, all forwarded: r traces again"
        self.post_message(self.TraceEnded(summary))

    @on(PacketTraced)
    def _packet(self, message: PacketTraced) -> None:
        log = self.query_one("#trace-log", RichLog)
        for line in (*message.lines, ""):
            log.write(line)
        self.shown += [*message.lines, ""]

    @on(TraceEnded)
    def _ended(self, message: TraceEnded) -> None:
        self.query_one("#trace-status", Static).update(message.summary)

    def action_back(self) -> None:
        """Stop the trace and leave."""
        self._stop.set()
        self.dismiss(None)

    def action_again(self) -> None:
        """Trace the next connection."""
        self._stop.set()
        self.query_one("#trace-log", RichLog).clear()
        self.shown = []
        self._start()
