"""Provides natbox's user-facing errors: one line of message, one line of hint."""

from __future__ import annotations

SHOWN_MAX = 80
"""At most this many characters of a user's input are quoted in a message."""


def shown(value: object, limit: int = SHOWN_MAX) -> str:
    """`value` as a message quotes it: printable, and cut to `limit` characters with its length."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(str(value))} characters)"


class NatboxError(Exception):
    """An error the user can cause or fix; the CLI prints it on one line and exits 2."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and hint as the single line the CLI prints (control characters escaped)."""
        text = (
            f"natbox: {self.message} (hint: {self.hint})"
            if self.hint
            else f"natbox: {self.message}"
        )
        return shown(text, 600)


class ValidationError(NatboxError):
    """Bad input: an address, port, name or option that cannot be used."""


class NotRootError(NatboxError):
    """A write (or a privileged read) was attempted without root."""

    def __init__(self, what: str = "change the firewall") -> None:
        super().__init__(f"natbox must run as root to {what}", "run it again with sudo")


class ToolMissingError(NatboxError):
    """An external command natbox needs is not installed."""


class BackendError(NatboxError):
    """iptables (or python-iptables) refused or failed an operation."""


class UndoFailed(BackendError):
    """A change failed and undoing what it had committed failed too: the kernel holds part of it,
    and its journal stays for recovery (natbox recover)."""


UNDO_FAILED = "could not undo"
"""How the message of a failed undo begins (txn._undo, converge._undo)."""


def undone_or_not(message: str, undone: str) -> BackendError:
    """The error for a change that failed with `message`, after the undo said `undone`."""
    cls = UndoFailed if undone.startswith(UNDO_FAILED) else BackendError
    return cls(message, undone)


class ConflictError(NatboxError):
    """The forward clashes with one that already exists."""


class NotFoundError(NatboxError):
    """The named forward (or flow) does not exist."""
