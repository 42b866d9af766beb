"""Provides the python-iptables backend, for hosts whose iptables is legacy.

Traps it defends against (measured): python-iptables sees only legacy tables, and merely opening a
table creates it, so it is never chosen on an nft host; with autocommit a rejected rule raises
nothing, so autocommit is off and commit() is checked; it takes no xtables lock and rewrites the
whole table, so the lock is held from refresh to commit; and building a jump to a user chain makes
it open (so create) every table to look for that chain, so it is told only the table at hand exists.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from natbox.backends import Backend, lock_wait
from natbox.errors import BackendError, ToolMissingError
from natbox.paths import flock_until

_ADDRESS_FLAGS = {
    "-s": "src",
    "-d": "dst",
    "-p": "protocol",
    "-i": "in_interface",
    "-o": "out_interface",
}


def lockfile_path() -> str:
    """The xtables lock every iptables-legacy writer takes."""
    return os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")


@contextmanager
def xtables_lock(timeout: float | None = None) -> Iterator[None]:
    """Hold the xtables lock (flock), retrying while another writer has it."""
    wait = lock_wait() if timeout is None else timeout
    fd = os.open(lockfile_path(), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        if not flock_until(fd, wait):
            raise BackendError(
                f"the xtables lock {lockfile_path()} is held by another process",
                "wait for the other iptables command to finish and try again",
            )
        yield
    finally:
        os.close(fd)


def _iptc() -> Any:
    try:
        import iptc
    except Exception as exc:  # the library raises plain exceptions when libxtables is missing
        raise ToolMissingError(
            f"python-iptables cannot load: {exc}",
            "apt-get install iptables, or use --backend restore",
        ) from None
    return iptc


def build_rule(iptc: Any, tokens: list[str], family: int = 4) -> Any:
    """Translate iptables arguments (save form) into a python-iptables Rule (Rule6 for IPv6)."""
    rule = iptc.Rule6() if family == 6 else iptc.Rule()
    current: Any = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in _ADDRESS_FLAGS:
            setattr(rule, _ADDRESS_FLAGS[tok], tokens[i + 1])
            i += 2
        elif tok == "-m":
            current = rule.create_match(tokens[i + 1])
            i += 2
        elif tok == "-j":
            current = rule.create_target(tokens[i + 1])
            i += 2
        elif tok.startswith("--") and current is not None:
            j = i + 1
            while j < len(tokens) and not tokens[j].startswith("-"):
                j += 1
            values = tokens[i + 1 : j]
            value: str | list[str] = "" if not values else values[0] if len(values) == 1 else values
            setattr(current, tok[2:].replace("-", "_"), value)
            i = j
        else:
            raise BackendError(
                f"python-iptables backend cannot express {tok!r}", "use --backend restore"
            )
    return rule


class IptcBackend(Backend):
    """Writes with python-iptables (legacy tables only)."""

    name = "iptc"

    def __init__(self, runner: Any = None) -> None:
        super().__init__("legacy", runner)

    def commit(self, table: str, lines: list[str]) -> None:
        """Apply the lines to a private copy of the table and commit it under the xtables lock."""
        iptc = _iptc()
        table_class = iptc.Table6 if self.family == 6 else iptc.Table
        # Without this, a jump target makes python-iptables open (and so create) all five tables.
        for name in table_class.ALL:
            table_class.existing_table_names[name] = name == table
        with xtables_lock():
            tbl = table_class(table)
            tbl.autocommit = False
            tbl.refresh()
            try:
                for line in lines:
                    self._apply_line(iptc, tbl, line, self.family)
                tbl.commit()
            except BackendError:
                tbl.refresh()
                raise
            except Exception as exc:
                tbl.refresh()  # drop the half-built copy; the kernel's table is untouched
                raise BackendError(
                    f"python-iptables refused the {table} table: {exc}",
                    f"the {table} table was left as it was",
                ) from None
            finally:
                tbl.autocommit = True

    @staticmethod
    def _apply_line(iptc: Any, tbl: Any, line: str, family: int) -> None:
        if line.startswith(":"):
            tbl.create_chain(line[1:].split()[0])
            return
        if line.startswith("-N "):
            name = line[3:].strip()
            if tbl.is_chain(name):  # as iptables-restore's -N: never adopt or flush a chain
                raise BackendError(
                    f"chain {name} already exists", f"the {tbl.name} table was left as it was"
                )
            tbl.create_chain(name)
            return
        tokens = shlex.split(line)
        op, chain = tokens[0], tokens[1]
        if op == "-X":
            tbl.delete_chain(chain)
        elif op == "-I":
            iptc.Chain(tbl, chain).insert_rule(
                build_rule(iptc, tokens[3:], family), int(tokens[2]) - 1
            )
        elif op == "-A":
            iptc.Chain(tbl, chain).append_rule(build_rule(iptc, tokens[2:], family))
        elif op == "-D":
            iptc.Chain(tbl, chain).delete_rule(build_rule(iptc, tokens[2:], family))
        else:
            raise BackendError(
                f"python-iptables backend cannot run {op!r}", "use --backend restore"
            )
