"""KeyBar shows the keys that Textual's Footer showed (the focused widget's, the screen's, the
app's, one per action, groups under one description, disabled ones dim), follows focus changes,
and a click on a key presses it."""

from __future__ import annotations

from typing import ClassVar

import pytest
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Input

from widgets.key_bar import KeyBar

TABS = Binding.Group("Tabs")


class Box(Input):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+t", "typed", "Typed")]

    def action_typed(self) -> None:
        self.app.pressed.append("typed")  # type: ignore[attr-defined]


class Keys(App[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "add", "Add"),
        Binding("plus", "add", "Add too"),  # the same action: shown once, by its first key
        Binding("d", "remove", "Remove"),
        Binding("h", "hidden", "Hidden", show=False),
        Binding("1", "tab(1)", "One", group=TABS, key_display="1"),
        Binding("2", "tab(2)", "Two", group=TABS, key_display="2"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.pressed: list[str] = []
        self.can_remove: bool = True

    def compose(self) -> ComposeResult:
        yield Box()
        yield KeyBar()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "remove" and not self.can_remove:
            return None  # shown, dim
        return True

    def action_add(self) -> None:
        self.pressed.append("add")

    def action_remove(self) -> None:
        self.pressed.append("remove")


def bar_text(app: Keys) -> str:
    return str(app.query_one(KeyBar).render())


async def test_it_shows_the_keys_as_footer_did_and_follows_focus() -> None:
    app = Keys()
    async with app.run_test(size=(100, 5)) as pilot:
        app.set_focus(None)
        await pilot.pause()
        text = bar_text(app)
        assert "a Add  d Remove  12 Tabs  q Quit" in text
        assert "Hidden" not in text and "Add too" not in text
        assert "Typed" not in text  # the box's key counts only while it has the focus
        app.query_one(Box).focus()
        await pilot.pause()
        assert "^t Typed" in bar_text(app)


async def test_a_click_presses_the_key_and_a_disabled_key_dims_and_rings() -> None:
    app = Keys()
    async with app.run_test(size=(100, 5)) as pilot:
        app.set_focus(None)
        await pilot.pause()
        bar = app.query_one(KeyBar)
        column = bar_text(app).index("d Remove")
        assert await pilot.click(KeyBar, offset=(column, 0))
        assert app.pressed == ["remove"]
        assert await pilot.click(KeyBar, offset=(column + 3, 0))  # its description: no key
        assert app.pressed == ["remove"]

        app.can_remove = False
        app.screen.refresh_bindings()
        await pilot.pause()
        hit = bar.key_at(column)
        assert hit is not None and hit[0].action == "remove" and hit[1] is False
        assert await pilot.click(KeyBar, offset=(column, 0))
        assert app.pressed == ["remove"]  # not pressed again
        line = bar.render()
        dims = [span for span in line.spans if span.start == column and "dim" in str(span.style)]
        assert dims, "the disabled key is drawn dim"


@pytest.mark.parametrize("width", range(8, 33))  # the whole line is 33 wide
async def test_keys_that_do_not_fit_give_way_to_an_ellipsis_and_the_ways_out_stay(
    width: int,
) -> None:
    """Whole keys only (never `c All flow…`), then `…`, then the keys that lead out (q Quit,
    esc Back, ? Help) while they fit; a click on the `…` presses nothing (it pressed the first
    key cut off, which could be q Quit)."""
    app = Keys()
    async with app.run_test(size=(width, 5)) as pilot:
        app.set_focus(None)
        await pilot.pause()
        bar = app.query_one(KeyBar)
        drawn = bar.render_line(0).text.rstrip()
        assert "…" in drawn and len(drawn) <= width, drawn
        cut = drawn.index("…")
        left, right = drawn[:cut].rstrip(), drawn[cut + 1 :].strip()
        assert left in ["", " a Add", " a Add  d Remove", " a Add  d Remove  12 Tabs"], drawn
        assert right == ("q Quit" if width >= 10 else ""), drawn
        assert bar.key_at(cut) is None
        assert await pilot.click(KeyBar, offset=(cut, 0))
        assert app.pressed == [] and app.is_running
