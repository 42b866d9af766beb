"""The floor under the dashboard's first screen: an empty Textual app that shows one line (run by
benchmarks.lived_in in tmux, timed until the line is on screen, like the dashboard)."""

from textual.app import App, ComposeResult
from textual.widgets import Static


class Empty(App[None]):
    def compose(self) -> ComposeResult:
        yield Static("empty textual app: first frame")


if __name__ == "__main__":
    Empty().run()
