"""Provides FilterBox: the dashboard's filter line, an Input whose key line says what Enter, Esc and
Tab do there (a bare Input showed none of them: the key line read only `/ Filter`)."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Input


class FilterBox(Input):
    """Enter: done (the filter stays, the keys go back to the forwards); Esc: cleared (posts
    FilterBox.Cleared); Tab: to the forwards, as on the screen."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "submit", "Done", tooltip="Keep the filter; the keys go to the forwards"),
        Binding("escape", "clear", "Clear", tooltip="Clear the filter and close it"),
        Binding("tab", "screen.switch_focus", "Forwards", tooltip="The keys go to the forwards"),
    ]

    class Cleared(Message):
        """Esc in the box."""

    def action_clear(self) -> None:
        self.post_message(self.Cleared())


__all__ = ["FilterBox"]
