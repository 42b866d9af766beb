"""Provides `paused()` and `start_up_over()`: Python's cycle collector held off by several parties at
once (the start-up, the conntrack readers' threads) and turned on again only when none holds it.

Each reader used to save gc's state and restore it itself: a reader that saved it while the start-up
held it off, and ended after the start-up turned it on, turned it off for good; two readers could do
the same to each other. Here one count, under a lock, decides.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holds = 0
_on_after = False
"""Whether gc is turned on when the last hold ends (it was on when the first began, or the start-up
ended meanwhile)."""


def hold_for_start_up() -> None:
    """Off from the start of the process (natbox.__main__) until start_up_over(): the imports and the
    first screen make long-lived objects (modules, classes, styles), and collecting among them cost
    10-20% of the dashboard's first frame (#13)."""
    gc.disable()


def start_up_over() -> None:
    """The start-up is over (a command line parsed, the dashboard's first frame out): gc on, now or
    when the last reader ends. What the start-up made is frozen first (gc.freeze): the first
    collection would otherwise walk all ~70k of its objects at once, a ~22 ms pause just after the
    first frame, for ~4,600 objects of garbage, a few hundred KB that stay."""
    global _on_after
    with _lock:
        if gc.isenabled():
            return
        if _holds:
            _on_after = True
            return
        gc.freeze()
        gc.enable()


@contextmanager
def paused() -> Iterator[None]:
    """No collection inside (a bulk build of 100k objects that form no cycles: 4x faster); gc is on
    again afterwards if it was on before this or any other hold began, or the start-up ended."""
    global _holds, _on_after
    with _lock:
        if not _holds:
            _on_after = gc.isenabled()
        _holds += 1
        gc.disable()
    try:
        yield
    finally:
        with _lock:
            _holds -= 1
            if not _holds and _on_after:
                gc.enable()
