"""Provides Facts and gather_facts(): the reads behind the diagnosis (sysctls, routes, sockets,
conntrack, nft, the backend probe).

Every read is namespaced by the kernel, so in the lab it sees the nat box's own view. Nothing here
changes anything; a read that fails leaves its fact empty rather than failing the diagnosis.
Evidence comes before probes: the forward's own conntrack flows say whether the backend answers; the
TCP probe from this box is the fallback, and is not made when the box's OUTPUT chain would stop it.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from ipaddress import ip_address
from pathlib import Path

from natbox import conntrack, pathmatch
from natbox.errors import NatboxError
from natbox.model import Forward, IPAddress, Ruleset
from natbox.runner import Runner
from natbox.system import (
    PROC_SYS,
    InterfaceStat,
    Route,
    interface_stats,
    ip_forward_enabled,
    route_to,
)

IPTABLES_TABLES = {"filter", "nat", "mangle", "raw", "security"}
EXAMPLES = 5


@dataclass(frozen=True)
class Facts:
    """What the checks look at, gathered here (so the checks stay pure)."""

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
    """A TCP connect to the backend succeeded (None: not tried, e.g. UDP, or blocked by OUTPUT)."""
    backend_error: str = ""
    probe_blocked: str = ""
    """Why the probe could not be made or trusted: this box's OUTPUT chain stops (or may stop) it."""
    replied: int = 0
    """The forward's conntrack flows that got replies (ASSURED for TCP): the backend answers."""
    unreplied: int = 0
    """The forward's DNATed flows that never got a reply."""
    unreplied_examples: tuple[str, ...] = ()
    stale_flows: int = 0
    """Flows to the listen address that bypass a DNAT (created before it)."""
    other_side: list[str] = field(default_factory=list)
    """Warnings about rules in the iptables flavour natbox does not write."""
    nft_drops: list[str] = field(default_factory=list)
    """Native nftables forward-hook chains that can drop, as `table/chain: why`."""


def listeners() -> frozenset[tuple[str, int, str]]:
    """Local listening TCP sockets and bound UDP sockets (IPv4)."""
    import psutil

    out: set[tuple[str, int, str]] = set()
    try:
        conns = psutil.net_connections(kind="inet4")
    except (psutil.Error, OSError):
        return frozenset()
    for c in conns:
        if not c.laddr:
            continue
        if c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN:
            out.add((c.laddr.ip, c.laddr.port, "tcp"))
        elif c.type == socket.SOCK_DGRAM and not c.raddr:
            out.add((c.laddr.ip, c.laddr.port, "udp"))
    return frozenset(out)


def rp_filter(devs: set[str], root: Path = PROC_SYS) -> dict[str, int]:
    """The effective rp_filter of each interface: the higher of `all` and the interface's own."""

    def read(dev: str) -> int:
        try:
            return int((root / f"net/ipv4/conf/{dev}/rp_filter").read_text())
        except (OSError, ValueError):
            return 0

    base = read("all")
    return {dev: max(base, read(dev)) for dev in devs}


def _nft_json(runner: Runner, *args: str) -> list[dict[str, object]]:
    res = runner.run(["nft", "-j", *args])
    if not res.ok:
        return []
    try:
        items = json.loads(res.stdout).get("nftables", [])
    except ValueError:
        return []
    return [i for i in items if isinstance(i, dict)]


def nft_forward_drops(runner: Runner) -> list[str]:
    """Native nftables chains on the forward hook that drop (by policy or by rule).

    Lists chains only (cheap even with 10k iptables-nft rules), then reads the rules of the few
    native forward-hook chains; iptables-nft's own tables are natbox's business already.
    """
    if shutil.which("nft") is None:
        return []
    found: list[str] = []
    for item in _nft_json(runner, "list", "chains"):
        chain = item.get("chain")
        if not isinstance(chain, dict) or chain.get("hook") != "forward":
            continue
        family, table, name = (
            str(chain.get("family")),
            str(chain.get("table")),
            str(chain.get("name")),
        )
        if family in ("ip", "ip6") and table in IPTABLES_TABLES:
            continue
        if chain.get("policy") == "drop":
            found.append(f"{family} {table}/{name}: policy drop")
            continue
        rules = json.dumps(_nft_json(runner, "list", "chain", family, table, name))
        if '"drop"' in rules or '"reject"' in rules:
            found.append(f"{family} {table}/{name}: a rule drops or rejects")
    return found


def backend_probe(fwd: Forward, timeout: float = 1.0) -> tuple[bool | None, str]:
    """TCP connect from this box to the backend (None for UDP-only forwards)."""
    if "tcp" not in fwd.protocols:
        return None, ""
    try:
        with socket.create_connection((str(fwd.backend.ip), fwd.backend.port), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, exc.strerror or type(exc).__name__


def evidence(fwd: Forward, flows: list[conntrack.Flow]) -> tuple[int, int, tuple[str, ...]]:
    """(replied, unreplied, examples of unreplied) among the forward's flows (BoxFacts.flows_for)
    that were DNATed to its backend."""
    backend = {str(fwd.backend.ip), fwd.backend.ip.exploded}  # /proc prints IPv6 expanded
    replied = unreplied = 0
    examples: list[str] = []
    for f in flows:
        if f.reply_src not in backend:
            continue
        flags = f.flags
        if "UNREPLIED" in flags:
            unreplied += 1
            if len(examples) < EXAMPLES:
                examples.append(f"{f.proto} {f.path()} ({f.state or 'no reply'})")
        elif f.proto != "tcp" or "ASSURED" in flags:
            replied += 1
    return replied, unreplied, tuple(examples)


def probe_verdict(rs: Ruleset, fwd: Forward, route: Route) -> pathmatch.Verdict:
    """What this box's filter OUTPUT does with its own TCP connect to the backend."""
    return pathmatch.verdict(rs, "filter", "OUTPUT", pathmatch.probe(fwd, route.src, route.dev))


def stale_flows(flows: list[conntrack.Flow]) -> int:
    """Among a forward's flows (BoxFacts.flows_for), those not DNATed: they bypass the forward."""
    return sum(1 for f in flows if not f.dnat)


@dataclass(frozen=True)
class BoxFacts:
    """The facts that are the same for every forward: read once per diagnosis, not per forward.

    Route lookups and backend probes are memoised here, per backend: a thousand forwards to a
    hundred backends cost a hundred of each, and `prefetch` runs them in parallel (bounded)."""

    interfaces: list[InterfaceStat]
    listeners: frozenset[tuple[str, int, str]]
    rp_filter: dict[str, int]
    nft_drops: list[str]
    flows: list[conntrack.Flow]
    """The conntrack table (empty when not read)."""
    routes: dict[str, tuple[Route | None, str]] = field(default_factory=dict)
    probes: dict[tuple[str, int], tuple[bool | None, str]] = field(default_factory=dict)
    by_listen: dict[tuple[str, str, str], list[conntrack.Flow]] = field(default_factory=dict)
    """The flows grouped by Flow.listen_key (filled by box_facts): a forward's flows are a few
    lookups, not a scan of the table (100,000 flows to one address are common on a busy box)."""

    def flows_for(self, fwd: Forward) -> list[conntrack.Flow]:
        """The flows to `fwd`'s listen address, in its ports and protocols."""
        ips = {str(fwd.listen.ip), fwd.listen.ip.exploded}  # /proc prints IPv6 expanded
        ports = range(fwd.listen.port, fwd.listen.port_end + 1)
        if len(ports) * len(fwd.protocols) * len(ips) > len(self.by_listen):
            return [
                f
                for (proto, ip, port), flows in self.by_listen.items()
                if proto in fwd.protocols and ip in ips and port.isdigit() and int(port) in ports
                for f in flows
            ]
        out: list[conntrack.Flow] = []
        for proto in fwd.protocols:
            for port in ports:
                for ip in ips:
                    out.extend(self.by_listen.get((proto, ip, str(port)), ()))
        return out

    def route(self, ip: IPAddress, runner: Runner | None = None) -> tuple[Route | None, str]:
        """The route to `ip` (or why there is none), looked up once per address."""
        key = str(ip)
        if key not in self.routes:
            try:
                self.routes[key] = (route_to(ip, runner), "")
            except NatboxError as exc:
                self.routes[key] = (None, exc.message.split(": ", 1)[-1])
        return self.routes[key]

    def probe(self, fwd: Forward) -> tuple[bool | None, str]:
        """The TCP connect to the forward's backend, made once per backend ip:port."""
        key = (str(fwd.backend.ip), fwd.backend.port)
        if key not in self.probes:
            self.probes[key] = backend_probe(fwd)
        return self.probes[key]


PROBE_WORKERS = 32
"""At most this many route lookups or backend probes run at once."""


def prefetch(box: BoxFacts, forwards: list[Forward], *, probe: bool) -> None:
    """Look up every distinct backend's route, and probe (with `probe`) every distinct TCP backend
    without conntrack evidence, in parallel: `natbox doctor` then costs about one probe timeout,
    not one per forward."""
    from concurrent.futures import ThreadPoolExecutor

    distinct = {str(f.backend.ip): f for f in forwards}
    with ThreadPoolExecutor(max_workers=PROBE_WORKERS) as pool:
        list(pool.map(lambda f: box.route(f.backend.ip), distinct.values()))
        if probe:
            todo = {
                (str(f.backend.ip), f.backend.port): f
                for f in forwards
                if "tcp" in f.protocols
                and box.routes.get(str(f.backend.ip), (None, ""))[0] is not None
                and not evidence(f, box.flows_for(f))[0]
            }
            list(pool.map(box.probe, todo.values()))


def listen_flows(fwd: Forward, proto: str) -> list[conntrack.Flow] | None:
    """The `proto` flows to `fwd`'s listen address and ports, asked of the kernel by a filtered
    ctnetlink dump (tens of milliseconds where the whole table of 100,000 flows takes half a
    second); None where only a whole read can tell (no ctnetlink, or the /proc reader is forced)."""
    from natbox.conntrack import dump
    from natbox.conntrack.read import reader

    if reader() == "proc":
        return None
    ports = range(fwd.listen.port, fwd.listen.port_end + 1)
    try:
        return dump.flows_to(str(fwd.listen.ip), proto, ports)
    except (NatboxError, OSError):
        return None


def flows_near(fwd: Forward) -> list[conntrack.Flow] | None:
    """The flows to `fwd`'s listen address and ports, all its protocols (see listen_flows)."""
    out: list[conntrack.Flow] = []
    for proto in fwd.protocols:
        found = listen_flows(fwd, proto)
        if found is None:
            return None
        out.extend(found)
    return out


FILTERED_DUMPS_MAX = 8
"""Up to this many forwards, their flows are asked of the kernel one filtered dump each (each walks
the kernel's table, ~40 ms at 100,000 flows); more, and one read of the whole table is cheaper."""


def box_facts(
    runner: Runner | None = None,
    *,
    flows: bool = True,
    only: Forward | Sequence[Forward] | None = None,
) -> BoxFacts:
    """Interfaces, sockets, rp_filter, native nftables and (with flows) the conntrack table — with
    `only`, just those forwards' flows (all their diagnosis looks at), when the kernel can filter
    them and they are few (FILTERED_DUMPS_MAX)."""
    runner = runner or Runner()
    stats = interface_stats()
    table: list[conntrack.Flow] = []
    if flows:
        wanted = [only] if isinstance(only, Forward) else list(only or ())
        near: list[conntrack.Flow] | None = None
        if wanted and len(wanted) <= FILTERED_DUMPS_MAX:
            near = []
            for fwd in wanted:
                found = flows_near(fwd)
                if found is None:
                    near = None
                    break
                near.extend(found)
        try:
            table = near if near is not None else conntrack.read_flows().flows
        except NatboxError:
            table = []
    by_listen: dict[tuple[str, str, str], list[conntrack.Flow]] = {}
    for f in table:
        by_listen.setdefault(f.listen_key, []).append(f)
    return BoxFacts(
        stats,
        listeners(),
        rp_filter({i.name for i in stats}),
        nft_forward_drops(runner),
        table,
        by_listen=by_listen,
    )


def gather_facts(
    fwd: Forward,
    *,
    other_side: list[str] | None = None,
    runner: Runner | None = None,
    probe: bool = True,
    flows: bool = True,
    box: BoxFacts | None = None,
    rs: Ruleset | None = None,
) -> Facts:
    """Everything the checks need for `fwd`, read from this box.

    probe=False skips the TCP connect to the backend, flows=False the conntrack read: the dashboard's
    periodic health check stays cheap; `natbox doctor` and the wizard do both. Pass `box` to share
    the box-wide reads between forwards, and `rs` (the ruleset already read) so that the probe is not
    made when this box's own OUTPUT chain would stop it.
    """
    runner = runner or Runner()
    box = box or box_facts(runner, flows=flows, only=fwd)
    stats = box.interfaces
    local = {ip_address(a): i.name for i in stats for a in i.addresses}
    route, error = box.route(fwd.backend.ip, runner)
    client_routes: dict[str, str] = {}
    for net in fwd.sources:
        host = next(net.hosts(), net.network_address)
        try:
            client_routes[net.with_prefixlen] = route_to(host, runner).dev
        except NatboxError:
            continue
    near = box.flows_for(fwd)
    replied, unreplied, examples = evidence(fwd, near)
    facts = Facts(
        ip_forward=ip_forward_enabled(family=fwd.family),
        local=local,
        route=route,
        route_error=error,
        mtus={i.name: i.mtu for i in stats},
        listeners=box.listeners,
        rp_filter=box.rp_filter,
        client_routes=client_routes,
        replied=replied,
        unreplied=unreplied,
        unreplied_examples=examples,
        stale_flows=stale_flows(near),
        other_side=list(other_side or []),
        nft_drops=box.nft_drops,
    )
    return probed(facts, fwd, rs, box) if probe else facts


def probed(
    facts: Facts, fwd: Forward, rs: Ruleset | None = None, box: BoxFacts | None = None
) -> Facts:
    """`facts` with the TCP probe of the backend made, where it tells something: a TCP forward with
    a route and no replied flows (they prove the backend answers already), and unless the box's
    own OUTPUT chain in `rs` would stop the probe (then why, instead)."""
    route = facts.route
    if route is None or "tcp" not in fwd.protocols or facts.replied:
        return facts
    answers: bool | None = None
    why = blocked = ""
    seen = probe_verdict(rs, fwd, route) if rs is not None else None
    if seen is not None and seen.verdict in pathmatch.DROPS:
        rule = seen.decided_by
        blocked = (
            f"OUTPUT rule {rule.rule.text} drops it" if rule else f"OUTPUT policy is {seen.verdict}"
        )
    else:
        answers, why = box.probe(fwd) if box is not None else backend_probe(fwd)
        maybe = [h for h in (seen.earlier if seen else ()) if h.target in pathmatch.DROPS]
        if answers is False and maybe:
            blocked = f"OUTPUT rule {maybe[0].rule.text} may drop it"
    return replace(facts, backend_answers=answers, backend_error=why, probe_blocked=blocked)
