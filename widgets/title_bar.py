"""Provides TitleBar: a screen's top line, an icon and the title, as Textual's Header draws them.

Header is four widgets (the bar, the icon, the title, the clock's space) and four watchers, each
mounted and styled before the first frame; TitleBar is one (#13).
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import events
from textual.reactive import reactive
from textual.widget import Widget

ICON_CELLS = 8
"""The icon's cells at the left (Header's HeaderIcon)."""
RIGHT_CELLS = 10
"""Blank cells at the right (Header's clock space): the title is centred between the two."""


class TitleBar(Widget):
    """`≡      natbox — ? keys · ctrl+p commands`: the title centred, the sub-title dim; a click on
    the icon opens the command palette. Without a title given, it shows the screen's title and
    sub-title, and follows them (the viewer's `12 of 100000 flows`)."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"title-bar--icon-hover"}
    DEFAULT_CSS = """
    TitleBar {
        dock: top;
        width: 100%;
        height: 1;
        background: $panel;
        color: $foreground;
    }
    TitleBar > .title-bar--icon-hover {
        background: $foreground 10%;
    }
    """

    icon_hover: reactive[bool] = reactive(False)
    """Whether the pointer is on the icon (it is lit, and its tooltip says what a click does)."""

    def __init__(self, title: str | None = None, sub_title: str = "", *, icon: str = "≡") -> None:
        super().__init__()
        self.title, self.sub_title, self.icon = title, sub_title, icon

    def on_mount(self) -> None:
        if self.title is None:
            self.watch(self.screen, "title", self._retitle, init=False)
            self.watch(self.screen, "sub_title", self._retitle, init=False)

    def _retitle(self, _: object) -> None:
        self.refresh()

    def _heading(self) -> tuple[str, str]:
        if self.title is not None:
            return self.title, self.sub_title
        screen = self.screen
        title = screen.title if screen.title is not None else self.app.title
        sub_title = screen.sub_title if screen.sub_title is not None else self.app.sub_title
        return title, sub_title

    def render(self) -> Text:
        title, sub_title = self._heading()
        heading = Text(title, no_wrap=True, overflow="ellipsis", end="")
        if sub_title:
            heading.append(" — ", style="dim")
            heading.append(sub_title, style="dim")
        space = max(0, self.size.width - ICON_CELLS - RIGHT_CELLS)
        heading.truncate(space, overflow="ellipsis")
        left = (space - heading.cell_len) // 2
        icon_style = self.get_component_rich_style("title-bar--icon-hover", partial=True)
        line = Text(no_wrap=True, end="")
        line.append(f" {self.icon}".ljust(ICON_CELLS), style=icon_style if self.icon_hover else "")
        line.append(" " * left)
        line.append_text(heading)
        return line

    def watch_icon_hover(self, hover: bool) -> None:
        self.tooltip = "Open the command palette" if hover else None

    def on_mouse_move(self, event: events.MouseMove) -> None:
        self.icon_hover = event.x < ICON_CELLS

    def on_leave(self) -> None:
        self.icon_hover = False

    async def on_click(self, event: events.Click) -> None:
        if event.x < ICON_CELLS:
            event.stop()
            await self.run_action("app.command_palette")


__all__ = ["TitleBar"]
