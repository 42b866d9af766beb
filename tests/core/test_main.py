"""natbox.__main__: which command lines open the dashboard, and the terminal mode it sets from the
process's first moment so keys typed ahead arrive as typed."""

from __future__ import annotations

import os
import termios

import pytest

from natbox.__main__ import keys_kept_as_typed, opens_dashboard


@pytest.mark.parametrize(
    ("args", "dashboard"),
    [
        ([], True),
        (["--backend", "nft"], True),
        (["--confirm-window=60", "--backend", "legacy"], True),
        (["--backend"], False),  # its value is missing: the parser says so
        (["list"], False),
        (["--backend", "nft", "list"], False),
        (["--help"], False),
        (["--version"], False),
    ],
)
def test_which_command_lines_open_the_dashboard(args: list[str], dashboard: bool) -> None:
    assert opens_dashboard(args) is dashboard


def test_keys_typed_at_start_up_arrive_as_typed_and_unechoed() -> None:
    """A terminal in its line mode turns Enter (CR) into ctrl+j (LF) as it arrives and echoes it:
    `/ w Enter d` typed while natbox started filtered for `wd`. Inside keys_kept_as_typed the bytes
    arrive as typed and nothing is echoed; the mode is the terminal's own again afterwards."""
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        typed = b"/w\rd"
        os.write(master, b"/w\r")  # before: translated and echoed
        assert os.read(slave, 100) == b"/w\n"
        assert os.read(master, 100), "echoed"
        with keys_kept_as_typed(slave):
            os.write(master, typed)
            attrs = termios.tcgetattr(slave)
            attrs[3] &= ~termios.ICANON  # what Textual then sets: read what is pending
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            assert os.read(slave, 100) == typed
            os.set_blocking(master, False)
            with pytest.raises(BlockingIOError):
                os.read(master, 100)  # nothing echoed
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_not_a_terminal_is_left_alone() -> None:
    read, write = os.pipe()
    try:
        with keys_kept_as_typed(read):
            pass
    finally:
        os.close(read)
        os.close(write)


def test_the_dashboards_options_are_the_parsers_global_options() -> None:
    """opens_dashboard knows the global options without building the parser (start-up): the two
    lists must not drift apart."""
    from natbox.__main__ import GLOBAL_OPTIONS
    from natbox.cli import build_parser

    parser = build_parser()
    taking_values = {
        option
        for action in parser._actions
        if action.option_strings and action.nargs != 0 and action.dest not in ("help", "version")
        for option in action.option_strings
    }
    assert taking_values == set(GLOBAL_OPTIONS)
