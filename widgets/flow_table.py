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
"""From this width on, rows show packets, bytes and the forward too."""

STATES = {
    "ESTABLISHED": "ESTAB",
    "TIME_WAIT": "TIMEW",
    "SYN_SENT": "SYNSN",
    "SYN_RECV": "SYNRC",
    "FIN_WAIT": "FINWT",
    "CLOSE_WAIT": "CLSWT",
    "LAST_ACK": "LSACK",
}
"""TCP states in five columns (narrow rows)."""

SORT_TITLES = {"timeout": "TTL", "bytes": "BYTES", "packets": "PKTS", "age": "AGE"}


def human_bytes(n: int) -> str:
    """1234567 -> 1.2M (fits 6 columns)."""
    value = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if value < 1000 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "" or value >= 100 else f"{value:.1f}{unit}"
        value /= 1000
    return str(n)


def _hp(ip: str, port: int | None) -> str:
    if port is None:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _near(ip: str, prev: str) -> str:
    """`ip` shortened to what differs from `prev` in the same /24 (10.0.2.50 after 10.0.2.40: .50)."""
    if ":" in ip or ":" in prev:
        return ip
    head, _, last = ip.rpartition(".")
    return "." + last if head and prev.rpartition(".")[0] == head else ip


def compact_path(flow: Flow, width: int = 10_000) -> str:
    """client → listen => snat source → backend in at most `width` columns.

    Both tuples always: first in full; then without the SNAT source's port where NAT kept the
    client's; then addresses in the /24 of the one before them as `.50`; only then cut (with `…`).
    """
    o = flow.orig
    client, listen = _hp(o.src, o.sport), _hp(o.dst, o.dport)
    if not (flow.dnat or flow.snat):
        text = f"{client} → {listen}"
        return text if len(text) <= width else text[: max(0, width - 1)] + "…"
    r = flow.reply  # the server sees the reply reversed: from reply.dst to reply.src
    snat, backend = _hp(r.dst, r.dport), _hp(r.src, r.sport)
    text = f"{client} → {listen} => {snat} → {backend}"
    if len(text) <= width:
        return text
    if r.dport == o.sport:
        snat = f"[{r.dst}]" if ":" in r.dst else r.dst
        text = f"{client} → {listen} => {snat} → {backend}"
        if len(text) <= width:
            return text
    listen = _hp(_near(o.dst, o.src), o.dport)
    backend = _hp(_near(r.src, r.dst), r.sport)
    text = f"{client} → {listen} => {snat} → {backend}"
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


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
        self._sort: str | None = None
        self._descending = False

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

    def set_sort(self, sort: str | None, descending: bool) -> None:
        """Which column the rows are sorted by (it is shown, with ▼ or ▲), and which way."""
        self._sort, self._descending = sort, descending
        self.refresh()

    def _title(self, key: str, title: str) -> str:
        if key != self._sort:
            return title
        return title + ("▼" if self._descending else "▲")

    def _extra(self) -> str:
        """The one counter column of a narrow row: what the rows are sorted by, else bytes."""
        return self._sort if self._sort in ("packets", "age") else "bytes"

    def header(self, width: int) -> str:
        """The column titles for this width (the screen shows them above the rows)."""
        ttl = self._title("timeout", "TTL")
        if width >= WIDE:
            path = "FLOW  client → listen => snat source → backend"
            age = f"{self._title('age', 'AGE'):>8}" if self._sort == "age" else ""
            pwidth = width - 56 - len(age)
            return (
                f"{'PROTO':<6}{'STATE':<12}{ttl:>6}  {path:<{pwidth}}"
                f"{self._title('packets', 'PKTS'):>8}{self._title('bytes', 'BYTES'):>8}{age}"
                f"  {'FORWARD':<12}"
            )
        extra = self._extra()
        path = "client → listen => snat → backend"
        return (
            f"{'PROTO':<6}{'STATE':<6}{ttl:>6} {path:<{width - 27}}"
            f"{self._title(extra, SORT_TITLES[extra]):>8}"
        )

    def _counter(self, flow: Flow, key: str) -> str:
        if key == "packets":
            return str(flow.packets)
        if key == "age":
            age = flow.age
            return "-" if age is None else f"{age}s"
        return human_bytes(flow.bytes)

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
        if width >= WIDE:
            age = f"{self._counter(flow, 'age'):>8}" if self._sort == "age" else ""
            pwidth = width - 56 - len(age)
            head = f"{flow.proto[:5]:<6}{(flow.state or '-')[:11]:<12}{flow.timeout:>6}  "
            counters = f"{flow.packets:>8}{human_bytes(flow.bytes):>8}{age}  "
            tail = f"{(self._owner(flow) or '')[:12]:<12}"
        else:
            pwidth = width - 27
            state = flow.state or "-"
            head = f"{flow.proto[:5]:<6}{STATES.get(state, state[:5]):<6}{flow.timeout:>6} "
            counters = f"{self._counter(flow, self._extra()):>8}"
            tail = ""
        path = compact_path(flow, pwidth).ljust(pwidth)
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
