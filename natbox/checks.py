"""Provides preflight findings: what would make a forward fail, named before it is applied.

Each finding has an id, a severity (error blocks apply; warning; info), a one-line message naming the
real objects, and a fix. The diagnosis issue adds most checks; these are the ones the wizard needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from natbox.errors import ConflictError, NatboxError
from natbox.model import Forward, Ruleset
from natbox.system import Route

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Finding:
    """One thing preflight noticed."""

    id: str
    severity: str
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready."""
        return {"id": self.id, "severity": self.severity, "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class Facts:
    """What preflight looks at, gathered by the engine (so checks stay pure and testable)."""

    ip_forward: bool
    local: dict[IPv4Address, str]
    """Local address -> interface."""
    route: Route | None
    """The route to the backend, None when there is none."""
    route_error: str = ""
    mtus: dict[str, int] | None = None


def preflight(fwd: Forward, rs: Ruleset, facts: Facts) -> list[Finding]:
    """Findings for adding `fwd` to a box with ruleset `rs`, errors first."""
    from natbox.txn import conflicts  # txn imports backends; keep this module light

    out: list[Finding] = []
    try:
        conflicts(rs, fwd)
    except ConflictError as exc:
        out.append(Finding("conflict", ERROR, exc.message, exc.hint))
    if not facts.ip_forward:
        out.append(
            Finding(
                "ip-forward-off",
                WARNING,
                "IPv4 forwarding is off: this box routes nothing between its interfaces",
                "tick 'enable ip_forward' (sysctl net.ipv4.ip_forward=1)",
            )
        )
    if fwd.listen.ip not in facts.local:
        out.append(
            Finding(
                "listen-not-local",
                WARNING,
                f"{fwd.listen.ip} is not an address of this box; clients must route it here",
                "pick one of this box's addresses, unless the address is routed to this box",
            )
        )
    if facts.route is None:
        out.append(
            Finding(
                "no-route",
                ERROR,
                f"no route to the backend {fwd.backend.ip}{': ' + facts.route_error if facts.route_error else ''}",
                f"add a route to {fwd.backend.ip} or fix the backend address",
            )
        )
    else:
        listen_dev = facts.local.get(fwd.listen.ip)
        if listen_dev is not None and facts.route.dev == listen_dev:
            out.append(
                Finding(
                    "hairpin",
                    WARNING,
                    f"the backend {fwd.backend.ip} is reached through {listen_dev}, the listen side",
                    "clients on that side need hairpin NAT (a later natbox option)",
                )
            )
        if fwd.snat is not None and fwd.snat not in facts.local:
            out.append(
                Finding(
                    "snat-not-local",
                    ERROR,
                    f"SNAT source {fwd.snat} is not an address of this box",
                    f"use {facts.route.src} (the address the route to the backend uses) or masquerade",
                )
            )
        mtus = facts.mtus or {}
        if listen_dev and not fwd.mss_clamp and "tcp" in fwd.protocols:
            a, b = mtus.get(listen_dev), mtus.get(facts.route.dev)
            if a and b and a != b:
                out.append(
                    Finding(
                        "mtu-mismatch",
                        WARNING,
                        f"MTUs differ: {listen_dev} {a}, {facts.route.dev} {b}; big TCP segments may stall",
                        "tick 'MSS clamp' (TCPMSS --clamp-mss-to-pmtu)",
                    )
                )
    policy = rs.chain("filter", "FORWARD")
    if policy is not None and policy.policy == "DROP":
        out.append(
            Finding(
                "forward-drop",
                INFO,
                "FORWARD policy is DROP; natbox's accept and return rules come first (jump at 1)",
                "nothing to do",
            )
        )
    order = {ERROR: 0, WARNING: 1, INFO: 2}
    return sorted(out, key=lambda f: order[f.severity])


def blocking(findings: list[Finding]) -> list[Finding]:
    """The findings that stop an apply."""
    return [f for f in findings if f.severity == ERROR]


def raise_if_blocked(findings: list[Finding]) -> None:
    """Turn the first error into a NatboxError (for the CLI)."""
    for f in blocking(findings):
        raise NatboxError(f.message, f.fix)
