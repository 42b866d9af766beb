"""Provides in_background(): a read started in a thread now, its result asked for later, so that
reads which mostly wait on the kernel (iptables-save, a conntrack dump, nft) run at the same time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


def in_background(fn: Callable[[], _T]) -> Callable[[], _T]:
    """Start `fn` in a thread now; the returned callable waits for its result (or raises its
    error). For reads that mostly wait on the kernel, made while another read runs."""
    out: list[_T] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the caller, who decides
            err.append(exc)

    thread = threading.Thread(target=run, name="natbox-read", daemon=True)
    thread.start()

    def result() -> _T:
        thread.join()
        if err:
            raise err[0]
        return out[0]

    return result
