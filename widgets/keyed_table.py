"""Provides KeyedTable: a DataTable that is brought up to date by row key, never cleared and refilled,
so the cursor, the selection and the user's place survive every refresh."""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.widgets import DataTable
from textual.widgets._data_table import RowKey
from textual.widgets.data_table import CellType

from natbox.model import Forward

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
