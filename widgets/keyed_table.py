"""Provides KeyedTable: a DataTable that is brought up to date by row key, never cleared and refilled,
so the cursor, the selection and the user's place survive every refresh."""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual._types import SegmentLines
from textual.widgets import DataTable
from textual.widgets._data_table import RowKey
from textual.widgets.data_table import CellType

from natbox.model import Forward

_JOIN = Text()
REBUILD_AFTER = 200
"""Rows to remove in one sync beyond which the table is rebuilt instead."""
Cell = str | Text
Row = tuple[str, Sequence[Cell]]
"""(row key, cells in column order)."""


def _same(a: object, b: object) -> bool:
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain == b.plain and a.spans == b.spans and a.style == b.style
    return type(a) is type(b) and a == b


class KeyedTable(DataTable[Cell]):
    """`sync(rows)` changes only what differs: remove_row, update_cell, add_row, then reorders."""

    updates = 0
    """Cells, rows added and rows removed by the last sync() (tests use it to see a no-op refresh)."""

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor."""
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return str(row_key.value)

    def keys(self) -> list[str]:
        """Row keys in display order."""
        return [str(row.key.value) for row in self.ordered_rows]

    def sync(self, rows: Sequence[Row]) -> int:
        """Make the table show `rows` (in this order); returns how many cells and rows changed."""
        keep = self.cursor_key
        keep_index = self.cursor_row
        wanted = {key: cells for key, cells in rows}
        changes = 0
        gone = [k for k in self.keys() if k not in wanted]
        if len(gone) > REBUILD_AFTER:
            # DataTable.remove_row() costs O(rows): a filter that hides thousands of rows is cheaper
            # as one rebuild. The cursor still stays on its row by key (below).
            self.clear()
            changes += len(gone)
        for key in gone if len(gone) <= REBUILD_AFTER else ():
            self.remove_row(key)
            changes += 1
        columns = [c.key for c in self.ordered_columns]
        for key, cells in rows:
            if key in self.rows:
                old = self.get_row(key)
                for column, old_cell, new_cell in zip(columns, old, cells, strict=False):
                    if not _same(old_cell, new_cell):
                        # Only a wider cell re-measures (a narrower one would measure the column).
                        wider = cell_len(str(new_cell)) > self.columns[column].content_width
                        self.update_cell(key, column, new_cell, update_width=wider)
                        changes += 1
            else:
                self.add_row(*cells, key=key)
                changes += 1
        order = [key for key, _ in rows]
        if self.keys() != order:
            self._reorder(order)
        if keep is not None and keep in wanted:
            index = self.get_row_index(keep)
            if index != self.cursor_row:
                self.move_cursor(row=index, scroll=False)
        elif keep is not None and self.row_count:
            # The row under the cursor went: stay at the same height, not at the top.
            self.move_cursor(row=min(keep_index, self.row_count - 1), scroll=False)
        self.updates = changes
        self.measure_now()
        return changes

    def measure_now(self) -> None:
        """Measure new rows and changed cells now, as DataTable does when idle: a table filled while
        the app is busy (its first frame, during the first reads) would otherwise be painted blank
        until the message queue runs dry, a frame or more later (#13)."""
        if not (self._require_update_dimensions or self._updated_cells):
            return
        if self._updated_cells:
            updated, self._updated_cells = self._updated_cells, set()
            self._update_column_widths(updated)
        if self._require_update_dimensions:
            self._require_update_dimensions = False
            new_rows, self._new_rows = self._new_rows, set()
            self._update_dimensions(new_rows)
        self._update_count += 1
        self.refresh(layout=True)

    async def _on_idle(self, event: events.Idle) -> None:
        # DataTable measures new rows' widths when idle but keeps lines it rendered before with
        # the old widths (a squashed cursor row in the screenshots): new widths, new render keys.
        pending = self._require_update_dimensions or bool(self._updated_cells)
        await super()._on_idle(event)
        if pending:
            self._update_count += 1
            self.refresh(layout=True)  # an auto-height table grows with its new rows

    def _render_cell(
        self,
        row_index: int,
        column_index: int,
        base_style: Style,
        width: int,
        cursor: bool = False,
        hover: bool = False,
    ) -> SegmentLines:
        """DataTable's cell, without its Rich layout machinery for a one-line text cell (#13).

        DataTable renders each cell as `Styled(Padding(text))` through `Console.render_lines`. A text
        cell in a one-line row is the text cut to the cell, padded, and styled: this makes those
        segments directly, the same character for character and style for style (a test compares
        them with DataTable's; the snapshots stay). 8-12% less of the dashboard's first frame in
        process (in-process A/B, 3 x 15 rounds). Any other cell goes to DataTable.
        """
        row_key = (
            self._header_row_key if row_index == -1 else self._row_locations.get_key(row_index)
        )
        column_key = self._column_locations.get_key(column_index)
        if row_key is None or column_key is None:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        key = (
            row_key,
            column_key,
            base_style,
            cursor,
            hover,
            self._show_hover_cursor,
            self._update_count,
            self._pseudo_class_state,
        )
        cache = self._cell_render_cache
        if key in cache:
            return cache[key]
        line = self._one_line_cell(row_index, column_index, base_style, width, cursor, hover)
        if line is None:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        cache[key] = [line]
        return cache[key]

    def _one_line_cell(
        self,
        row_index: int,
        column_index: int,
        base_style: Style,
        width: int,
        cursor: bool,
        hover: bool,
    ) -> list[Segment] | None:
        """A one-line text cell's segments, as Styled(Padding(text)) renders them; None for any
        other cell (a row label, a fixed cell, a taller row; a justified, wrapping, multi-line or
        never-cut text, or one with an end)."""
        if column_index == -1 or row_index < -1 or self.fixed_rows or self.fixed_columns:
            return None
        header = row_index == -1
        if header:
            height = self.header_height
        else:
            row = self.rows.get(self._row_locations.get_key(row_index))  # type: ignore[arg-type]
            height = row.height if row is not None else 0
        pad = self.cell_padding
        inner = width - 2 * pad
        if height != 1 or inner <= 0:
            return None
        cell = self._get_row_renderables(row_index).cells[column_index]
        options = self.app.console_options
        if (
            not isinstance(cell, Text)
            or (cell.justify or options.justify) not in (None, "default")
            or cell.no_wrap is False  # DataTable wraps it, then shows the first line
            or cell.overflow == "ignore"
            or cell.end not in ("", "\n")  # DataTable draws the end too
        ):
            return None
        plain = cell.plain
        if "\n" in plain or "\t" in plain:
            return None
        if cell.cell_len > inner:
            cell = cell.copy()
            cell.truncate(inner, overflow=cell.overflow or options.overflow or "fold")
        console = self.app.console
        # Text.render drops the text's own style when it has no spans; Rich's path joins the lines
        # first, which makes that style a span: so here.
        segments = [Segment(" " * pad), *_JOIN.join((cell,)).render(console)]
        used = cell.cell_len
        segments.append(Segment(" " * (inner - used + pad)))
        component, post = self._get_styles_to_render_cell(
            header,
            False,
            False,
            hover,
            cursor,
            self.show_cursor,
            self._show_hover_cursor,
            self.cursor_foreground_priority == "css",
            self.cursor_background_priority == "css",
        )
        pre = base_style + Style.from_meta({"row": row_index, "column": column_index}) + component
        return list(Segment.apply_style(segments, pre, post))

    def _reorder(self, order: list[str]) -> None:
        # DataTable.sort() sorts by cell values; the order here is by key (e.g. a rule inserted in the
        # middle of a chain). Same mechanism as sort(), keyed on the row key (Textual is pinned).
        from textual._two_way_dict import TwoWayDict

        self._row_locations = TwoWayDict({RowKey(key): index for index, key in enumerate(order)})
        self._update_count += 1
        self.refresh()


def path_text(fwd: Forward) -> str:
    """`listen → backend`, as the tables and dialogs name a forward."""
    return f"{fwd.listen} → {fwd.backend}"


__all__ = ["Cell", "CellType", "KeyedTable", "Row", "path_text"]
