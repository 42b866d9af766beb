"""Provides gather_facts(): the reads behind the diagnosis (sysctls, routes, sockets, conntrack, nft).

Every read is namespaced by the kernel, so in the lab it sees the nat box's own view. Nothing here
changes anything; a read that fails leaves its fact empty rather than failing the diagnosis.
"""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING

from natbox import conntrack
from natbox.checks import Facts
from natbox.errors import NatboxError
from natbox.model import Forward
from natbox.runner import Runner
from natbox.system import PROC_SYS, ip_forward_enabled, route_to

if TYPE_CHECKING:
    from natbox.system import InterfaceStat

IPTABLES_TABLES = {"filter", "nat", "mangle", "raw", "security"}


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


def stale_flows(fwd: Forward, flows: list[conntrack.Flow]) -> int:
    """Flows to the listen ip:port/proto that were not DNATed (they bypass the forward)."""
    listen = str(fwd.listen.ip)
    count = 0
    for f in flows:
        o = f.orig
        if (
            f.proto in fwd.protocols
            and o.dst == listen
            and o.dport is not None
            and fwd.listen.port <= o.dport <= fwd.listen.port_end
            and not f.dnat
        ):
            count += 1
    return count


@dataclass(frozen=True)
class BoxFacts:
    """The facts that are the same for every forward: read once per diagnosis, not per forward."""

    interfaces: list[InterfaceStat]
    listeners: frozenset[tuple[str, int, str]]
    rp_filter: dict[str, int]
    nft_drops: list[str]
    flows: list[conntrack.Flow]
    """The conntrack table (empty when not read)."""


def box_facts(runner: Runner | None = None, *, flows: bool = True) -> BoxFacts:
    """Interfaces, sockets, rp_filter, native nftables and (with flows) the conntrack table."""
    from natbox.system import interface_stats

    runner = runner or Runner()
    stats = interface_stats()
    table: list[conntrack.Flow] = []
    if flows:
        try:
            table = conntrack.read_flows().flows
        except NatboxError:
            table = []
    return BoxFacts(
        stats, listeners(), rp_filter({i.name for i in stats}), nft_forward_drops(runner), table
    )


def gather_facts(
    fwd: Forward,
    *,
    other_side: list[str] | None = None,
    runner: Runner | None = None,
    probe: bool = True,
    flows: bool = True,
    box: BoxFacts | None = None,
) -> Facts:
    """Everything the checks need for `fwd`, read from this box.

    probe=False skips the TCP connect to the backend, flows=False the conntrack read: the dashboard's
    periodic health check stays cheap; `natbox doctor` and the wizard do both. Pass `box` to share
    the box-wide reads between forwards.
    """
    runner = runner or Runner()
    box = box or box_facts(runner, flows=flows)
    stats = box.interfaces
    local = {ip_address(a): i.name for i in stats for a in i.addresses}
    route, error = None, ""
    try:
        route = route_to(fwd.backend.ip, runner)
    except NatboxError as exc:
        error = exc.message.split(": ", 1)[-1]
    client_routes: dict[str, str] = {}
    for net in fwd.sources:
        host = next(net.hosts(), net.network_address)
        try:
            client_routes[net.with_prefixlen] = route_to(host, runner).dev
        except NatboxError:
            continue
    answers, why = backend_probe(fwd) if probe and route is not None else (None, "")
    return Facts(
        ip_forward=ip_forward_enabled(family=fwd.family),
        local=local,
        route=route,
        route_error=error,
        mtus={i.name: i.mtu for i in stats},
        listeners=box.listeners,
        rp_filter=box.rp_filter,
        client_routes=client_routes,
        backend_answers=answers,
        backend_error=why,
        stale_flows=stale_flows(fwd, box.flows),
        other_side=list(other_side or []),
        nft_drops=box.nft_drops,
    )
