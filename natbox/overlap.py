"""Provides in_background(): a read started in a thread now, its result asked for later, so that
reads which mostly wait on the kernel (iptables-save, a conntrack dump, nft) run at the same time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

_T = TypeVar("_T")


class Later(Generic[_T]):
    """A result being made in a thread: call it to wait for it (or for its error)."""

    def __init__(self, fn: Callable[[], _T]) -> None:
        self._out: list[_T] = []
        self._err: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(fn,), name="natbox-read", daemon=True
        )
        self._thread.start()

    def _run(self, fn: Callable[[], _T]) -> None:
        try:
            self._out.append(fn())
        except BaseException as exc:  # handed to the caller, who decides
            self._err.append(exc)

    def done(self) -> bool:
        """Whether the result is there (calling would not wait)."""
        return not self._thread.is_alive()

    def __call__(self) -> _T:
        self._thread.join()
        if self._err:
            raise self._err[0]
        return self._out[0]


def in_background(fn: Callable[[], _T]) -> Later[_T]:
    """Start `fn` in a thread now; the result waits for it (or raises its error). For reads that
    mostly wait on the kernel, made while another read runs."""
    return Later(fn)
