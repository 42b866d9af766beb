"""natbox.gcpause: Python's cycle collector held off by the start-up and by readers at once, on again
only when none holds it (the readers used to save and restore it each on their own)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from natbox import gcpause


@pytest.fixture(autouse=True)
def collector_on_afterwards() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.enable()


def test_a_pause_restores_what_it_found() -> None:
    with gcpause.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    with gcpause.paused():
        pass
    assert not gc.isenabled(), "off before: off after"


def test_the_start_up_ending_during_a_readers_pause_turns_it_on_when_the_pause_ends() -> None:
    """The race a review found: a reader began while the start-up held gc off, the dashboard's first
    frame went out meanwhile; the reader restored "off", and gc stayed off for good."""
    gcpause.hold_for_start_up()
    with gcpause.paused():
        gcpause.start_up_over()
        assert not gc.isenabled(), "not inside the reader's pause"
    assert gc.isenabled()


def test_overlapping_pauses_in_threads_end_with_gc_on() -> None:
    """Reader A pauses (gc on), reader B pauses (sees it off), A ends, B ends: on. Each saving and
    restoring its own view left it off."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def reader_a() -> None:
        with gcpause.paused():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def reader_b() -> None:
        a_in.wait(5)
        with gcpause.paused():
            b_in.set()
            a_out.wait(5)
            seen.append(gc.isenabled())

    threads = [threading.Thread(target=reader_a), threading.Thread(target=reader_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [False], "still held by B after A ended"
    assert gc.isenabled()


def test_the_start_up_over_freezes_what_it_made() -> None:
    """The first collection after the start-up walked all of its objects at once (~22 ms on the
    dashboard); they are frozen instead."""
    gcpause.hold_for_start_up()
    assert gc.get_freeze_count() == 0
    gcpause.start_up_over()
    assert gc.isenabled() and gc.get_freeze_count() > 0
