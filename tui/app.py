"""Provides NatboxApp and make_app(), used by the CLI, tests, screenshots and the demo."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen

from natbox.api import EngineAPI
from tui.screens.dashboard import DashboardScreen

PALETTE = [
    ("Add a forward", "Open the add wizard", "add"),
    ("Remove the selected forward", "Show its rules, then remove them", "remove"),
    ("Undo", "Undo the last change of this session", "undo"),
    ("Conntrack viewer", "Live flows with both tuples", "conntrack"),
    ("Flows of the selected forward", "The viewer, filtered to that forward", "flows_of_forward"),
    ("Refresh", "Read rules, flows and interfaces now", "refresh"),
    ("Filter", "Filter forwards and rules as you type", "filter"),
    ("Go to a forward", "Type its name", "goto"),
    ("Sort forwards", "By name, flows, bytes, health", "sort"),
    ("Show history", "What happened in this session", "tab('history')"),
    ("Show rules", "The rules tab", "tab('rules')"),
    ("Show interfaces", "The interfaces tab", "tab('interfaces')"),
    ("Show health", "The selected forward's findings and fixes", "tab('health')"),
    ("Help", "Every key", "help"),
]


class NatboxApp(App[int]):
    """The natbox dashboard. `engine` does every read and write (a fake in tests)."""

    CSS_PATH = "styles/app.tcss"
    TITLE = "natbox"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+c", "quit", "Quit", show=False, id="app.quit", tooltip="Leave natbox"),
    ]

    def __init__(
        self,
        engine: EngineAPI,
        confirm_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.clock = clock
        """Seconds, for countdowns (snapshots freeze it)."""
        self.confirm_seconds = confirm_seconds
        """How long a new forward waits for `y` before it is rolled back."""

    def on_mount(self) -> None:
        self.push_screen(DashboardScreen(self.engine, self.confirm_seconds, self.clock))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, DashboardScreen):
            for title, help_text, action in PALETTE:
                yield SystemCommand(title, help_text, partial(screen.run_action, action))


def make_app(
    engine: EngineAPI | None = None,
    confirm_seconds: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> NatboxApp:
    """Build the app around `engine` (the real Engine when None) and `clock` (frozen in snapshots)."""
    if engine is None:
        from natbox.engine import Engine

        engine = Engine()
    return NatboxApp(engine, confirm_seconds, clock)


def run(backend_choice: str | None = None, confirm_seconds: float = 30.0) -> int:
    """Run the dashboard in this terminal."""
    from natbox.engine import Engine

    result = make_app(Engine(backend_choice), confirm_seconds).run()
    return result or 0
