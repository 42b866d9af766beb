"""Provides the diagnosis: every classic port-forward failure, named before it bites, with the fix.

A finding has an id, a severity (error: blocks apply unless --force; warning; info), a one-line message
naming the real objects, and a fix. The checks are pure functions of the forward, the ruleset and the
Facts the engine gathered (natbox/diagnose.py reads them), so each one is unit-testable and each has a
lab test with the real broken setup. A healthy box produces no warning and no error.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from natbox.errors import ConflictError, NatboxError
from natbox.model import Forward, IPAddress, Rule, Ruleset
from natbox.plan import jump_rule
from natbox.ruleset import conflicts
from natbox.system import Route

ERROR, WARNING, INFO = "error", "warning", "info"
_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}


@dataclass(frozen=True)
class Finding:
    """One thing the diagnosis noticed."""

    id: str
    severity: str
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready."""
        return {"id": self.id, "severity": self.severity, "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class Facts:
    """What the checks look at, gathered by the engine (so the checks stay pure)."""

    ip_forward: bool
    local: dict[IPAddress, str]
    """Local address -> interface."""
    route: Route | None
    """The route to the backend, None when there is none."""
    route_error: str = ""
    mtus: dict[str, int] = field(default_factory=dict)
    listeners: frozenset[tuple[str, int, str]] = frozenset()
    """Local listening sockets: (address or 0.0.0.0, port, tcp|udp)."""
    rp_filter: dict[str, int] = field(default_factory=dict)
    """Effective rp_filter per interface (max of all and the interface: 1 = strict)."""
    client_routes: dict[str, str] = field(default_factory=dict)
    """Allowed client network -> interface the route back to it leaves through."""
    backend_answers: bool | None = None
    """A TCP connect to the backend succeeded (None: not tried, e.g. UDP)."""
    backend_error: str = ""
    stale_flows: int = 0
    """Flows to the listen address that bypass a DNAT (created before it)."""
    other_side: list[str] = field(default_factory=list)
    """Warnings about rules in the iptables flavour natbox does not write."""
    nft_drops: list[str] = field(default_factory=list)
    """Native nftables forward-hook chains that can drop, as `table/chain: why`."""


def _tokens(rule: Rule) -> list[str]:
    # shlex only when quoting is present: it is 50x slower, and kube hosts have thousands of DNATs.
    if '"' not in rule.spec:
        return rule.spec.split()
    try:
        return shlex.split(rule.spec)
    except ValueError:
        return rule.spec.split()


def _opt(tokens: list[str], flag: str) -> str | None:
    for i, tok in enumerate(tokens[:-1]):
        if tok == flag and (i == 0 or tokens[i - 1] != "!"):
            return tokens[i + 1]
    return None


def _matches_listen(rule: Rule, fwd: Forward) -> bool:
    """Would this (foreign) rule match packets to the forward's listen ip:port/proto?"""
    t = _tokens(rule)
    dst = _opt(t, "-d")
    if dst is not None and dst.removesuffix("/32").removesuffix("/128") != str(fwd.listen.ip):
        return False
    proto = _opt(t, "-p")
    if proto is not None and proto not in fwd.protocols:
        return False
    dport = _opt(t, "--dport") or _opt(t, "--dports")
    if dport is None:
        return True  # no port match: every port of that address
    for part in dport.split(","):
        lo, _, hi = part.partition(":")
        if lo.isdigit() and int(lo) <= fwd.listen.port_end and fwd.listen.port <= int(hi or lo):
            return True
    return False


def _before_jump(
    rs: Ruleset, table: str, builtin: str, own: str
) -> tuple[list[tuple[int, Rule]], bool]:
    """Foreign rules of a built-in chain ahead of natbox's jump, and whether the jump exists."""
    chain = rs.chain(table, builtin)
    if chain is None:
        return [], False
    want = jump_rule(table, builtin, own).save_line
    ahead: list[tuple[int, Rule]] = []
    for i, rule in enumerate(chain.rules, 1):
        if rule.text == want:
            return ahead, True
        ahead.append((i, rule))
    return ahead, False


def diagnose(fwd: Forward, rs: Ruleset, facts: Facts, *, existing: bool = False) -> list[Finding]:
    """Findings for `fwd`: a forward about to be added (existing=False) or one in the kernel."""

    out: list[Finding] = []
    add = out.append
    if not existing:
        try:
            conflicts(rs, fwd)
        except ConflictError as exc:
            add(Finding("conflict", ERROR, exc.message, exc.hint))

    if not facts.ip_forward:
        add(
            Finding(
                "ip-forward-off",
                ERROR if existing else WARNING,
                f"IPv{fwd.family} forwarding is off: this box routes nothing between its interfaces",
                "sysctl -w net.ipv4.ip_forward=1 (natbox add --enable-forwarding; the wizard's tick box)",
            )
        )

    ahead, has_jump = _before_jump(rs, "filter", "FORWARD", "NATBOX-FORWARD")
    if has_jump or existing:
        for i, rule in ahead:
            target = _opt(_tokens(rule), "-j")
            if target in ("DROP", "REJECT") and (
                not _opt(_tokens(rule), "-d") or _matches_backend(rule, fwd)
            ):
                add(
                    Finding(
                        "drop-before-jump",
                        ERROR,
                        f"FORWARD rule {i} ({rule.spec}) drops before natbox's jump",
                        f"iptables -D FORWARD {i} if it is stale, or natbox remove + add to put the jump first",
                    )
                )
    policy = rs.chain("filter", "FORWARD")
    if policy is not None and policy.policy == "DROP":
        add(
            Finding(
                "forward-policy-drop",
                INFO,
                "FORWARD policy is DROP; natbox's accept and return rules come first (jump at 1)",
                "nothing to do",
            )
        )
    if existing and not has_jump:
        add(
            Finding(
                "jump-missing", ERROR, "natbox's jump from FORWARD is missing", "natbox restore"
            )
        )

    if fwd.listen.ip not in facts.local:
        add(
            Finding(
                "listen-not-local",
                WARNING,
                f"{fwd.listen.ip} is not an address of this box; clients' packets must be routed here",
                "pick one of this box's addresses, unless that address is routed to this box",
            )
        )
    if fwd.listen.ip in facts.local and not fwd.local:
        add(
            Finding(
                "local-not-forwarded",
                INFO,
                f"connections made on this box itself to {fwd.listen} are not forwarded "
                "(they never pass PREROUTING)",
                "add --local (the wizard's 'this box's own connections') if the box should reach it too",
            )
        )
    for ip, port, proto in sorted(facts.listeners):
        if (
            proto in fwd.protocols
            and fwd.listen.port <= port <= fwd.listen.port_end
            and ip in (str(fwd.listen.ip), "0.0.0.0")
        ):
            add(
                Finding(
                    "listen-port-in-use",
                    WARNING,
                    f"a local process listens on {ip}:{port}/{proto}; from outside, the DNAT takes its "
                    f"traffic on {fwd.listen.ip}",
                    "pick another listen port, or accept that the local service is unreachable there",
                )
            )

    nat_ahead, _ = _before_jump(rs, "nat", "PREROUTING", "NATBOX-PREROUTING")
    for rule in rs.rules("nat"):
        if rule.owner.startswith("natbox") or " -j DNAT " not in f" {rule.spec} ":
            continue
        if _matches_listen(rule, fwd):
            first = any(r is rule for _, r in nat_ahead)
            add(
                Finding(
                    "foreign-dnat",
                    ERROR if first else WARNING,
                    f"another DNAT already matches {fwd.listen}: {rule.chain}: {rule.spec}",
                    "remove that rule, or listen on another port",
                )
            )

    if facts.route is None:
        detail = f": {facts.route_error}" if facts.route_error else ""
        add(
            Finding(
                "no-route",
                ERROR,
                f"no route to the backend {fwd.backend.ip}{detail}",
                f"add a route to {fwd.backend.ip} (ip route add ...), or fix the backend address",
            )
        )
    else:
        listen_dev = facts.local.get(fwd.listen.ip)
        if listen_dev is not None and facts.route.dev == listen_dev:
            add(
                Finding(
                    "hairpin",
                    INFO,
                    f"the backend {fwd.backend.ip} is on the listen side ({listen_dev}): clients "
                    "there work too, because natbox SNATs every flow of the forward (hairpin); the "
                    "backend sees this box, not the client",
                    "nothing to do; to see client addresses, put the backend on another interface",
                )
            )
        if fwd.snat is not None and fwd.snat not in facts.local:
            add(
                Finding(
                    "snat-not-local",
                    ERROR,
                    f"SNAT source {fwd.snat} is not an address of this box",
                    f"use {facts.route.src} (the route to the backend leaves from it) or masquerade",
                )
            )
        a, b = facts.mtus.get(listen_dev or ""), facts.mtus.get(facts.route.dev)
        if a and b and a != b and not fwd.mss_clamp and "tcp" in fwd.protocols:
            add(
                Finding(
                    "mtu-mismatch",
                    WARNING,
                    f"MTUs differ ({listen_dev} {a}, {facts.route.dev} {b}) and no MSS clamp: "
                    "big TCP segments can stall",
                    "add the MSS clamp (--mss-clamp; the wizard's tick box)",
                )
            )
        if listen_dev is not None and facts.rp_filter.get(listen_dev) == 1:
            for net, dev in sorted(facts.client_routes.items()):
                if dev != listen_dev:
                    add(
                        Finding(
                            "rp-filter-strict",
                            WARNING,
                            f"strict rp_filter on {listen_dev}, but the route back to clients {net} "
                            f"leaves via {dev}: their packets are dropped on arrival",
                            f"sysctl -w net.ipv4.conf.{listen_dev}.rp_filter=2 (loose), or fix the route",
                        )
                    )
    if facts.backend_answers is False:
        add(
            Finding(
                "backend-silent",
                WARNING,
                f"the backend {fwd.backend.ip}:{fwd.backend.port} did not answer a TCP connect from this box"
                f"{': ' + facts.backend_error if facts.backend_error else ''}",
                "is the service running and listening there? (a firewall on the backend?)",
            )
        )
    elif facts.backend_answers is None and fwd.proto == "udp":
        add(
            Finding(
                "backend-udp",
                INFO,
                f"UDP backend {fwd.backend}: it cannot be probed without a reply protocol",
                "test from a client once the forward is up",
            )
        )
    for text in facts.other_side:
        add(
            Finding(
                "both-flavours",
                WARNING,
                text,
                "clean up the iptables flavour this box does not use (iptables-legacy-save shows it)",
            )
        )
    for text in facts.nft_drops:
        add(
            Finding(
                "nft-forward-drop",
                WARNING,
                f"native nftables chain {text}: an iptables ACCEPT is not final there",
                "allow the forward in that table too (firewalld: a policy or rich rule)",
            )
        )
    if rs.chain("filter", "DOCKER-USER") is not None:
        add(
            Finding(
                "docker",
                INFO,
                "Docker is here: natbox's FORWARD jump sits first, before DOCKER-USER; Docker re-adds its "
                "jumps on restart but never removes natbox's",
                "nothing to do",
            )
        )
    if facts.stale_flows:
        add(
            Finding(
                "stale-flows",
                INFO if not existing else WARNING,
                f"{facts.stale_flows} conntrack flows to {fwd.listen} were made before the DNAT and bypass it",
                "natbox add clears them; otherwise natbox conntrack kill --tuple ... (or wait for the timeout)",
            )
        )
    return sorted(out, key=lambda f: _ORDER[f.severity])


def _matches_backend(rule: Rule, fwd: Forward) -> bool:
    dst = _opt(_tokens(rule), "-d")
    return dst is None or dst.removesuffix("/32").removesuffix("/128") == str(fwd.backend.ip)


def preflight(fwd: Forward, rs: Ruleset, facts: Facts) -> list[Finding]:
    """Findings before adding `fwd` (the wizard's preview, `natbox check`)."""
    return diagnose(fwd, rs, facts, existing=False)


def blocking(findings: list[Finding]) -> list[Finding]:
    """The findings that stop an apply."""
    return [f for f in findings if f.severity == ERROR]


def raise_if_blocked(findings: list[Finding]) -> None:
    """Turn the first error into a NatboxError (for the CLI)."""
    for f in blocking(findings):
        raise NatboxError(f.message, f.fix + " (or --force)")


def exit_code(findings: list[Finding]) -> int:
    """0 clean (info only), 1 when there are warnings or errors."""
    return 1 if any(f.severity in (ERROR, WARNING) for f in findings) else 0
