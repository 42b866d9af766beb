"""Provides "no trace left" on nft hosts: the tables natbox's writes created are deleted again when
they are empty.

iptables-nft creates `table ip nat` (or `ip filter`, `ip6 ...`) the first time a rule goes into it;
removing the rules leaves the empty table and its base chains behind, so `iptables-nft-save` and
`nft list ruleset` differ from before natbox came. natbox remembers which tables did not exist
before one of its writes created them (state_dir()/created-tables.json) and deletes such a table
once it is empty: only base chains with policy accept and no rule, set or other object in it. The
deletion is one nft transaction that deletes each base chain before the table, and nft refuses to
delete a chain that holds a rule, so a rule someone added meanwhile keeps the whole table. Legacy
tables are kernel modules that stay loaded: nothing to do there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from natbox import prefetch
from natbox.backends import Backend
from natbox.errors import NatboxError
from natbox.paths import read_json, remove, state_dir, write_json
from natbox.runner import Runner

# The tables natbox writes, per nft family.
_MINE = {"ip nat", "ip filter", "ip6 nat", "ip6 filter"}


def _path() -> Path:
    return state_dir() / "created-tables.json"


_PROBE = {"nat": "POSTROUTING", "filter": "FORWARD"}
"""The built-in chain natbox always writes to in each table: if it is there, the table is."""


def listed() -> set[str] | None:
    """Every ip/ip6 nft table of this process's network namespace ("ip nat", ...), from one
    NFT_MSG_GETTABLE dump over netlink (~1 ms, no rules fetched; prefetch.nft_tables); None where
    it cannot be read."""
    found = prefetch.nft_tables()
    return None if found is None else set(found)


def how(backend: Backend) -> str | None:
    """How `present` looks, chosen once per change so that before and after are compared alike:
    "netlink" (`listed`, when the backend runs in this process's namespace and the dump works),
    "probes" (one `nft list chain` per table), None when not an nft host."""
    if backend.flavour != "nft":
        return None
    runner = backend.runner
    if type(runner) is Runner and not runner.prefix and listed() is not None:
        return "netlink"
    return "probes"


def present(backend: Backend, way: str | None = None) -> set[str] | None:
    """The nft tables natbox could create that exist now (None: not an nft host, no `nft`, or the
    way chosen (`how`, asked now when not given) cannot answer).

    "netlink": every table there, with or without natbox's base chain in it. "probes": one
    `nft list chain` per table (a few ms each), a table counts only with its base chain in it
    (`nft list tables` would fetch every rule of every table first, 0.85 s on a 10,000-rule
    kube-proxy node)."""
    way = way or how(backend)
    if way is None:
        return None
    if way == "netlink":
        tables = listed()
        return None if tables is None else tables & _MINE
    found: set[str] = set()
    for table in sorted(_MINE):
        family, name = table.split()
        try:
            res = backend.runner.run(["nft", "list", "chain", family, name, _PROBE[name]])
        except NatboxError:
            return None
        if res.ok:
            found.add(table)
    return found


def remembered() -> set[str]:
    """The tables natbox created and has not deleted yet."""
    try:
        data = read_json(_path())
    except NatboxError:
        return set()
    return (
        {t for t in data if isinstance(t, str) and t in _MINE} if isinstance(data, list) else set()
    )


def _write(names: set[str]) -> None:
    if names:
        write_json(_path(), sorted(names))
    else:
        remove(_path())


def remember_created(backend: Backend, before: set[str] | None, way: str | None = None) -> None:
    """Remember the tables that exist now but did not before natbox's write (`way`: as `before`
    was found, see `how`)."""
    if before is None:
        return
    now = present(backend, way)
    if now is None or not now - before:
        return
    _write(remembered() | (now - before))


def _empty_base_chains(backend: Backend, table: str) -> list[str] | None:
    """The base chains of `table` when it holds nothing else (None: not empty, or not there)."""
    res = backend.runner.run(["nft", "-j", "list", "table", *table.split()])
    if not res.ok:
        return None
    try:
        items = json.loads(res.stdout)["nftables"]
    except (ValueError, KeyError, TypeError):
        return None
    chains: list[str] = []
    for item in items:
        kind, body = next(iter(item.items()))
        if kind in ("metainfo", "table"):
            continue
        if kind != "chain" or "hook" not in body or body.get("policy", "accept") != "accept":
            return None
        chains.append(str(body["name"]))
    return chains


def drop_created_if_empty(backend: Backend, way: str | None = None) -> list[str]:
    """Delete the tables natbox created that are empty now; returns the ones deleted."""
    mine = remembered()
    if not mine or backend.flavour != "nft":
        return []
    try:
        now = present(backend, way)
        if now is None:
            return []  # cannot tell which are there now: forget nothing, delete nothing
        gone: list[str] = []
        for table in sorted(mine):
            if table not in now:
                mine.discard(table)  # someone else deleted it
                continue
            chains = _empty_base_chains(backend, table)
            if chains is None:
                continue  # someone put something in it: it is theirs now too, leave it
            script = "".join(f"delete chain {table} {c}\n" for c in chains)
            res = backend.runner.run(["nft", "-f", "-"], script + f"delete table {table}\n")
            if res.ok:
                mine.discard(table)
                gone.append(table)
    except NatboxError:
        return []
    _write(mine)
    return gone


@contextmanager
def tracked(backend: Backend) -> Iterator[None]:
    """Around a write: remember the tables it creates; afterwards delete those left empty. The
    tables are found the same way before and after (`how`)."""
    way = how(backend)
    before = present(backend, way)
    try:
        yield
    finally:  # a failed write that was undone can leave an empty table behind too
        remember_created(backend, before, way)
        drop_created_if_empty(backend, way)
