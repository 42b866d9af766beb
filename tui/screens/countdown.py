"""Provides CountdownScreen: "Keep these rules?" with the seconds left before the automatic rollback.

The rollback itself does not depend on this screen: a detached watchdog performs it even if the
terminal dies. The screen only lets the user keep (y) or roll back early (n).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import ProgressBar, Static

from widgets.key_bar import KeyBar

Answer = Literal["keep", "rollback", "expired"]
"""keep (y), rollback (n or Escape), expired: nobody answered in time (the watchdog rolls back)."""


class CountdownScreen(ModalScreen[Answer]):
    """Returns what happened: kept, rolled back by the user, or the time ran out."""

    DEFAULT_CSS = """
    CountdownScreen {
        align: center middle;
    }
    CountdownScreen > Vertical {
        width: 70;
        max-width: 95%;
        height: auto;
        border: thick $warning;
        background: $surface;
        padding: 1 2;
    }
    CountdownScreen #question {
        text-style: bold;
    }
    CountdownScreen #left {
        margin-top: 1;
    }
    CountdownScreen ProgressBar {
        margin-top: 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer('keep')", "Keep", id="countdown.keep", tooltip="Keep the new rules"),
        Binding(
            "n,escape",
            "answer('rollback')",
            "Roll back",
            id="countdown.rollback",
            tooltip="Roll back now",
        ),
    ]

    def __init__(self, name: str, path: str, seconds: float, clock: Callable[[], float]) -> None:
        super().__init__()
        self.forward_name = name
        self.path = path
        self.seconds = seconds
        self.clock = clock
        """Seconds (snapshots freeze it)."""
        self._deadline = 0.0

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(
                f"Forward {self.forward_name} ({self.path}) is live. Keep these rules?",
                id="question",
            )
            yield Static("y = keep   n = roll back now", id="keys")
            yield Static(self._left_text(), id="left")
            yield ProgressBar(total=self.seconds, show_eta=False, show_percentage=False, id="bar")
        yield KeyBar()  # its own keys, over the stale ones of the screen below

    def _now(self) -> float:
        return self.clock()

    def on_mount(self) -> None:
        self.app.clear_notifications()  # toasts never cover the question or its keys
        self._deadline = self._now() + self.seconds
        self.query_one("#left", Static).update(self._left_text())
        self.query_one(ProgressBar).update(progress=0)
        self.set_interval(0.5, self._tick)

    def _left_text(self) -> str:
        left = (
            max(0, round(self._deadline - self._now())) if self._deadline else round(self.seconds)
        )
        return f"No answer: rolled back in {left} s. A watchdog does it even if this SSH session drops."

    def _tick(self) -> None:
        left = self._deadline - self._now()
        self.query_one("#left", Static).update(self._left_text())
        self.query_one(ProgressBar).update(progress=self.seconds - max(0.0, left))
        if left <= 0:
            self.dismiss("expired")

    def action_answer(self, answer: Answer) -> None:
        self.dismiss(answer)
