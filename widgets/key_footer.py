"""Provides KeyFooter: Textual's Footer, rebuilt once per burst of binding changes."""

from __future__ import annotations

import time

from textual.screen import Screen
from textual.widgets import Footer

LOST_AFTER = 1.0
"""A rebuild asked for this long ago and not done is taken as lost: the next change asks again."""


class KeyFooter(Footer):
    """A Footer that rebuilds its keys once for any number of binding changes before the next
    refresh.

    Footer recomposes (removes and mounts one widget per key) after every change of the screen's
    bindings; a screen's start (its mount, the focus, the app's focus, reactives with bindings)
    changes them several times in a row: five rebuilds of the dashboard's ten keys, 83-104 ms of
    its first second in a headless run (#13). Here a change while a rebuild is pending asks for
    nothing more: the pending one reads the bindings as they are then. The rebuild runs after the
    next refresh of the screen in front, and is lost if that screen goes before it: a pending
    rebuild older than LOST_AFTER no longer holds the next one back. Relies on Footer's
    `_bindings_ready` (Textual is pinned)."""

    _asked_at: float | None = None

    def bindings_changed(self, screen: Screen[object]) -> None:
        self._bindings_ready = True
        if not screen.app.app_focus:
            return
        if not (self.is_attached and screen is self.screen):
            return
        now = time.monotonic()
        if self._asked_at is None or now - self._asked_at > LOST_AFTER:
            self._asked_at = now
            self.call_after_refresh(self._rebuild)

    async def _rebuild(self) -> None:
        self._asked_at = None
        await self.recompose()


__all__ = ["KeyFooter"]
