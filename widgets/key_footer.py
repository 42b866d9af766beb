"""Provides KeyFooter: Textual's Footer, rebuilt once per burst of binding changes."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


class KeyFooter(Footer):
    """A Footer that rebuilds its keys once for any number of binding changes before the next
    refresh.

    Footer recomposes (removes and mounts one widget per key) after every change of the screen's
    bindings; a screen's start (its mount, the focus, the app's focus, reactives with bindings)
    changes them several times in a row: five rebuilds of the dashboard's ten keys, ~80 ms of its
    first second on the lived-in box (#13). Here a change while a rebuild is pending asks for
    nothing more: the pending one reads the bindings as they are then. Relies on Footer's
    `_bindings_ready` (Textual is pinned)."""

    _rebuild_pending = False

    def bindings_changed(self, screen: Screen[object]) -> None:
        self._bindings_ready = True
        if not screen.app.app_focus:
            return
        if self.is_attached and screen is self.screen and not self._rebuild_pending:
            self._rebuild_pending = True
            self.call_after_refresh(self._rebuild)

    async def _rebuild(self) -> None:
        self._rebuild_pending = False
        await self.recompose()


__all__ = ["KeyFooter"]
