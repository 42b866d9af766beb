"""Provides apply and remove: all or nothing, read back from the kernel, foreign rules untouched.

A backend commits one table at a time (iptables-restore is atomic per table only), so a failure in
the second table undoes the first, and a forward that does not read back intact is undone whole.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from natbox import journal
from natbox.backends import Backend
from natbox.errors import BackendError, ConflictError, NatboxError, NotFoundError, NotRootError
from natbox.model import Forward, Rule, Ruleset
from natbox.plan import OWN_CHAINS, TABLE_ORDER, Plan, build_plan, jump_rule
from natbox.ruleset import ForwardState, forward_states
from natbox.runner import Runner
from natbox.system import PROC_SYS, ip_forward_enabled, is_root

# At most this many single-port conntrack deletions per protocol; wider ranges go by address.
_CT_PORT_LIMIT = 64


@dataclass
class Outcome:
    """What an apply or remove did."""

    action: str
    name: str
    backend: str
    lines: dict[str, list[str]] = field(default_factory=dict)
    """The restore lines committed, per table."""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {
            "action": self.action,
            "name": self.name,
            "backend": self.backend,
            "lines": self.lines,
            "notes": self.notes,
            "seconds": round(self.seconds, 4),
        }


def require_root() -> None:
    """Refuse a write without root, before anything is read or touched."""
    if not is_root():
        raise NotRootError()


def _has_jump(rs: Ruleset, table: str, builtin: str, own: str) -> bool:
    chain = rs.chain(table, builtin)
    want = jump_rule(table, builtin, own).save_line
    return chain is not None and any(r.text == want for r in chain.rules)


def conflicts(rs: Ruleset, fwd: Forward) -> None:
    """Raise ConflictError when `fwd` clashes with a natbox forward already in the kernel."""
    for state in forward_states(rs):
        if state.name == fwd.name:
            raise ConflictError(
                f"a forward named {fwd.name} already exists",
                f"pick another --name, or `natbox remove {fwd.name}` first",
            )
        other = state.forward
        if other is None or other.listen.ip != fwd.listen.ip:
            continue
        same_proto = set(other.protocols) & set(fwd.protocols)
        overlap = (
            other.listen.port <= fwd.listen.port_end and fwd.listen.port <= other.listen.port_end
        )
        if same_proto and overlap:
            raise ConflictError(
                f"{'/'.join(sorted(same_proto))} {fwd.listen} is already forwarded by {other.name} "
                f"(to {other.backend})",
                f"`natbox remove {other.name}` first, or listen on another port",
            )


def apply_lines(rs: Ruleset, plan: Plan) -> dict[str, list[str]]:
    """The restore lines per table that add `plan`, creating natbox's chains and jumps if missing."""
    out: dict[str, list[str]] = {}
    for table in TABLE_ORDER:
        lines: list[str] = []
        for builtin, own in OWN_CHAINS[table]:
            if own not in plan.chains:
                continue  # e.g. NATBOX-OUTPUT exists only while a forward has --local
            if rs.chain(table, own) is None:
                lines.append(f":{own} - [0:0]")
            if not _has_jump(rs, table, builtin, own):
                lines.append(f"-I {builtin} 1 {jump_rule(table, builtin, own).spec}")
        lines.extend(r.save_line for r in plan.table_rules(table))
        if any(line.startswith("-A ") for line in lines):
            out[table] = lines
    return out


def inverse_lines(lines: list[str]) -> list[str]:
    """Lines that undo `lines`: an add list is undone in reverse, a remove list is replayed in order."""
    if any(line.startswith(("-D ", "-X ")) for line in lines):
        chains = [f":{line[3:]} - [0:0]" for line in lines if line.startswith("-X ")]
        jumps = [line for line in lines if line.startswith("-D ") and _is_jump(line)]
        rules = [line for line in lines if line.startswith("-D ") and not _is_jump(line)]
        return [
            *chains,
            *(f"-I {line.split(' ', 2)[1]} 1 {line.split(' ', 2)[2]}" for line in jumps),
            *("-A " + line[3:] for line in rules),
        ]
    out: list[str] = []
    for line in reversed(lines):
        if line.startswith(":"):
            out.append(f"-X {line[1:].split()[0]}")
        elif line.startswith("-I "):
            _, chain, _pos, spec = line.split(" ", 3)
            out.append(f"-D {chain} {spec}")
        elif line.startswith("-A "):
            out.append("-D " + line[3:])
    return out


def _is_jump(line: str) -> bool:
    return any(line.endswith(f" -j {own}") for pairs in OWN_CHAINS.values() for _, own in pairs)


def remove_lines(rs: Ruleset, name: str) -> dict[str, list[str]]:
    """The restore lines per table (nat first: stop new DNATs before their accepts go)."""
    rules = rs.forward_rules(name)
    out: dict[str, list[str]] = {}
    for table in ("nat", "filter"):
        mine = [r for r in rules if r.table == table]
        if not mine:
            continue
        lines = [f"-D {r.chain} {r.spec}" for r in mine]
        # Chains and jumps go with the last forward of the table, if nobody else put rules there.
        for builtin, own in OWN_CHAINS[table]:
            chain = rs.chain(table, own)
            others: list[Rule] = [r for r in chain.rules if r.forward_name != name] if chain else []
            if chain is not None and not others:
                if _has_jump(rs, table, builtin, own):
                    lines.append(f"-D {builtin} {jump_rule(table, builtin, own).spec}")
                lines.append(f"-X {own}")
        out[table] = lines
    return out


def _commit_all(backend: Backend, per_table: dict[str, list[str]], order: tuple[str, ...]) -> None:
    """Commit table by table; if one fails, undo the ones already committed and re-raise."""
    backend.validate(per_table)
    done: list[str] = []
    for table in order:
        if table not in per_table:
            continue
        try:
            backend.commit(table, per_table[table])
        except BackendError as exc:
            undone = _undo(backend, per_table, done)
            raise BackendError(exc.message, undone) from None
        done.append(table)
        journal.fault(f"committed-{table}")


def _undo(backend: Backend, per_table: dict[str, list[str]], done: list[str]) -> str:
    failed: list[str] = []
    for table in reversed(done):
        try:
            backend.commit(table, inverse_lines(per_table[table]))
        except BackendError:
            failed.append(table)
    if failed:
        return f"could not undo the {', '.join(failed)} table; run `natbox list` and check"
    if done:
        return f"the {', '.join(done)} table was undone: nothing changed"
    return "nothing was changed"


def flush_flows(fwd: Forward, runner: Runner) -> list[str]:
    """Delete conntrack entries to the listen address, which would bypass the new DNAT."""
    notes: list[str] = []
    for proto in fwd.protocols:
        ports = range(fwd.listen.port, fwd.listen.port_end + 1)
        port_args = (
            [["--orig-port-dst", str(p)] for p in ports] if len(ports) <= _CT_PORT_LIMIT else [[]]
        )
        for extra in port_args:
            argv = ["conntrack", "-D", "-p", proto, "--orig-dst", str(fwd.listen.ip), *extra]
            try:
                res = runner.run(argv)
            except NatboxError as exc:
                return [f"stale flows not cleared: {exc.message}"]
            # conntrack exits 1 when there was nothing to delete; that is the usual, quiet case.
            if "flow entries have been deleted" in res.stderr and not res.stderr.startswith(
                "conntrack v"
            ):
                count = res.stderr.split()[0]
                if count.isdigit() and int(count):
                    notes.append(f"cleared {count} stale {proto} flows to {fwd.listen.ip}")
    return notes


def mark_forwarding_enabled() -> None:
    """Remember that natbox turned ip_forward on (natbox save then persists it)."""
    from natbox.watchdog import state_dir

    try:
        state_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
        (state_dir() / "ip_forward-by-natbox").write_text("1\n")
    except OSError:
        pass


def forwarding_enabled_by_natbox() -> bool:
    """Whether natbox turned ip_forward on at some point."""
    from natbox.watchdog import state_dir

    return (state_dir() / "ip_forward-by-natbox").exists()


def cleanup_empty(backend: Backend) -> list[str]:
    """Drop natbox's chains and jumps where no forward has rules left (after a crash mid-setup)."""
    rs = backend.read(natbox_only=True)
    done: list[str] = []
    for table in ("nat", "filter"):
        lines: list[str] = []
        for builtin, own in OWN_CHAINS[table]:
            chain = rs.chain(table, own)
            if chain is not None and chain.rules:
                continue
            if _has_jump(rs, table, builtin, own):
                lines.append(f"-D {builtin} {jump_rule(table, builtin, own).spec}")
            if chain is not None:
                lines.append(f"-X {own}")
        if lines:
            backend.commit(table, lines)
            done.append(table)
    return done


def families(backend: Backend) -> list[Backend]:
    """The backend for IPv4, and for IPv6 where ip6tables is installed."""
    out = [backend.for_family(4)]
    v6 = backend.for_family(6)
    if shutil.which(v6.tool("save")):
        out.append(v6)
    return out


def locate(backend: Backend, name: str) -> tuple[Backend, Ruleset] | None:
    """The family-bound backend and ruleset that hold forward `name`, if any."""
    for bound in families(backend):
        rs = bound.read(natbox_only=True)
        if name in rs.forward_names():
            return bound, rs
    return None


def all_forward_states(backend: Backend, natbox_only: bool = True) -> list[ForwardState]:
    """natbox's forwards of both IP versions."""
    return [s for b in families(backend) for s in forward_states(b.read(natbox_only=natbox_only))]


def recover(backend: Backend) -> str | None:
    """Finish or undo the operation natbox died in; say which (None when there was none)."""
    entry = journal.pending()
    if entry is None:
        return None
    if entry.forward is not None and str(entry.forward.get("listen", "")).startswith("["):
        backend = backend.for_family(6)  # an IPv6 endpoint is written [addr]:port
    elif entry.forward is None:
        found = locate(backend, entry.name)
        backend = found[0] if found else backend.for_family(4)
    else:
        backend = backend.for_family(4)
    rs = backend.read(natbox_only=True)
    state = next((s for s in forward_states(rs) if s.name == entry.name), None)
    if entry.op == "apply":
        kept = state is not None and state.intact and state.forward is not None
        if (
            kept
            and state is not None
            and state.forward is not None
            and state.forward.to_dict() == entry.forward
        ):
            message = f"the interrupted apply of {entry.name} had finished: kept it"
        else:
            if state is not None:
                _commit_all(backend, remove_lines(rs, entry.name), ("nat", "filter"))
            cleanup_empty(backend)
            message = f"undid the interrupted apply of {entry.name}: the rules are as before it"
    else:
        if state is not None:
            _commit_all(backend, remove_lines(rs, entry.name), ("nat", "filter"))
            message = f"completed the interrupted removal of {entry.name}"
        else:
            message = f"the interrupted removal of {entry.name} had finished"
        cleanup_empty(backend)
    journal.end()
    return message


def enable_forwarding(root: Path = PROC_SYS, family: int = 4) -> None:
    """Turn on forwarding at runtime (persistence is `natbox save`'s job)."""
    key = "net/ipv6/conf/all/forwarding" if family == 6 else "net/ipv4/ip_forward"
    (root / key).write_text("1\n")


def apply(
    backend: Backend,
    fwd: Forward,
    *,
    enable_ip_forward: bool = False,
    runner: Runner | None = None,
) -> Outcome:
    """Add `fwd` to the kernel: all of its rules or none, checked by reading them back."""
    require_root()
    start = time.perf_counter()
    runner = runner or backend.runner
    backend = backend.for_family(fwd.family)
    forwarding = ip_forward_enabled(family=fwd.family)
    if not forwarding and not enable_ip_forward:
        version = "IPv6" if fwd.family == 6 else "IPv4"
        raise NatboxError(
            f"{version} forwarding is off on this box, so nothing would be forwarded",
            "pass --enable-forwarding (turns it on until reboot)",
        )
    for other in families(backend):
        if other.family != fwd.family and fwd.name in other.read(natbox_only=True).forward_names():
            raise ConflictError(
                f"a forward named {fwd.name} already exists (IPv{other.family})",
                f"pick another --name, or `natbox remove {fwd.name}` first",
            )
    rs = backend.read(natbox_only=True)
    conflicts(rs, fwd)
    plan = build_plan(fwd)
    per_table = apply_lines(rs, plan)
    journal.begin("apply", fwd.name, fwd)
    journal.fault("journal-written")
    try:
        _commit_all(backend, per_table, TABLE_ORDER)
    except BaseException:
        journal.end()  # undone (or nothing done): the state before
        raise
    after = backend.read(natbox_only=True)
    state = next((s for s in forward_states(after) if s.name == fwd.name), None)
    if state is None or not state.intact or state.forward != fwd:
        undone = _undo(backend, per_table, [t for t in TABLE_ORDER if t in per_table])
        detail = state.problems[0] if state and state.problems else "its rules did not read back"
        journal.end()
        raise BackendError(
            f"the kernel did not keep forward {fwd.name} as planned: {detail}", undone
        )
    journal.fault("before-journal-end")
    journal.end()
    out = Outcome("apply", fwd.name, backend.label, per_table)
    if not forwarding:
        enable_forwarding(family=fwd.family)
        mark_forwarding_enabled()
        out.notes.append("enabled net.ipv4.ip_forward (until reboot; natbox save keeps it)")
    out.notes.extend(flush_flows(fwd, runner))
    out.seconds = time.perf_counter() - start
    return out


def remove(backend: Backend, name: str) -> Outcome:
    """Delete exactly the rules tagged natbox:<name>, as the kernel has them now."""
    require_root()
    start = time.perf_counter()
    found = locate(backend, name)
    if found is None:
        known = ", ".join(s.name for s in all_forward_states(backend)) or "none"
        raise NotFoundError(
            f"there is no forward named {name}", f"natbox list shows them (now: {known})"
        )
    backend, rs = found
    per_table = remove_lines(rs, name)
    journal.begin("remove", name, None)
    journal.fault("journal-written")
    try:
        _commit_all(backend, per_table, ("nat", "filter"))
    except BaseException:
        journal.end()
        raise
    journal.fault("before-journal-end")
    journal.end()
    left = backend.read(natbox_only=True).forward_rules(name)
    if left:
        raise BackendError(
            f"{len(left)} rules of {name} are still there", "run natbox remove again"
        )
    return Outcome("remove", name, backend.label, per_table, seconds=time.perf_counter() - start)


def preview_remove(backend: Backend, name: str) -> dict[str, list[str]]:
    """The lines `remove` would commit, without committing them."""
    found = locate(backend, name)
    if found is None:
        raise NotFoundError(f"there is no forward named {name}", "natbox list shows them")
    return remove_lines(found[1], name)


def preview_apply(backend: Backend, fwd: Forward) -> dict[str, list[str]]:
    """The lines `apply` would commit, after the same conflict checks, without committing."""
    rs = backend.for_family(fwd.family).read(natbox_only=True)
    conflicts(rs, fwd)
    return apply_lines(rs, build_plan(fwd))
