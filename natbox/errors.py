"""Provides natbox's user-facing errors: one line of message, one line of hint."""

from __future__ import annotations


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
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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


class ConflictError(NatboxError):
    """The forward clashes with one that already exists."""


class NotFoundError(NatboxError):
    """The named forward (or flow) does not exist."""
