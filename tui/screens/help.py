"""Provides HelpScreen: every key of the screen below it, from its bindings."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from widgets.key_bar import KeyBar

GLOBAL_KEYS = [
    ("?", "this help"),
    ("ctrl+p", "command palette: every action by name"),
    ("q", "quit (Escape in a sub-screen goes back)"),
]


def key_table(screen: Screen[Any]) -> Table:
    """A two-column table of the screen's bindings (and the global ones)."""
    table = Table(box=None, show_header=False, padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    seen: set[str] = set()
    for binding in screen.BINDINGS:
        if not isinstance(binding, Binding) or not binding.description:
            continue
        keys = " ".join(screen.app.get_key_display(Binding(k, "")) for k in binding.key.split(","))
        if keys in seen:
            continue
        seen.add(keys)
        seen.update(keys.split())
        table.add_row(keys, binding.tooltip or binding.description)
    for key, text in GLOBAL_KEYS:
        if key not in seen:
            table.add_row(key, text)
    return table


class HelpScreen(ModalScreen[None]):
    """Lists every key; any of Escape, q or ? closes it."""

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen > VerticalScroll {
        width: 72;
        max-width: 95%;
        height: auto;
        max-height: 90%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "escape,q,question_mark", "dismiss", "Close", id="help.close", tooltip="Close help"
        ),
    ]

    def __init__(self, below: Screen[Any]) -> None:
        super().__init__()
        self.below = below

    def compose(self) -> ComposeResult:
        with VerticalScroll() as scroll:
            scroll.border_title = f"Keys — {self.below.title or 'natbox'}"
            scroll.border_subtitle = "Escape, q or ? closes"
            yield Static(key_table(self.below))
            yield Static(
                "\nTab / Shift+Tab move between fields and tables. "
                "Escape, q or ? closes this help.",
                classes="closing",
            )
        yield KeyBar()  # its own keys, over the stale ones of the screen below
