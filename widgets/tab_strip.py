"""Provides TabStrip: the dashboard's tab labels and the bar under the active one, as one widget.

Textual's TabbedContent is 14 widgets for four tabs (tabs, a scroll container, a bar, a tab per
label, an underline, a switcher, a pane per tab), each mounted and styled before the first frame.
TabStrip draws the same two lines itself; a ContentSwitcher beside it shows the active pane (#13).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.cells import cell_len, set_cell_size
from rich.style import Style
from rich.text import Text
from textual import events
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

GAP = 2
"""Cells between two labels."""


class TabStrip(Widget):
    """`1 Rules  2 Interfaces  3 Health  4 History`, the active label bright with a bar under it;
    a click on a label posts TabStrip.Chosen. Without colour (NO_COLOR) the active label is bold
    and the bar is under it alone."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"tab-strip--active", "tab-strip--bar"}
    DEFAULT_CSS = """
    TabStrip {
        height: 2;
        padding: 0 1;
        color: $text-muted;
    }
    TabStrip > .tab-strip--active {
        color: $text;
        text-style: bold;
    }
    TabStrip > .tab-strip--bar {
        color: $block-cursor-background;
    }
    """

    active: reactive[str] = reactive("")
    """The id of the active tab."""

    class Chosen(Message):
        """A label was clicked."""

        def __init__(self, tab: str) -> None:
            super().__init__()
            self.tab = tab

    def __init__(
        self, tabs: Sequence[tuple[str, str]], *, id: str | None = None, active: str = ""
    ) -> None:
        """`tabs`: (id, label) in order; `active`: the id shown first (the first by default)."""
        super().__init__(id=id)
        self.tabs = list(tabs)
        self.set_reactive(TabStrip.active, active or self.tabs[0][0])

    def _layout(self, width: int) -> list[tuple[str, str, int]]:
        """(id, label as drawn, first cell) of each tab in `width` cells: the labels with GAP
        between them; closer together, then cut evenly (`2 Inte…`) when they do not fit, so every
        tab keeps a label to see and to click."""
        labels = [label for _, label in self.tabs]
        gap = GAP
        if sum(map(cell_len, labels)) + gap * (len(labels) - 1) > width:
            gap = 1
            room = (width - gap * (len(labels) - 1)) // len(labels)
            labels = [
                label if cell_len(label) <= room else set_cell_size(label, max(1, room - 1)) + "…"
                for label in labels
            ]
        layout, x = [], 0
        for (tab, _), label in zip(self.tabs, labels, strict=True):
            layout.append((tab, label, x))
            x += cell_len(label) + gap
        return layout

    def render(self) -> Text:
        bright = self.get_component_rich_style("tab-strip--active", partial=True)
        bar_style = self.get_component_rich_style("tab-strip--bar", partial=True)
        labels = Text(no_wrap=True, overflow="crop", end="")
        bar = Text(no_wrap=True, overflow="crop", end="")
        for tab, label, start in self._layout(self.content_region.width):
            labels.pad_right(start - labels.cell_len)
            bar.pad_right(start - bar.cell_len)
            on = tab == self.active
            labels.append(label, style=bright if on else Style())
            bar.append(("━" if on else " ") * cell_len(label), style=bar_style)
        return Text("\n", no_wrap=True, overflow="crop", end="").join([labels, bar])

    def on_click(self, event: events.Click) -> None:
        x = event.x - self.styles.padding.left
        for tab, label, start in self._layout(self.content_region.width):
            if start <= x < start + cell_len(label):
                event.stop()
                self.post_message(self.Chosen(tab))
                return


__all__ = ["TabStrip"]
