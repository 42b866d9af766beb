"""Provides the disabled forwards: out of the kernel, remembered whole so `natbox enable` puts each
back exactly as it was.

They live in the state directory (state_dir()/disabled.json, `{"version": 1, "disabled": [...]}`,
each forward in the saved set's schema), written atomically and only under the natbox lock, as part
of the transaction that takes the forward out or puts it back: converge journals the list before and
after with the kernel change, so a crash leaves the forward in the kernel or in this list, never in
neither and never in both. A file natbox did not write, or cannot read, is refused (named), never
guessed at: no forward is enabled, added or restored on top of it.

A disabled forward keeps its entry in the saved set (forwards.json): `natbox restore` (boot) skips
it until it is enabled, `natbox save` keeps its entry, and `natbox remove NAME` forgets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from natbox.errors import ValidationError, shown
from natbox.model import Forward, forward_from_dict
from natbox.paths import StateFileError, read_json, remove, state_dir, write_json

FILE_VERSION = 1


def path() -> Path:
    """Where the disabled forwards are remembered."""
    return state_dir() / "disabled.json"


def _refuse(why: str) -> StateFileError:
    return StateFileError(
        f"{path()} is not a list of disabled forwards natbox wrote ({why})",
        f"nothing was changed; look at it, then fix or delete {path()}",
    )


def parse(data: object) -> list[Forward]:
    """The disabled forwards in the file's JSON value (validated whole, names unique)."""
    if not isinstance(data, dict) or set(data) != {"version", "disabled"}:
        raise _refuse('not an object with "version" and "disabled"')
    if data["version"] != FILE_VERSION or isinstance(data["version"], bool):
        raise _refuse(f"version {shown(data['version'])}")
    items = data["disabled"]
    if not isinstance(items, list):
        raise _refuse('"disabled" is not a list')
    out: list[Forward] = []
    for i, item in enumerate(items, 1):
        try:
            if not isinstance(item, dict):
                raise ValidationError("is not an object", "")
            fwd = forward_from_dict(item)
        except ValidationError as exc:
            raise _refuse(f"forward {i}: {exc.message}") from None
        if any(f.name == fwd.name for f in out):
            raise _refuse(f"forward {fwd.name} is there twice")
        out.append(fwd)
    return out


def load() -> list[Forward]:
    """The disabled forwards, in the order they were disabled."""
    data = read_json(path())
    return [] if data is None else parse(data)


def dump(forwards: Sequence[Forward]) -> dict[str, object]:
    """The file's JSON value for `forwards`."""
    return {"version": FILE_VERSION, "disabled": [f.to_dict() for f in forwards]}


def write(forwards: Sequence[Forward]) -> None:
    """Remember exactly `forwards` (atomically; no file at all when there are none)."""
    if forwards:
        write_json(path(), dump(forwards))
    else:
        remove(path())


def find(name: str) -> Forward | None:
    """The disabled forward named `name`, if any."""
    return next((f for f in load() if f.name == name), None)
