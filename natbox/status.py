"""Provides the snapshot `natbox list` prints and the dashboard shows: forwards, foreign rules, facts."""

from __future__ import annotations

from natbox import disabled
from natbox.backends import Backend, families
from natbox.backends.detect import Detection
from natbox.errors import NatboxError
from natbox.model import Chain, Forward, Rule, Ruleset
from natbox.ruleset import WATCHED, ForwardState, forward_states, tampering
from natbox.system import ip_forward_enabled

# The built-in chains a NAT box's admin cares about.


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


def _v6_ruleset(backend: Backend) -> Ruleset | None:
    """The IPv6 ruleset as snapshot() reads it (see listing_read), where ip6tables is installed."""
    return next((listing_read(b) for b in families(backend) if b.family == 6), None)


def listing_read(backend: Backend) -> Ruleset:
    """What the snapshot needs of a ruleset: natbox's rules (every line naming natbox, so every
    tampering warning is found) and every rule of the WATCHED chains (the foreign rules shown);
    the thousands of rules of other chains (kube-proxy's) are neither shown nor classified. The
    save started early for `natbox list` (natbox.prefetch) is used when there is one."""
    return backend.read(natbox_only=True, keep=WATCHED, early=True)


def _chains(rs: Ruleset, family: int) -> list[dict[str, object]]:
    return [
        {
            "family": family,
            "table": table,
            "chain": c.name,
            "policy": c.policy,
            "rules": len(c.rules),
        }
        for table, c in display_chains(rs)
    ]


def disabled_forwards(live: set[str]) -> tuple[list[Forward], list[str]]:
    """The disabled forwards (those not back in the kernel under their name), and a warning when
    the list cannot be read."""
    try:
        return [f for f in disabled.load() if f.name not in live], []
    except (NatboxError, OSError) as exc:
        why = exc.one_line().removeprefix("natbox: ") if isinstance(exc, NatboxError) else str(exc)
        return [], [f"the disabled forwards cannot be read: {why}"]


def snapshot(backend: Backend, det: Detection, rs: Ruleset | None = None) -> dict[str, object]:
    """Everything `natbox list --json` reports (from `rs` when given: a whole ruleset or a
    listing_read)."""
    rs = rs if rs is not None else listing_read(backend)
    policies = {
        f"{t}/{c}": chain.policy
        for t, chains in WATCHED.items()
        for c in chains
        if (chain := rs.chain(t, c)) is not None
    }
    rs6 = _v6_ruleset(backend)
    v4_states = forward_states(rs)
    v6_states = forward_states(rs6) if rs6 is not None else []
    held, held_warnings = disabled_forwards({s.name for s in [*v4_states, *v6_states]})
    return {
        "backend": backend.label,
        "iptables": det.active,
        "ip_forward": ip_forward_enabled(),
        "ip6_forward": ip_forward_enabled(family=6),
        "policies": policies,
        "policies6": {
            f"{t}/{c}": chain.policy
            for t, chains in WATCHED.items()
            for c in chains
            if rs6 is not None and (chain := rs6.chain(t, c)) is not None
        },
        "chains": [*_chains(rs, 4), *(_chains(rs6, 6) if rs6 is not None else [])],
        "forwards": [_forward_dict(s) for s in [*v4_states, *v6_states]],
        "disabled": [{**f.to_dict(), "disabled": True} for f in held],
        "foreign": [{**_rule_dict(r), "family": 4} for r in foreign_rules(rs)]
        + [{**_rule_dict(r), "family": 6} for r in (foreign_rules(rs6) if rs6 else [])],
        "warnings": list(
            dict.fromkeys(
                [
                    *det.warnings,
                    *rs.warnings,
                    *tampering(rs, v4_states),
                    *(rs6.warnings if rs6 else []),
                    *(tampering(rs6, v6_states) if rs6 else []),
                    *held_warnings,
                ]
            )
        ),
    }
