"""Provides `python -m natbox` and the `natbox` script (run)."""

import gc
import sys

from natbox import prefetch


def run() -> int:
    """Start `natbox list`'s saves (natbox.prefetch), then import and run the command line: the
    saves and the imports run at the same time.

    The dashboard (`natbox` alone) starts with the cyclic garbage collector off: Python and Textual
    allocate ~100,000 objects that live as long as the process, and the collector would walk them
    again and again (~50 ms of the first frame on a lived-in box, #13). The dashboard turns it on
    once its first frame is out (gc.freeze() first: those objects are never walked again)."""
    if sys.argv[1:] == prefetch.DASHBOARD:
        gc.disable()
    prefetch.start(sys.argv[1:])
    from natbox.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
