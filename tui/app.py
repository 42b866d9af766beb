"""Provides NatboxApp and make_app(), used by the CLI, tests, screenshots and the demo."""

from __future__ import annotations

from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Footer, Header, Static

from natbox import __version__

PLACEHOLDER = (
    f"natbox {__version__}\n\n"
    "The dashboard is on its way. Until then the engine is on the command line:\n\n"
    "  natbox plan 192.168.1.30:1234 10.0.2.50:80 --snat 10.0.2.40\n"
    "  natbox --help"
)


class NatboxApp(App[int]):
    """The natbox dashboard."""

    CSS_PATH = "styles/app.tcss"
    TITLE = "natbox"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit", id="quit", tooltip="Leave natbox"),
    ]

    def compose(self) -> ComposeResult:
        yield Header(icon="⇄")
        yield Static(PLACEHOLDER, id="placeholder")
        yield Footer()


def make_app() -> NatboxApp:
    """Build the app; tests and screenshots pass their fakes here as the app grows."""
    return NatboxApp()


def run() -> int:
    """Run the dashboard in this terminal."""
    make_app().run()
    return 0
