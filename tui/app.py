"""Provides NatboxApp and make_app(), used by the CLI, tests, screenshots and the demo."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

from textual import events
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.message_pump import MessagePump
from textual.screen import Screen
from textual.widget import Widget

from natbox.api import EngineAPI
from tui.screens.dashboard import DashboardScreen

PALETTE = [
    ("Add a forward", "Open the add wizard", "add"),
    ("Remove the selected forward", "Show its rules, then remove them", "remove"),
    ("Undo", "Undo the last change of this session", "undo"),
    ("Edit the marked forward", "The wizard, prefilled: old rules out, new in, at once", "edit"),
    (
        "Disable or enable the marked forward",
        "Rules out, remembered; again puts them back",
        "toggle_forward",
    ),
    ("Conntrack viewer", "Live flows with both tuples", "conntrack"),
    ("Flows of the selected forward", "The viewer, filtered to that forward", "flows_of_forward"),
    ("Refresh", "Read rules, flows and interfaces now", "refresh"),
    ("Filter", "Filter forwards and rules as you type", "filter"),
    ("Go to a forward", "Type its name", "goto"),
    ("Sort forwards", "By name, flows, bytes, health", "sort"),
    ("Show history", "What happened in this session", "tab('history')"),
    ("Show rules", "The rules tab", "tab('rules')"),
    ("Show interfaces", "The interfaces tab", "tab('interfaces')"),
    ("Show health", "The selected forward's findings and fixes", "tab('health')"),
    ("Save the marked forward", "Restored at boot (natbox save)", "save"),
    ("Forget the marked forward", "Not restored at boot; its rules stay", "forget"),
    ("Export the marked forward", "Restore text, iptables commands, Ansible", "export"),
    ("Doctor the marked forward", "Full diagnosis: probes the backend", "doctor"),
    ("Kill the flows of the marked forward", "After a yes", "kill_flows"),
    ("Trace the marked forward", "The kernel's path for its next connection", "trace"),
    ("Help", "Every key", "help"),
]


SETTLE_STEP = 0.002
SETTLE_MAX = 0.5
"""At most this long for one key's path to go quiet (a busy app must not stall typing)."""
QUIET_ROUNDS = 3
"""Rounds of the event loop in a row with nothing queued on the key's path: the key is handled."""
READY_MAX = 10.0


class NatboxApp(App[int]):
    """The natbox dashboard. `engine` does every read and write (a fake in tests)."""

    CSS_PATH = "styles/app.tcss"
    TITLE = "natbox"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+c", "quit", "Quit", show=False, id="app.quit", tooltip="Leave natbox"),
    ]

    def __init__(
        self,
        engine: EngineAPI,
        confirm_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        polling: bool = True,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.clock = clock
        """Seconds, for countdowns (snapshots freeze it)."""
        self.polling = polling
        """Whether screens read again on their timers (the dashboard's polls, the viewer's refresh).
        Snapshots turn it off: a poll that fires while a slow machine reaches a state changes it."""
        self.confirm_seconds = confirm_seconds
        """How long a new forward waits for `y` before it is rolled back."""
        self._typeahead: deque[events.Key] = deque()
        self._replay: list[events.Key] = []
        self._drainer: asyncio.Task[None] | None = None
        self._holding = False

    async def on_event(self, event: events.Event) -> None:
        """Type-ahead (a laggy SSH link, a paste): each key from the terminal is handled only after
        the one before it has been (its focus change, its new screen), so keys land where they would
        have landed had the user waited. A key typed at human speed waits for nothing."""
        if not isinstance(event, events.Key) or event.is_forwarded:
            # Only keys from the terminal are sequenced; a key bubbling back up passes.
            await super().on_event(event)
            return
        replayed = event in self._replay
        if replayed:
            self._replay.remove(event)
        elif self._holding:
            self._typeahead.append(event)
            return
        await super().on_event(event)
        if not self._holding:
            self._holding = True
            self._drainer = asyncio.create_task(self._drain())

    @property
    def keys_pending(self) -> bool:
        """Keys typed ahead wait to be handled (a burst, a paste): work that the next key would
        redo (a filter over 100,000 flows per character) can wait for the last one."""
        return bool(self._typeahead)

    async def _settled(self) -> None:
        """Until the key's path (the focused widget, its ancestors, the screen, the app) has no
        message left to handle, and the screen in front takes keys (the wizard's first field)."""
        start = time.monotonic()
        quiet = 0
        while quiet < QUIET_ROUNDS:
            await asyncio.sleep(0)
            waited = time.monotonic() - start
            ready = getattr(self.screen, "accepting_keys", True) or waited > READY_MAX
            if not ready or (self._path_busy() and waited < SETTLE_MAX):
                quiet = 0
                await asyncio.sleep(SETTLE_STEP)
            else:
                quiet += 1

    def _path_busy(self) -> bool:
        """A message waits on the key's path: the focused widget, its ancestors, the screen, or a
        deferred call (a focus change) on the app. Timers and the like on the app do not count."""
        pumps: list[MessagePump] = [self.screen]
        node = self.focused
        while node is not None and node is not self.screen:
            pumps.append(node)
            node = node.parent if isinstance(node.parent, Widget) else None
        if any(p.message_queue_size for p in pumps):
            return True
        queued: Iterable[object] = self._message_queue.values
        return any(isinstance(m, events.Callback) for m in queued)

    async def _drain(self) -> None:
        try:
            await self._settled()
            while self._typeahead:
                held = self._typeahead.popleft()
                key = events.Key(held.key, held.character)  # a fresh event: the held one was seen
                self._replay.append(key)
                self.post_message(key)
                while key in self._replay:
                    await asyncio.sleep(SETTLE_STEP)
                await self._settled()
        finally:
            self._holding = False

    def get_default_screen(self) -> Screen[Any]:
        # The dashboard is the first screen itself (not pushed over an empty one): composed with
        # the app, laid out once Textual's start-up batch is over, so its first frame is not made
        # inside the batch and dropped (#13).
        return DashboardScreen(self.engine, self.confirm_seconds, self.clock)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, DashboardScreen):
            for title, help_text, action in PALETTE:
                yield SystemCommand(title, help_text, partial(screen.run_action, action))


def make_app(
    engine: EngineAPI | None = None,
    confirm_seconds: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    polling: bool = True,
) -> NatboxApp:
    """Build the app around `engine` (the real Engine when None) and `clock` (frozen in snapshots);
    `polling` False: nothing is read on a timer, only on a key or after a change (snapshots)."""
    if engine is None:
        from natbox.engine import Engine

        engine = Engine()
    return NatboxApp(engine, confirm_seconds, clock, polling)


def run(
    backend_choice: str | None = None,
    confirm_seconds: float = 30.0,
    engine: EngineAPI | None = None,
) -> int:
    """Run the dashboard in this terminal (on `engine`, if the caller made one already)."""
    from natbox.engine import Engine

    result = make_app(engine or Engine(backend_choice), confirm_seconds).run()
    return result or 0
