"""Provides `python -m natbox` and the `natbox` script (run)."""

import sys

from natbox import gcpause, prefetch


def run() -> int:
    """Start `natbox list`'s saves (natbox.prefetch), then import and run the command line: the
    saves and the imports run at the same time.

    Python's cycle collector is off during the start-up (natbox.gcpause): natbox.cli turns it back
    on once the command line is parsed; the dashboard, once its first frame is out.
    """
    gcpause.hold_for_start_up()
    prefetch.start(sys.argv[1:])
    from natbox.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
