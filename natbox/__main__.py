"""Provides `python -m natbox` and the `natbox` script (run)."""

import sys
import termios
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from natbox import gcpause, prefetch

GLOBAL_OPTIONS = ("--backend", "--confirm-window")
"""The options a dashboard's command line may hold (natbox.cli's parser has the same)."""


def opens_dashboard(args: list[str]) -> bool:
    """Whether `args` open the dashboard: no command, only the global options with their values."""
    i = 0
    while i < len(args):
        name, eq, _ = args[i].partition("=")
        if name not in GLOBAL_OPTIONS:
            return False
        i += 1 if eq else 2
    return i == len(args)


@contextmanager
def keys_kept_as_typed(fd: int) -> Iterator[None]:
    """Until the dashboard's terminal mode is on (Textual's, a few hundred ms in), keys typed ahead
    wait in the terminal's line mode, which turns Enter into ctrl+j as they arrive (ICRNL) and
    echoes them onto the shell's screen: `/ w Enter d` typed at start-up filtered for `wd`. From
    the process's first moment, they arrive as typed and unechoed; the terminal's own mode is back
    when natbox ends (Textual restores the mode it found: this one)."""
    try:
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError):  # not a terminal
        yield
        return
    attrs = [*saved[:6], list(saved[6])]
    attrs[0] &= ~(termios.ICRNL | termios.INLCR | termios.IGNCR | termios.IXON | termios.IXOFF)
    attrs[3] &= ~termios.ECHO
    try:
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except termios.error:
        yield
        return
    try:
        yield
    finally:
        with suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run() -> int:
    """Start `natbox list`'s saves (natbox.prefetch), then import and run the command line: the
    saves and the imports run at the same time.

    Python's cycle collector is off during the start-up (natbox.gcpause): natbox.cli turns it back
    on once the command line is parsed; the dashboard, once its first frame is out.
    """
    args = sys.argv[1:]
    try:
        fd = sys.stdin.fileno() if opens_dashboard(args) else -1
    except (AttributeError, ValueError, OSError):  # no stdin, or a closed one
        fd = -1
    if fd < 0:
        return _run(args)
    with keys_kept_as_typed(fd):
        return _run(args)


def _run(args: list[str]) -> int:
    gcpause.hold_for_start_up()
    prefetch.start(args)
    from natbox.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
