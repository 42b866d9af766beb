"""Provides the diagnosis: every classic port-forward failure, named before it bites, with the fix.

A finding has an id, a Severity (error: blocks apply unless --force; warning; info), a one-line message
naming the real objects, a fix, and at most five examples (with how many more there are): one finding
per cause, so a host with 2,000 kube services prints one line, not 2,000. Each `check_*` function is a
pure function of a Context (the forward, the ruleset already read, and the Facts natbox/facts.py
gathered), so each one is unit-testable, and each has a lab test with the real broken setup. Questions
of the form "does some other rule see this traffic first" go through natbox/pathmatch.py, which
follows jumps with their conditions: a rule natbox cannot evaluate is reported as "may match" at info
level, never as a warning. A healthy box produces no warning and no error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from natbox import pathmatch
from natbox.errors import ConflictError, NatboxError
from natbox.facts import Facts
from natbox.model import Forward, Rule, Ruleset
from natbox.pathmatch import Hit, Match
from natbox.plan import jump_rule
from natbox.ruleset import conflicts

__all__ = [
    "ERROR",
    "INFO",
    "WARNING",
    "Context",
    "Facts",
    "Finding",
    "Severity",
    "blocking",
    "diagnose",
    "exit_code",
    "preflight",
    "raise_if_blocked",
    "worst",
]

EXAMPLES = 5


class Severity(StrEnum):
    """How bad a finding is; its value is the name users see (and --json prints)."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for the worst (error), 2 for info: sort by it."""
        return _RANK[self]


_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO


@dataclass(frozen=True)
class Finding:
    """One thing the diagnosis noticed, with up to five examples and how many more there are."""

    id: str
    severity: Severity
    message: str
    fix: str
    examples: tuple[str, ...] = ()
    more: int = 0

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        out: dict[str, object] = {
            "id": self.id,
            "severity": str(self.severity),
            "message": self.message,
            "fix": self.fix,
        }
        if self.examples:
            out["examples"] = list(self.examples)
            out["more"] = self.more
        return out

    def lines(self) -> list[str]:
        """The examples as printed under the message, with `and N more` last."""
        return [*self.examples, *([f"and {self.more} more"] if self.more else [])]


def grouped(
    id: str, severity: Severity, message: str, fix: str, examples: Iterable[str]
) -> Finding:
    """One finding for a cause with many instances: the first five as examples, the rest counted."""
    items = list(dict.fromkeys(examples))
    return Finding(
        id, severity, message, fix, tuple(items[:EXAMPLES]), max(0, len(items) - EXAMPLES)
    )


@dataclass(frozen=True)
class Context:
    """What every check gets: the forward, the ruleset already read, the facts, and which question."""

    fwd: Forward
    rs: Ruleset
    facts: Facts
    existing: bool = False
    """A forward in the kernel (doctor, dashboard) rather than one about to be added (check, add)."""
    _jumps: dict[tuple[str, str], int | None] = field(default_factory=dict, compare=False)

    @property
    def listen_dev(self) -> str | None:
        """The interface holding the listen address, if it is local."""
        return self.facts.local.get(self.fwd.listen.ip)

    @property
    def backend_dev(self) -> str | None:
        """The interface the route to the backend leaves through."""
        return self.facts.route.dev if self.facts.route is not None else None

    def jump_at(self, table: str, builtin: str, own: str) -> int | None:
        """1-based position of natbox's jump in a built-in chain (None: not there)."""
        key = (table, builtin)
        if key not in self._jumps:
            want = jump_rule(table, builtin, own).save_line
            chain = self.rs.chain(table, builtin)
            self._jumps[key] = next(
                (i for i, r in enumerate(chain.rules if chain else [], 1) if r.text == want), None
            )
        return self._jumps[key]


def _natbox_own(rule: Rule) -> bool:
    return rule.owner.startswith("natbox")


@dataclass
class Scan:
    """Rules with chosen targets that the forward's packets meet in one built-in chain."""

    sure: list[Hit] = field(default_factory=list)
    """They match the forward's traffic from any client (all of it, or part: some ports, ...)."""
    some_clients: list[Hit] = field(default_factory=list)
    """They match only the traffic of particular clients (e.g. `-s 10.1.2.3`)."""
    maybe: list[Hit] = field(default_factory=list)
    """natbox cannot evaluate all their matches."""


def scan(
    c: Context,
    table: str,
    builtin: str,
    packets: Iterable[pathmatch.Packet],
    targets: frozenset[str],
    before: int | None = None,
) -> Scan:
    """The rules (with a target in `targets`) the packets meet; only before position `before`."""
    out = Scan()
    for pkt in packets:
        typical: set[Rule] = set()
        for probe in (pkt.typical(), pkt):
            for hit in pathmatch.walk(c.rs, table, builtin, probe, skip=_natbox_own):
                if before is not None and hit.top >= before:
                    break
                if hit.parsed.target not in targets or hit.rule in typical:
                    continue
                if hit.match is Match.MAYBE:
                    if (
                        probe is pkt
                        and hit not in out.maybe
                        and all(h.rule is not hit.rule for h in out.maybe)
                    ):
                        out.maybe.append(hit)
                elif probe is not pkt:
                    typical.add(hit.rule)
                    out.sure.append(hit)
                elif all(h.rule is not hit.rule for h in out.some_clients):
                    out.some_clients.append(hit)
    # One rule, one cause: a rule that surely matches one direction is not repeated as partial.
    sure = {h.rule for h in out.sure}
    out.some_clients = [h for h in out.some_clients if h.rule not in sure]
    partial = sure | {h.rule for h in out.some_clients}
    out.maybe = [h for h in out.maybe if h.rule not in partial]
    return out


# ---------------------------------------------------------------- the checks


def check_conflict(c: Context) -> Iterator[Finding]:
    """Another natbox forward already has this name or this listen address and port."""
    if c.existing:
        return
    try:
        conflicts(c.rs, c.fwd)
    except ConflictError as exc:
        yield Finding("conflict", ERROR, exc.message, exc.hint)


def check_ip_forward(c: Context) -> Iterator[Finding]:
    """Forwarding is off for the forward's IP version."""
    if not c.facts.ip_forward:
        key = "net.ipv6.conf.all.forwarding" if c.fwd.family == 6 else "net.ipv4.ip_forward"
        yield Finding(
            "ip-forward-off",
            ERROR if c.existing else WARNING,
            f"IPv{c.fwd.family} forwarding is off: this box routes nothing between its interfaces",
            f"sysctl -w {key}=1 (natbox add --enable-forwarding; the wizard's tick box)",
        )


def _forward_packets(c: Context) -> list[pathmatch.Packet]:
    out: list[pathmatch.Packet] = []
    for proto in c.fwd.protocols:
        out.append(pathmatch.forwarded_request(c.fwd, proto, c.listen_dev, c.backend_dev))
        out.append(pathmatch.forwarded_reply(c.fwd, proto, c.backend_dev, c.listen_dev))
    return out


def _rules(hits: list[Hit]) -> int:
    return len({h.rule for h in hits})


def check_forward_path(c: Context) -> Iterator[Finding]:
    """A DROP/REJECT in FORWARD (or in a chain it jumps to: DOCKER-USER, ufw-before-forward,
    KUBE-FORWARD, ...) that the forward's packets meet before natbox's jump; the jump itself."""
    at = c.jump_at("filter", "FORWARD", "NATBOX-FORWARD")
    chain = c.rs.chain("filter", "FORWARD")
    if chain is not None and chain.policy == "DROP":
        yield Finding(
            "forward-policy-drop",
            INFO,
            "FORWARD policy is DROP; natbox's accept and return rules come first (jump at 1)",
            "nothing to do",
        )
    if at is None:
        if c.existing:
            yield Finding(
                "jump-missing", ERROR, "natbox's jump from FORWARD is missing", "natbox restore"
            )
        return  # a new forward's jump goes in at position 1: nothing is ahead of it
    found = scan(c, "filter", "FORWARD", _forward_packets(c), pathmatch.DROPS, before=at)
    if found.sure:
        first = found.sure[0]
        yield grouped(
            "drop-before-jump",
            ERROR,
            f"{_rules(found.sure)} rule(s) drop the forward's packets before natbox's jump "
            f"(FORWARD rule {first.top} leads to the first)",
            f"delete it if it is stale (iptables -D FORWARD {first.top}), or allow the forward "
            "there; natbox remove + add puts natbox's jump first",
            (pathmatch.describe(h) for h in found.sure),
        )
    if found.some_clients:
        yield grouped(
            "drop-some-clients",
            INFO,
            f"{_rules(found.some_clients)} rule(s) before natbox's FORWARD jump drop the forward's "
            "packets of particular clients only",
            "nothing to do if those clients are meant to be blocked",
            (pathmatch.describe(h) for h in found.some_clients),
        )
    if found.maybe:
        yield grouped(
            "drop-maybe",
            INFO,
            f"{_rules(found.maybe)} rule(s) before natbox's FORWARD jump may drop the forward's "
            "packets (natbox cannot evaluate all their matches)",
            "check them if the forward does not work (natbox trace shows what happens)",
            (pathmatch.describe(h) for h in found.maybe),
        )


def check_listen(c: Context) -> Iterator[Finding]:
    """The listen address: on this box, reachable from the box itself, free of local services."""
    fwd, facts = c.fwd, c.facts
    if fwd.listen.ip not in facts.local:
        yield Finding(
            "listen-not-local",
            WARNING,
            f"{fwd.listen.ip} is not an address of this box; clients' packets must be routed here",
            "pick one of this box's addresses, unless that address is routed to this box",
        )
    elif not fwd.local:
        yield Finding(
            "local-not-forwarded",
            INFO,
            f"connections made on this box itself to {fwd.listen} are not forwarded "
            "(they never pass PREROUTING)",
            "add --local (the wizard's 'this box's own connections') if the box should reach it too",
        )
    anyaddr = "::" if fwd.family == 6 else "0.0.0.0"
    for ip, port, proto in sorted(facts.listeners):
        if (
            proto in fwd.protocols
            and fwd.listen.port <= port <= fwd.listen.port_end
            and ip in (str(fwd.listen.ip), anyaddr)
        ):
            yield Finding(
                "listen-port-in-use",
                WARNING,
                f"a local process listens on {ip}:{port}/{proto}; from outside, the DNAT takes its "
                f"traffic on {fwd.listen.ip}",
                "pick another listen port, or accept that the local service is unreachable there",
            )


def check_foreign_dnat(c: Context) -> Iterator[Finding]:
    """Another DNAT (a kube NodePort, a Docker published port, a hand-made rule) that the forward's
    clients really reach in nat PREROUTING."""
    fwd = c.fwd
    at = c.jump_at("nat", "PREROUTING", "NATBOX-PREROUTING")
    local = fwd.listen.ip in c.facts.local if c.facts.local else None
    packets = [pathmatch.client_request(fwd, p, c.listen_dev, local) for p in fwd.protocols]
    found = scan(c, "nat", "PREROUTING", packets, frozenset({"DNAT", "REDIRECT", "NETMAP"}))
    # natbox's jump goes in first (or is there already): DNATs behind it are shadowed by the forward,
    # DNATs before it take the forward's clients.
    first = [h for h in found.sure if at is not None and h.top < at]
    shadowed = [h for h in found.sure if h not in first]
    if first:
        yield grouped(
            "foreign-dnat",
            ERROR,
            f"another DNAT takes {fwd.proto} {fwd.listen} before natbox's jump: the forward never "
            "sees its clients",
            "listen on another port, or remove that rule (it belongs to "
            f"{', '.join(sorted({pathmatch.owner(h.rule) for h in first}))})",
            (pathmatch.describe(h) for h in first),
        )
    if shadowed:
        owners = ", ".join(sorted({pathmatch.owner(h.rule) for h in shadowed}))
        yield grouped(
            "foreign-dnat",
            WARNING,
            f"another DNAT ({owners}) already serves {fwd.proto} {fwd.listen}; natbox's forward "
            + ("hides it" if c.existing else "would hide it")
            + ": that service is unreachable on this address",
            "listen on another port if that service is still wanted",
            (pathmatch.describe(h) for h in shadowed),
        )
    if found.some_clients:
        yield grouped(
            "foreign-dnat-some-clients",
            INFO,
            f"{_rules(found.some_clients)} DNAT rule(s) send particular clients of {fwd.listen} "
            "elsewhere",
            "nothing to do if that is intended",
            (pathmatch.describe(h) for h in found.some_clients),
        )
    if found.maybe:
        yield grouped(
            "foreign-dnat-maybe",
            INFO,
            f"{_rules(found.maybe)} DNAT rule(s) may also match {fwd.listen} "
            "(natbox cannot evaluate all their matches)",
            "check them if clients reach the wrong service (natbox trace shows which rule wins)",
            (pathmatch.describe(h) for h in found.maybe),
        )


def check_foreign_snat(c: Context) -> Iterator[Finding]:
    """Someone else's SNAT/MASQUERADE meets the forward's traffic before natbox's own SNAT."""
    at = c.jump_at("nat", "POSTROUTING", "NATBOX-POSTROUTING")
    if at is None:
        return  # a new forward's jump goes in first
    packets = [pathmatch.to_backend(c.fwd, p, c.backend_dev) for p in c.fwd.protocols]
    found = scan(
        c, "nat", "POSTROUTING", packets, frozenset({"SNAT", "MASQUERADE", "NETMAP"}), before=at
    )
    local = {str(a) for a in c.facts.local}
    elsewhere = [
        h
        for h in found.sure
        if h.target == "SNAT"
        and (h.parsed.target_opt("--to-source") or "").split(":")[0] not in local
    ]
    if elsewhere:
        yield grouped(
            "foreign-snat",
            WARNING,
            "another rule rewrites the forward's source to an address that is not this box's, "
            "before natbox's SNAT: the backend's replies to it may not come back",
            "remove or narrow that rule; natbox remove + add puts natbox's jump first",
            (pathmatch.describe(h) for h in elsewhere),
        )
    harmless = [h for h in found.sure if h not in elsewhere]
    if harmless:
        yield grouped(
            "foreign-snat-first",
            INFO,
            "another SNAT/MASQUERADE rule meets the forward's traffic before natbox's SNAT; the "
            "backend sees the address it picks",
            "nothing to do if the forward works",
            (pathmatch.describe(h) for h in harmless),
        )
    if found.maybe:
        yield grouped(
            "foreign-snat-maybe",
            INFO,
            f"{_rules(found.maybe)} SNAT/MASQUERADE rule(s) before natbox's SNAT may meet the "
            "forward's traffic (natbox cannot evaluate all their matches)",
            "nothing to do if the forward works",
            (pathmatch.describe(h) for h in found.maybe),
        )


def check_route(c: Context) -> Iterator[Finding]:
    """The route to the backend: none, on the listen side (hairpin), and the SNAT source."""
    fwd, facts = c.fwd, c.facts
    if facts.route is None:
        detail = f": {facts.route_error}" if facts.route_error else ""
        yield Finding(
            "no-route",
            ERROR,
            f"this box has no route to the backend {fwd.backend.ip}{detail}",
            f"add a route to {fwd.backend.ip} (ip route add <its network> via <gateway>), or fix the "
            "backend address; --snat does not help while the box cannot reach it",
        )
        return
    listen_dev = c.listen_dev
    if listen_dev is not None and facts.route.dev == listen_dev:
        yield Finding(
            "hairpin",
            INFO,
            f"the backend {fwd.backend.ip} is on the listen side ({listen_dev}): clients "
            "there work too, because natbox SNATs every flow of the forward (hairpin); the "
            "backend sees this box, not the client",
            "nothing to do; to see client addresses, put the backend on another interface",
        )
    if fwd.snat is not None and fwd.snat not in facts.local:
        yield Finding(
            "snat-not-local",
            ERROR,
            f"SNAT source {fwd.snat} is not an address of this box",
            f"use {facts.route.src} (the route to the backend leaves from it) or masquerade",
        )
    a, b = facts.mtus.get(listen_dev or ""), facts.mtus.get(facts.route.dev)
    if a and b and a != b and not fwd.mss_clamp and "tcp" in fwd.protocols:
        yield Finding(
            "mtu-mismatch",
            WARNING,
            f"MTUs differ ({listen_dev} {a}, {facts.route.dev} {b}) and no MSS clamp: "
            "big TCP segments can stall",
            "add the MSS clamp (--mss-clamp; the wizard's tick box)",
        )
    if listen_dev is not None and facts.rp_filter.get(listen_dev) == 1:
        for net, dev in sorted(facts.client_routes.items()):
            if dev != listen_dev:
                yield Finding(
                    "rp-filter-strict",
                    WARNING,
                    f"strict rp_filter on {listen_dev}, but the route back to clients {net} "
                    f"leaves via {dev}: their packets are dropped on arrival",
                    f"sysctl -w net.ipv4.conf.{listen_dev}.rp_filter=2 (loose), or fix the route",
                )


def check_backend(c: Context) -> Iterator[Finding]:
    """Does the backend answer? Conntrack evidence first, the probe from this box second."""
    fwd, facts = c.fwd, c.facts
    backend = f"{fwd.backend.ip}:{fwd.backend.port}"
    if facts.unreplied and not facts.replied:
        if facts.backend_answers:
            why = (
                "yet it answers this box's own connect: the replies to forwarded flows are lost on the "
                "way back (a FORWARD rule on the return path, or the backend's route back)"
            )
        else:
            why = (
                "the request left towards the backend and nothing came back: the backend is down or "
                "filtered, its route back is missing, or a FORWARD rule drops the return"
            )
        yield grouped(
            "backend-silent",
            WARNING,
            f"{facts.unreplied} flow(s) to {fwd.listen} were DNATed to {backend} and got no reply; {why}",
            f"on the backend: is the service listening on {backend}? does its route back lead to "
            f"{fwd.snat or 'this box'}? natbox trace {fwd.name} shows the path",
            facts.unreplied_examples,
        )
        return
    if facts.replied:
        return  # replied flows prove the backend answers: no probe needed
    if facts.probe_blocked:
        yield Finding(
            "probe-blocked",
            INFO,
            f"could not probe the backend {backend} from this box: {facts.probe_blocked}; "
            "forwarded traffic does not pass OUTPUT",
            "nothing to do; test from a client (conntrack then shows whether the backend answers)",
        )
        return
    if facts.backend_answers is False:
        yield Finding(
            "backend-silent",
            WARNING,
            f"the backend {backend} did not answer a TCP connect from this box"
            f"{': ' + facts.backend_error if facts.backend_error else ''}",
            "is the service running and listening there? (a firewall on the backend?)",
        )
    elif facts.backend_answers is None and fwd.proto == "udp":
        yield Finding(
            "backend-udp",
            INFO,
            f"UDP backend {fwd.backend}: it cannot be probed without a reply protocol",
            "test from a client once the forward is up",
        )


def check_host(c: Context) -> Iterator[Finding]:
    """Host-wide things: both iptables flavours, native nftables, Docker."""
    for text in c.facts.other_side:
        yield Finding(
            "both-flavours",
            WARNING,
            text,
            "clean up the iptables flavour this box does not use (iptables-legacy-save shows it)",
        )
    if c.facts.nft_drops:
        yield grouped(
            "nft-forward-drop",
            WARNING,
            f"native nftables chain {c.facts.nft_drops[0]}: an iptables ACCEPT is not final there",
            "allow the forward in that table too (firewalld: a policy or rich rule)",
            c.facts.nft_drops[1:],
        )
    if c.rs.chain("filter", "DOCKER-USER") is not None:
        ours = c.jump_at("filter", "FORWARD", "NATBOX-FORWARD")
        forward = c.rs.chain("filter", "FORWARD")
        docker = next(
            (
                i
                for i, r in enumerate(forward.rules if forward else [], 1)
                if "-j DOCKER-USER" in r.text
            ),
            None,
        )
        where = (
            "Docker's DOCKER-USER jump sits before natbox's (Docker restarted): what DOCKER-USER "
            "drops is checked above"
            if ours is not None and docker is not None and docker < ours
            else "natbox's FORWARD jump sits first, before DOCKER-USER"
        )
        yield Finding(
            "docker",
            INFO,
            f"Docker is here: {where}; Docker re-adds its jumps on restart but never removes natbox's",
            "nothing to do",
        )


def check_stale_flows(c: Context) -> Iterator[Finding]:
    """Flows to the listen address made before the DNAT (they bypass it until they time out)."""
    if c.facts.stale_flows:
        yield Finding(
            "stale-flows",
            WARNING if c.existing else INFO,
            f"{c.facts.stale_flows} conntrack flows to {c.fwd.listen} were made before the DNAT and "
            "bypass it",
            "natbox add clears them; otherwise natbox conntrack kill --tuple ... (or wait for the timeout)",
        )


CHECKS: tuple[Callable[[Context], Iterable[Finding]], ...] = (
    check_conflict,
    check_ip_forward,
    check_forward_path,
    check_listen,
    check_foreign_dnat,
    check_foreign_snat,
    check_route,
    check_backend,
    check_host,
    check_stale_flows,
)


def diagnose(fwd: Forward, rs: Ruleset, facts: Facts, *, existing: bool = False) -> list[Finding]:
    """Findings for `fwd`: a forward about to be added (existing=False) or one in the kernel.

    `rs` is the ruleset the caller already read (all rules, not natbox's only): nothing is read here.
    """
    c = Context(fwd, rs, facts, existing)
    out = [f for check in CHECKS for f in check(c)]
    return sorted(out, key=lambda f: f.severity.rank)


def preflight(fwd: Forward, rs: Ruleset, facts: Facts) -> list[Finding]:
    """Findings before adding `fwd` (the wizard's preview, `natbox check`)."""
    return diagnose(fwd, rs, facts, existing=False)


def worst(findings: Iterable[Finding]) -> Severity | None:
    """The worst severity among `findings` (None when there are none): the dashboard's HEALTH."""
    return min((f.severity for f in findings), key=lambda s: s.rank, default=None)


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
