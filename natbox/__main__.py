"""Provides `python -m natbox` and the `natbox` script (run)."""

import sys

from natbox import prefetch


def run() -> int:
    """Start `natbox list`'s saves (natbox.prefetch), then import and run the command line: the
    saves and the imports run at the same time."""
    prefetch.start(sys.argv[1:])
    from natbox.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
