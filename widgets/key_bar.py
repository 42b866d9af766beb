"""KeyBar: the screen's keys on one line, in one widget.

Textual's Footer mounts a widget per key and mounts them all again after every change of the
screen's bindings (a focus change, a wizard step), after the next refresh: on the dashboard ~15
widgets to compose, style and lay out each time. KeyBar renders the same keys as one line of text
and is only repainted when the bindings change; a click on a key presses it, as with Footer. (The
dashboard's first frame: ~5 ms sooner in process, within the noise in tmux; #13.)
"""

from __future__ import annotations

from itertools import groupby
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.screen import Screen
from textual.widget import Widget

SEPARATOR = "  "
"""Between two keys: two spaces, so that `a add  d remove` reads as two keys without colours
(NO_COLOR=1)."""


class KeyBar(Widget, can_focus=False):
    """The keys the focused widget, the screen and the app answer to (those with `show`), as
    `key description` pairs; keys of a disabled action dim. Keys that do not fit are cut."""

    ALLOW_SELECT = False
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "key-bar--key",
        "key-bar--description",
        "key-bar--disabled",
    }
    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
    }
    KeyBar > .key-bar--key {
        color: $footer-key-foreground;
        background: $footer-key-background;
        text-style: bold;
    }
    KeyBar > .key-bar--description {
        color: $footer-description-foreground;
        background: $footer-description-background;
    }
    KeyBar > .key-bar--disabled {
        text-style: dim;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._spans: list[tuple[int, int, Binding, bool]] = []
        """(first cell, end cell, binding, enabled) of each key drawn: what a click presses."""

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen[object]) -> None:
        if screen is self.screen:
            self.refresh()

    def keys(self) -> list[tuple[Binding, bool]]:
        """The bindings shown, in order: one per action (its first key), with whether it is
        enabled."""
        shown: dict[str, tuple[Binding, bool]] = {}
        for active in self.screen.active_bindings.values():
            binding = active.binding
            if binding.show and binding.action not in shown:
                shown[binding.action] = (binding, active.enabled)
        return list(shown.values())

    def render(self) -> Text:
        key_style = self.get_component_rich_style("key-bar--key", partial=True)
        text_style = self.get_component_rich_style("key-bar--description", partial=True)
        dim = self.get_component_rich_style("key-bar--disabled", partial=True)
        line = Text(" ", no_wrap=True, overflow="ellipsis", end="")
        spans: list[tuple[int, int, Binding, bool]] = []

        def add(binding: Binding, enabled: bool, description: str) -> None:
            start = line.cell_len
            line.append(
                self.app.get_key_display(binding), key_style if enabled else key_style + dim
            )
            spans.append((start, line.cell_len, binding, enabled))
            if description:
                line.append(" " + description, text_style if enabled else text_style + dim)

        for group, members in groupby(self.keys(), lambda pair: pair[0].group):
            pairs = list(members)
            if group is not None and len(pairs) > 1:
                # Keys of one group share its description: `1234 tabs`.
                for binding, enabled in pairs:
                    add(binding, enabled, "")
                line.append(" " + group.description + SEPARATOR, text_style)
            else:
                for binding, enabled in pairs:
                    add(binding, enabled, binding.description)
                    line.append(SEPARATOR)
        self._spans = spans
        if self.size.width and line.cell_len > self.size.width:
            line.truncate(self.size.width, overflow="ellipsis")
        return line

    def key_at(self, x: int) -> tuple[Binding, bool] | None:
        """The binding whose key is drawn at cell `x` of the bar (and whether it is enabled)."""
        for start, end, binding, enabled in self._spans:
            if start <= x < end:
                return binding, enabled
        return None

    def on_mouse_move(self, event: events.MouseMove) -> None:
        hit = self.key_at(event.x)
        self.tooltip = (hit[0].tooltip or hit[0].description) if hit else None

    def on_mouse_down(self, event: events.MouseDown) -> None:
        hit = self.key_at(event.x)
        if hit is None:
            return
        binding, enabled = hit
        if enabled:
            self.app.simulate_key(binding.key)
        else:
            self.app.bell()
