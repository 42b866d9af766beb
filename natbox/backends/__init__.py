"""Provides the backend interface: read the ruleset, commit one table's changes atomically.

Changes are expressed as iptables-restore lines (`:CHAIN - [0:0]`, `-I CHAIN 1 ...`, `-A CHAIN ...`,
`-D CHAIN ...`, `-X CHAIN`): the restore backend feeds them to iptables-restore, the iptc backend
translates them into python-iptables calls.
"""

from __future__ import annotations

import copy
import shutil
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping

from natbox import prefetch
from natbox.errors import BackendError, NotRootError
from natbox.model import Ruleset
from natbox.paths import env_seconds
from natbox.ruleset import WATCHED, parse_save
from natbox.runner import Result, Runner
from natbox.system import is_root


def lock_wait() -> float:
    """Seconds to wait for the xtables lock (NATBOX_LOCK_WAIT, default 10, at most an hour)."""
    return env_seconds("NATBOX_LOCK_WAIT", 10.0, 0, 3600)


def lock_busy(stderr: str) -> None:
    """Raise the one clear error when iptables gave up waiting for the xtables lock."""
    if "xtables lock" in stderr:
        raise BackendError(
            "the xtables lock is held by another process",
            "wait for the other iptables command to finish (NATBOX_LOCK_WAIT sets how long natbox waits)",
        )


class Backend(ABC):
    """One way of writing rules; reading always goes through iptables-<flavour>-save."""

    name: str = "?"

    def __init__(self, flavour: str, runner: Runner | None = None, family: int = 4) -> None:
        self.flavour = flavour
        """`nft` or `legacy`: which kernel tables this backend reads and writes."""
        self.runner = runner or Runner()
        self.family = family
        """4 (iptables) or 6 (ip6tables)."""

    def for_family(self, family: int) -> Backend:
        """The same backend for IPv4 (iptables) or IPv6 (ip6tables)."""
        if family == self.family:
            return self
        twin = copy.copy(self)
        twin.family = family
        return twin

    def tool(self, kind: str) -> str:
        """The command for this family and flavour: `iptables-nft-save`, `ip6tables-legacy-restore`."""
        return f"ip{'6' if self.family == 6 else ''}tables-{self.flavour}-{kind}"

    @property
    def label(self) -> str:
        """How the UI names this backend, e.g. `restore (nft)`."""
        return f"{self.name} ({self.flavour})"

    def read(
        self,
        natbox_only: bool = False,
        keep: Mapping[str, Collection[str]] | None = None,
        early: bool = False,
    ) -> Ruleset:
        """The current ruleset of this backend's flavour, with counters (see parse_save).

        `early`: take the save natbox.prefetch started when the process began, if it did (only
        `natbox list` reads this way; see natbox.prefetch)."""
        argv = [self.tool("save"), "-c"]
        res: Result | None = None
        if early and type(self.runner) is Runner and not self.runner.prefix:
            listing = keep if natbox_only else None
            if (got := prefetch.take(argv, self.runner.timeout, listing)) is not None:
                res = Result(tuple(argv), *got)
        if res is None:
            res = self.runner.run(argv)
        if not res.ok:
            if not is_root() or "ermission denied" in res.stderr:
                raise NotRootError("read the firewall")
            raise BackendError(
                f"{self.tool('save')} failed: {res.first_error_line()}",
                "is the iptables package installed and the kernel's netfilter available?",
            )
        rs = parse_save(res.stdout, natbox_only, keep)
        rs.warnings.extend(_save_warnings(res.stderr))
        return rs

    def read_shown(self) -> Ruleset:
        """What the dashboard shows, for its first screen: natbox's chains and the NAT/FORWARD
        built-ins, parsed as a listing (parse_save with WATCHED). On nft with the plain runner
        they are listed chain by chain (natbox.prefetch.shown: ~15 ms on a 10,000-rule box, whose
        save is ~250 ms); elsewhere, or when a listing fails, from the whole save. Lines that
        name natbox in other chains are not in it (a tampering warning waits for a whole read)."""
        if self.flavour == "nft" and type(self.runner) is Runner and not self.runner.prefix:
            try:
                got = prefetch.shown(self.family, self.runner.timeout)
            except (OSError, ValueError):
                got = None
            if got is not None:
                text, stderr = got
                rs = parse_save(text, natbox_only=True, keep=WATCHED)
                rs.warnings.extend(_save_warnings(stderr))
                return rs
        return self.read(natbox_only=True, keep=WATCHED, early=True)

    def read_chains(
        self, wanted: dict[str, list[str]], known: Collection[str] = frozenset()
    ) -> Ruleset:
        """Only the named chains (`iptables -S CHAIN`, natbox's rules only), for a read-back proof:
        a few ms each where a full iptables-nft-save of a 10,000-rule host takes ~0.3 s. A chain
        that does not exist is left out. No counters.

        On nft, a chain is listed only once `nft list chain` says it is there (listing a missing
        one could create its table on some iptables versions), except in the `known` tables (the
        caller has just committed to them, so they exist, and asks only for chains that must be
        there): a chain iptables cannot list there is an error, never taken for a missing one."""
        binary = f"ip{'6' if self.family == 6 else ''}tables-{self.flavour}"
        wait = str(max(1, int(lock_wait())))
        out: list[str] = []
        for table, chains in wanted.items():
            if not self._table_loaded(table):
                continue  # listing would load (create) the legacy table
            out.append(f"*{table}")
            for chain in chains:
                probe = self.flavour == "nft" and table not in known
                if probe and not self._chain_exists(table, chain):
                    continue  # iptables-nft -S on a missing chain may create its table

                res = self.runner.run([binary, "-w", wait, "-t", table, "-S", chain])
                if not res.ok:
                    lock_busy(res.stderr)
                    if "No chain" in res.stderr:
                        continue
                    raise BackendError(
                        f"{binary} -t {table} -S {chain} failed: {res.first_error_line()}",
                        "natbox cannot prove what it wrote; run natbox list",
                    )
                for line in res.stdout.split("\n"):
                    if line.startswith("-P "):
                        _, name, policy = line.split()[:3]
                        out.append(f":{name} {policy} [0:0]")
                    elif line.startswith("-N "):
                        out.append(f":{line[3:].strip()} - [0:0]")
                    elif line.startswith("-A "):
                        out.append(line)
            out.append("COMMIT")
        return parse_save("\n".join(out) + "\n", natbox_only=True)

    def _table_loaded(self, table: str) -> bool:
        if self.flavour != "legacy":
            return True
        names = f"/proc/net/ip{'6' if self.family == 6 else ''}_tables_names"
        try:
            with open(names) as fh:
                return table in fh.read().split()
        except OSError:
            return True

    def _chain_exists(self, table: str, chain: str) -> bool:
        if self.flavour != "nft":
            return True
        family = "ip6" if self.family == 6 else "ip"
        res = self.runner.run(["nft", "list", "chain", family, table, chain])
        return res.ok

    def validate(self, per_table: dict[str, list[str]]) -> None:
        """Check all tables' lines parse (one `iptables-restore --test`); the kernel may still
        reject them at commit."""
        text = "".join(
            f"*{table}\n" + "".join(line + "\n" for line in lines) + "COMMIT\n"
            for table, lines in per_table.items()
        )
        wait = str(max(1, int(lock_wait())))
        res = self.runner.run([self.tool("restore"), "--test", "--noflush", "-w", wait], text)
        if not res.ok:
            lock_busy(res.stderr)
            raise BackendError(
                f"the rules do not parse: {res.first_error_line()}", "nothing was changed"
            )

    @abstractmethod
    def commit(self, table: str, lines: list[str]) -> None:
        """Apply `lines` to `table` as one transaction; raise BackendError if the kernel refuses."""


def _save_warnings(stderr: str) -> list[str]:
    """The warnings iptables printed (legacy tables present beside nft ones, ...), each once."""
    return list(
        dict.fromkeys(
            line.lstrip("# ").strip() for line in stderr.splitlines() if "Warning" in line
        )
    )


def families(backend: Backend) -> list[Backend]:
    """The backend for IPv4, and for IPv6 where ip6tables is installed."""
    out = [backend.for_family(4)]
    v6 = backend.for_family(6)
    if shutil.which(v6.tool("save")):
        out.append(v6)
    return out
