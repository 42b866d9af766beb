"""Provides StepBar: where the wizard is, on one line (● done/current, ○ ahead)."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static


class StepBar(Static):
    """`● Listen ─ ● Backend ─ ○ Options ─ ○ Preview` with the current step highlighted."""

    DEFAULT_CSS = """
    StepBar {
        height: 1;
        padding: 0 1;
        background: $panel;
    }
    """

    step: reactive[int] = reactive(0)
    """Index of the current step."""

    def __init__(self, steps: list[str], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.steps = steps

    def render(self) -> Text:
        text = Text()
        for i, name in enumerate(self.steps):
            if i:
                text.append(" ─ ", style="dim")
            if i < self.step:
                text.append(f"● {name}", style="green")
            elif i == self.step:
                text.append(f"● {name}", style="bold reverse")
            else:
                text.append(f"○ {name}", style="dim")
        text.append(f"   step {self.step + 1} of {len(self.steps)}", style="dim")
        return text
