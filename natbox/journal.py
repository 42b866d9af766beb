"""Provides the crash journal: every change writes its intent before touching the kernel and clears it
after. A natbox that finds an unfinished entry completes or undoes it and says which, so the ruleset
is always the state before or the state after, never between.

An entry records the exact restore lines of the change, per table, for one IP version. Recovery acts
only on those lines: an interrupted apply is undone by deleting the recorded rules that are in the
kernel, an interrupted removal is completed by deleting the recorded rules that are still there. So a
journal can never make natbox delete a rule it was not itself adding or removing. The journal is
written and read only under the natbox lock, and a journal natbox does not understand is refused
(named), never guessed at.

`fault(point)` is the test-only hook for the fault-injection suite: with NATBOX_FAULT=<point> set,
natbox kills itself (SIGKILL) at that point, as a crash or `kill -9` would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from natbox.errors import shown
from natbox.paths import StateFileError, read_json, read_trusted, remove, state_dir, write_json
from natbox.plan import OWN_CHAINS, jump_rule

OPS = ("apply", "remove")
TABLES = ("nat", "filter")
JOURNAL_VERSION = 2
MAX_JOURNAL = 4 * 1024 * 1024


def fault(point: str) -> None:
    """Die here if the fault-injection suite asks for it (NATBOX_FAULT=point)."""
    if os.environ.get("NATBOX_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def path() -> Path:
    """Where the journal lives."""
    return state_dir() / "journal.json"


@dataclass(frozen=True)
class Entry:
    """A change that started: `op` on the forwards `names`, as the exact lines per table."""

    op: str
    names: tuple[str, ...]
    family: int
    lines: dict[str, list[str]]
    forwards: tuple[dict[str, object], ...]
    """The forwards being applied (their to_dict()), to tell a finished apply from a partial one."""
    started: float

    @property
    def name(self) -> str:
        """The forwards' names, for messages."""
        return ", ".join(self.names)

    def to_dict(self) -> dict[str, object]:
        """The journal's JSON form."""
        return {
            "version": JOURNAL_VERSION,
            "op": self.op,
            "names": list(self.names),
            "family": self.family,
            "lines": self.lines,
            "forwards": list(self.forwards),
            "started": self.started,
        }


def begin(
    op: str,
    names: list[str],
    family: int,
    lines: dict[str, list[str]],
    forwards: list[dict[str, object]] | None = None,
) -> Entry:
    """Record the intent (durably) before the kernel is touched; refused while another change's
    journal is still there (one whose undo failed: overwriting it would lose what recovery needs)."""
    _refuse_pending()
    entry = Entry(op, tuple(names), family, lines, tuple(forwards or ()), time.time())
    write_json(path(), entry.to_dict())
    return entry


def _refuse_pending() -> None:
    for pending in (path(), set_path()):
        if pending.exists():
            raise StateFileError(
                f"an interrupted change is still pending ({pending}): nothing was changed",
                "run `natbox recover` (it finishes or undoes it), then try again",
            )


def end() -> None:
    """The change finished (or was undone): nothing to recover."""
    remove(path())


def _refuse(why: str) -> StateFileError:
    return StateFileError(
        f"{path()} is not a journal natbox understands ({why})",
        f"nothing was changed; look at it, repair the firewall by hand if needed, then delete {path()}",
    )


def pending() -> Entry | None:
    """The unfinished change, if natbox died in one; StateFileError for a journal it cannot trust."""
    text = read_trusted(path(), limit=MAX_JOURNAL)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise _refuse("not JSON") from None
    if not isinstance(data, dict):
        raise _refuse("not an object")
    expected = {"version", "op", "names", "family", "lines", "forwards", "started"}
    if set(data) != expected:
        extra = sorted(set(data) ^ expected)
        raise _refuse(f"unexpected or missing keys: {shown(', '.join(extra))}")
    if data["version"] != JOURNAL_VERSION or isinstance(data["version"], bool):
        raise _refuse(f"version {shown(data['version'])}")
    op, names, family, lines = data["op"], data["names"], data["family"], data["lines"]
    if op not in OPS:
        raise _refuse(f"op {shown(op)}")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _refuse("names must be a list of names")
    if family not in (4, 6) or isinstance(family, bool):
        raise _refuse(f"family {shown(family)}")
    if not isinstance(lines, dict) or not set(lines) <= set(TABLES):
        raise _refuse("lines must map nat/filter to lists")
    for table_lines in lines.values():
        if not isinstance(table_lines, list) or not all(
            isinstance(line, str) and line.startswith(("-A ", "-D ", "-I ", "-N ", "-X "))
            for line in table_lines
        ):
            raise _refuse("a line is not an iptables-restore command natbox writes")
    forwards = data["forwards"]
    if not isinstance(forwards, list) or not all(isinstance(f, dict) for f in forwards):
        raise _refuse("forwards must be a list of objects")
    started = data["started"]
    if not isinstance(started, (int, float)) or isinstance(started, bool):
        raise _refuse("started must be a number")
    for table, table_lines in lines.items():
        for line in table_lines:
            why = _foreign_line(table, line, set(names))
            if why:
                raise _refuse(f"{why}: {shown(line)}")
    return Entry(op, tuple(names), family, lines, tuple(forwards), float(started))


_OWN = {own for pairs in OWN_CHAINS.values() for _, own in pairs}
_TAG_RE = re.compile(r'--comment (?:"natbox:([^"]+)"|natbox:(\S+))')


def _foreign_line(table: str, line: str, names: set[str]) -> str | None:
    """Why `line` is not one natbox writes for the forwards `names` (None when it is)."""
    op, _, rest = line.partition(" ")
    if op in ("-N", "-X"):
        return None if rest in _OWN else "a chain that is not natbox's"
    chain = rest.split(" ", 1)[0]
    if op == "-I" or (op == "-D" and chain not in _OWN):
        spec = rest.split(" ", 2)[2] if op == "-I" else rest.split(" ", 1)[1]
        jumps = {jump_rule(table, b, o).spec for b, o in OWN_CHAINS.get(table, ())}
        return None if spec in jumps else "a rule outside natbox's chains"
    if chain not in _OWN:
        return "a rule outside natbox's chains"
    m = _TAG_RE.search(line)
    tag = (m.group(1) or m.group(2)) if m else None
    return None if tag in names else "a rule of another forward"


# -- set operations (natbox apply) ------------------------------------------------------------------
# A whole `natbox apply` spans both IP versions, so its entry lives in its own file, in its own shape:
# the target of the change and the state before it, per forward (see converge.recover_set). The entry
# above never sees it, and it never sees the entry above.


def set_path() -> Path:
    """Where a set operation's journal lives."""
    return state_dir() / "journal-set.json"


def begin_set(body: dict[str, object]) -> None:
    """Record a set operation's intent (durably) before the kernel is touched (refused as `begin`
    is)."""
    _refuse_pending()
    write_json(set_path(), {**body, "started": time.time()})


def pending_set() -> dict[str, object] | None:
    """The unfinished set operation, if natbox died in one (StateFileError if it cannot be trusted)."""
    data = read_json(set_path())
    if data is None:
        return None
    if not isinstance(data, dict) or not {"target", "before"} <= set(data):
        raise StateFileError(
            f"{set_path()} is not a journal natbox understands",
            f"nothing was changed; look at it, then delete {set_path()}",
        )
    return data


def end_set() -> None:
    """The set operation finished (or was undone)."""
    remove(set_path())
