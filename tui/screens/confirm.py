"""Provides ConfirmScreen: a yes/no modal that shows exactly what is about to happen."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from widgets.key_bar import KeyBar


class ConfirmScreen(ModalScreen[bool]):
    """Ask before a change; `y` confirms, `n` or Escape declines. The question names the forward
    with its listen → backend, so the user sees which one."""

    DEFAULT_CSS = """
    ConfirmScreen {
        align: center middle;
    }
    ConfirmScreen > Vertical {
        width: 90%;
        max-width: 110;
        height: auto;
        max-height: 90%;
        border: thick $warning;
        background: $surface;
        padding: 0 1;
    }
    ConfirmScreen #question {
        text-style: bold;
        margin-bottom: 1;
    }
    ConfirmScreen VerticalScroll {
        height: auto;
        max-height: 12;
    }
    ConfirmScreen #detail {
        color: $text-muted;
    }
    ConfirmScreen Horizontal {
        height: auto;
        align-horizontal: left;
        margin-top: 1;
    }
    ConfirmScreen Button {
        margin-right: 2;
        min-width: 0;
        width: auto;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes", tooltip="Go ahead"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no", tooltip="Change nothing"),
    ]

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__()
        self.question = question
        self.detail = detail

    def on_mount(self) -> None:
        # Toasts sit bottom right: the buttons are on the left, and older toasts go.
        self.app.clear_notifications()

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="question", markup=False)
            if self.detail:
                with VerticalScroll():
                    yield Static(self.detail, id="detail", markup=False)
            with Horizontal():
                yield Button("No (n)", id="no", variant="default", compact=True)
                yield Button("Yes (y)", id="yes", variant="warning", compact=True)
        yield KeyBar()  # its own keys, over the stale ones of the screen below

    @on(Button.Pressed, "#yes")
    def _yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#no")
    def _no(self) -> None:
        self.dismiss(False)

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class TextScreen(ModalScreen[None]):
    """Shows text to read or copy (an export); Escape or q closes."""

    DEFAULT_CSS = """
    TextScreen {
        align: center middle;
    }
    TextScreen > VerticalScroll {
        width: 95%;
        max-width: 130;
        height: auto;
        max-height: 90%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "dismiss", "Close", id="text.close", tooltip="Close"),
    ]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.heading = title
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll() as scroll:
            scroll.border_title = self.heading
            scroll.border_subtitle = "Escape closes"
            yield Static(self.text, id="text", markup=False)
        yield KeyBar()
