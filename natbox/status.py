"""Provides the snapshot `natbox list` prints and the dashboard shows: forwards, foreign rules, facts."""

from __future__ import annotations

from natbox.backends import Backend
from natbox.backends.detect import Detection
from natbox.model import Chain, Rule, Ruleset
from natbox.ruleset import ForwardState, forward_states, tampering
from natbox.system import ip_forward_enabled

# The built-in chains a NAT box's admin cares about.
WATCHED: dict[str, tuple[str, ...]] = {
    "nat": ("PREROUTING", "POSTROUTING", "OUTPUT"),
    "filter": ("FORWARD",),
}


def _rule_dict(r: Rule) -> dict[str, object]:
    return {
        "table": r.table,
        "chain": r.chain,
        "rule": r.text,
        "owner": r.owner,
        "packets": r.packets,
        "bytes": r.bytes,
    }


def _forward_dict(s: ForwardState) -> dict[str, object]:
    base: dict[str, object] = s.forward.to_dict() if s.forward else {"name": s.name}
    base.update(intact=s.intact, problems=s.problems, rules=[_rule_dict(r) for r in s.rules])
    return base


def display_chains(rs: Ruleset) -> list[tuple[str, Chain]]:
    """(table, chain) the dashboard shows: the watched built-in chains, then natbox's own."""
    out = [
        (table, chain)
        for table, names in WATCHED.items()
        for name in names
        if (chain := rs.chain(table, name)) is not None
    ]
    for table in ("nat", "filter"):
        t = rs.tables.get(table)
        if t:
            out.extend((table, c) for n, c in t.chains.items() if n.startswith("NATBOX-"))
    return out


def foreign_rules(rs: Ruleset) -> list[Rule]:
    """Rules natbox does not own in the NAT tables and the FORWARD path (jumps followed one level)."""
    out: list[Rule] = []
    for table, chains in WATCHED.items():
        for name in chains:
            chain = rs.chain(table, name)
            if chain:
                out.extend(r for r in chain.rules if not r.owner.startswith("natbox"))
    return out


def _v6_states(backend: Backend) -> list[ForwardState]:
    from natbox.txn import families

    return [s for b in families(backend) if b.family == 6 for s in forward_states(b.read(True))]


def snapshot(backend: Backend, det: Detection, rs: Ruleset | None = None) -> dict[str, object]:
    """Everything `natbox list --json` reports."""
    rs = rs if rs is not None else backend.read()
    policies = {
        f"{t}/{c}": chain.policy
        for t, chains in WATCHED.items()
        for c in chains
        if (chain := rs.chain(t, c)) is not None
    }
    return {
        "backend": backend.label,
        "iptables": det.active,
        "ip_forward": ip_forward_enabled(),
        "policies": policies,
        "forwards": [_forward_dict(s) for s in [*forward_states(rs), *_v6_states(backend)]],
        "foreign": [_rule_dict(r) for r in foreign_rules(rs)],
        "warnings": list(dict.fromkeys([*det.warnings, *rs.warnings, *tampering(rs)])),
    }
