"""KeyBar: the screen's keys on one line, in one widget.

Textual's Footer mounts a widget per key and mounts them all again after every change of the
screen's bindings (a focus change, a wizard step), after the next refresh: on the dashboard ~15
widgets to compose, style and lay out each time. KeyBar renders the same keys as one line of text
and is only repainted when the bindings change; a click on a key presses it, as with Footer. (The
dashboard's first frame: ~5 ms sooner in process, within the noise in tmux; #13.)
"""

from __future__ import annotations

from itertools import groupby
from typing import ClassVar, NamedTuple

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
        entries: list[_Entry] = []

        def entry(pairs: list[tuple[Binding, bool]], description: str) -> None:
            text = Text()
            spans: list[tuple[int, int, Binding, bool]] = []
            for binding, enabled in pairs:
                start = text.cell_len
                shown = self.app.get_key_display(binding)
                text.append(shown, key_style if enabled else key_style + dim)
                spans.append((start, text.cell_len, binding, enabled))
            enabled = any(on for _, on in pairs)
            text.append(" " + description, text_style if enabled else text_style + dim)
            kept = any(binding.action in KEPT for binding, _ in pairs)
            entries.append(_Entry(text, spans, kept))

        for group, members in groupby(self.keys(), lambda pair: pair[0].group):
            pairs = list(members)
            if group is not None and len(pairs) > 1:
                entry(pairs, group.description)  # keys of one group share it: `1234 tabs`
            else:
                for pair in pairs:
                    entry([pair], pair[0].description)
        line, self._spans = _lay_out(entries, self.size.width or 1_000)
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


KEPT = frozenset({"back", "help", "quit"})
"""Actions whose keys stay when the line is too narrow for all: the ways out, and help."""


class _Entry(NamedTuple):
    text: Text
    spans: list[tuple[int, int, Binding, bool]]
    """(first cell, end cell, binding, enabled) of each key in `text`."""
    kept: bool


def _lay_out(
    entries: list[_Entry], width: int
) -> tuple[Text, list[tuple[int, int, Binding, bool]]]:
    """The line (` key text  key text`) and where each key is in it. Too narrow for all: the
    first keys that fit, `…`, then the KEPT ones (whole keys only, never one cut in two; nothing
    to click on the `…`)."""
    gap = len(SEPARATOR)

    def length(some: list[_Entry]) -> int:
        return sum(e.text.cell_len for e in some) + gap * max(0, len(some) - 1)

    chosen = entries
    if 1 + length(entries) > width:
        kept = [e for e in entries if e.kept]
        tail = length(kept) + 1 + (gap if kept else 0)  # `…` and its gap before them
        if 1 + tail > width:
            kept, tail = [], 1
        chosen = []
        for e in entries:
            if e.kept and kept:
                continue
            if 1 + length([*chosen, e]) + gap + tail > width:
                break
            chosen.append(e)
        chosen = [*chosen, _Entry(Text("…"), [], False), *kept]
    line = Text(" ", no_wrap=True, end="")
    spans: list[tuple[int, int, Binding, bool]] = []
    for i, e in enumerate(chosen):
        if i:
            line.append(SEPARATOR)
        at = line.cell_len
        spans.extend((at + a, at + b, binding, on) for a, b, binding, on in e.spans)
        line.append_text(e.text)
    return line, spans
