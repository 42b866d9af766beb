"""Snapshot tests of every screen state in tui.screenshots.STATES (the same states the PNGs show).

Fixed data (SampleEngine), no clock in the header, no cursor blink, Textual pinned in pyproject.toml.
Update with: pytest tests/snapshots --snapshot-update (then look at the report and the PNGs).
"""

from __future__ import annotations

from typing import Any

import pytest

from tui.screenshots import STATES, State


@pytest.mark.parametrize("state", STATES, ids=[s.name for s in STATES])
def test_screen_state(snap_compare: Any, state: State) -> None:
    assert snap_compare(state.app(), terminal_size=state.size, run_before=state.reach)
