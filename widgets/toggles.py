"""Provides radio buttons and check boxes whose glyph carries the state without colour:
`(•)`/`( )` and `[x]`/`[ ]` (Textual's own draw the same glyph either way and differ by colour only,
which a monochrome terminal or NO_COLOR=1 cannot show)."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Checkbox, RadioButton


class StateRadioButton(RadioButton):
    """A radio button drawn `(•)` when chosen and `( )` when not."""

    @property
    def _button(self) -> Content:
        style = self.get_visual_style("toggle--button")
        return Content.assemble("(", ("•" if self.value else " ", style), ")")


class StateCheckbox(Checkbox):
    """A check box drawn `[x]` when ticked and `[ ]` when not."""

    @property
    def _button(self) -> Content:
        style = self.get_visual_style("toggle--button")
        return Content.assemble("[", ("x" if self.value else " ", style), "]")
