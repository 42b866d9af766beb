"""Provides FlowTable: a Line-API view of conntrack flows that renders only the rows on screen.

100k flows cost nothing until shown: each visible row is formatted when painted, and replacing the
rows on a refresh is an assignment. The cursor is a row index the owner keeps on the same flow key.
"""

from __future__ import annotations

from typing import ClassVar

from rich.segment import Segment
from textual.binding import Binding, BindingType
from textual.events import Click
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from natbox.conntrack import Flow, ForwardIndex

WIDE = 128
"""From this width on, rows show the full path (listen and SNAT addresses) and the forward column."""


def human_bytes(n: int) -> str:
    """1234567 -> 1.2M (fits 6 columns)."""
    value = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if value < 1000 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "" or value >= 100 else f"{value:.1f}{unit}"
        value /= 1000
    return str(n)


def compact_path(flow: Flow) -> str:
    """client → :listen-port => backend: the translation in as few columns as it takes."""
    o = flow.orig
    client = f"{o.src}:{o.sport}" if o.sport is not None else o.src
    if not (flow.dnat or flow.snat):
        return f"{client} → {o.dst}:{o.dport}" if o.dport is not None else f"{client} → {o.dst}"
    r = flow.reply
    backend = f"{r.src}:{r.sport}" if r.sport is not None else r.src
    return f"{client} →:{o.dport} => {backend}"


class FlowTable(ScrollView, can_focus=True):
    """The rows of the conntrack viewer; the header is a separate widget owned by the screen."""

    DEFAULT_CSS = """
    FlowTable {
        height: 1fr;
        scrollbar-size-horizontal: 0;
        scrollbar-size-vertical: 1;
    }
    FlowTable > .flow-table--cursor {
        background: $accent 40%;
        text-style: bold;
    }
    FlowTable > .flow-table--nat {
        color: $warning;
    }
    FlowTable > .flow-table--dim {
        color: $text-muted;
    }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "flow-table--cursor",
        "flow-table--nat",
        "flow-table--dim",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
    ]

    cursor: reactive[int] = reactive(0)
    """Index of the highlighted row in the current rows."""

    class Highlighted(Message):
        """The cursor moved to another flow (or the rows under it changed)."""

        def __init__(self, flow: Flow | None) -> None:
            self.flow = flow
            super().__init__()

    def __init__(
        self, *, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._rows: list[Flow] = []
        self._owner = ForwardIndex()

    @property
    def rows(self) -> list[Flow]:
        """The flows shown, in order."""
        return self._rows

    @property
    def current(self) -> Flow | None:
        """The flow under the cursor."""
        return self._rows[self.cursor] if 0 <= self.cursor < len(self._rows) else None

    def set_rows(self, rows: list[Flow], owner: ForwardIndex, cursor: int = 0) -> None:
        """Show new rows; `cursor` is where the previously highlighted flow now is."""
        self._rows = rows
        self._owner = owner
        self.virtual_size = Size(self.size.width, len(rows))
        self.cursor = max(0, min(cursor, len(rows) - 1))
        self._keep_cursor_visible()
        self.refresh()
        self.post_message(self.Highlighted(self.current))

    def header(self, width: int) -> str:
        """The column titles for this width (the screen shows them above the rows)."""
        if width >= WIDE:
            path = "FLOW  client → listen => snat source → backend"
            return f"{'PROTO':<6}{'STATE':<12}{'TTL':>6}  {path:<{width - 56}}{'PKTS':>8}{'BYTES':>8}  {'FORWARD':<12}"
        return f"{'PROTO':<6}{'STATE':<12}{'TTL':>6}  {'client →:port => backend':<{width - 34}}{'BYTES':>8}"

    def render_line(self, y: int) -> Strip:
        """One row, formatted only now that it is on screen."""
        index = int(self.scroll_offset.y) + y
        width = self.scrollable_content_region.width
        if index >= len(self._rows):
            return Strip.blank(width, self.rich_style)
        flow = self._rows[index]
        base = self.rich_style
        if index == self.cursor:
            base = base + self.get_component_rich_style("flow-table--cursor")
        nat = base + self.get_component_rich_style("flow-table--nat", partial=True)
        dim = base + self.get_component_rich_style("flow-table--dim", partial=True)
        state = (flow.state or "-")[:11]
        if width >= WIDE:
            path, pwidth = flow.path(), width - 56
            head = f"{flow.proto[:5]:<6}{state:<12}{flow.timeout:>6}  "
            counters = f"{flow.packets:>8}{human_bytes(flow.bytes):>8}  "
            tail = f"{(self._owner(flow) or '')[:12]:<12}"
        else:
            path, pwidth = compact_path(flow), width - 34
            head = f"{flow.proto[:5]:<6}{state:<12}{flow.timeout:>6}  "
            counters = f"{human_bytes(flow.bytes):>8}"
            tail = ""
        path = path[:pwidth].ljust(pwidth)
        plain, _, translated = path.partition("=>")
        segments = [Segment(head, base), Segment(plain, base)]
        if translated:
            segments.append(Segment("=>" + translated, nat))
        segments += [Segment(counters, dim), Segment(tail, base)]
        return Strip(segments).adjust_cell_length(width, base)

    def _keep_cursor_visible(self) -> None:
        top = int(self.scroll_offset.y)
        height = max(1, self.size.height)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False)

    def watch_cursor(self, old: int, new: int) -> None:
        self._keep_cursor_visible()
        self.refresh()

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self._rows))

    def on_click(self, event: Click) -> None:
        target = int(self.scroll_offset.y) + event.y
        if 0 <= target < len(self._rows):
            self.cursor = target
            self.post_message(self.Highlighted(self.current))

    def action_cursor(self, delta: int) -> None:
        if self._rows:
            self.cursor = max(0, min(len(self._rows) - 1, self.cursor + delta))
            self.post_message(self.Highlighted(self.current))

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(1, self.size.height - 1))

    def action_jump(self, where: int) -> None:
        if self._rows:
            self.cursor = where if where >= 0 else len(self._rows) - 1
            self.post_message(self.Highlighted(self.current))
