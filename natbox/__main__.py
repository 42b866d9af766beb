"""Provides `python -m natbox` and the `natbox` script (run)."""

import gc
import sys

from natbox import prefetch


def run() -> int:
    """Start `natbox list`'s saves (natbox.prefetch), then import and run the command line: the
    saves and the imports run at the same time.

    Python's cycle collector is off during the start-up: the imports and the first screen make only
    objects that live as long as the process (modules, classes, styles, widgets), and collecting
    among them found nothing while it cost 10-20% of the dashboard's first frame (#13). natbox.cli
    turns it back on once the command line is parsed; the dashboard, once its first frame is out.
    """
    gc.disable()
    prefetch.start(sys.argv[1:])
    from natbox.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
