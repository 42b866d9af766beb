"""Provides gather_facts(): the reads behind the diagnosis (sysctls, routes, sockets, conntrack, nft).

Every read is namespaced by the kernel, so in the lab it sees the nat box's own view. Nothing here
changes anything; a read that fails leaves its fact empty rather than failing the diagnosis.
"""

from __future__ import annotations

import json
import shutil
import socket
from ipaddress import IPv4Address
from pathlib import Path

from natbox import conntrack
from natbox.checks import Facts
from natbox.errors import NatboxError
from natbox.model import Forward
from natbox.runner import Runner
from natbox.system import PROC_SYS, ip_forward_enabled, route_to

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


def nft_forward_drops(runner: Runner) -> list[str]:
    """Native nftables chains on the forward hook that drop (by policy or by rule)."""
    if shutil.which("nft") is None:
        return []
    res = runner.run(["nft", "-j", "list", "ruleset"])
    if not res.ok:
        return []
    try:
        items = json.loads(res.stdout).get("nftables", [])
    except ValueError:
        return []
    found: dict[tuple[str, str, str], str] = {}
    for item in items:
        chain = item.get("chain")
        if chain and chain.get("hook") == "forward":
            key = (chain.get("family", ""), chain.get("table", ""), chain.get("name", ""))
            if key[0] in ("ip", "ip6") and key[1] in IPTABLES_TABLES:
                continue  # iptables-nft's own tables: natbox already reads them
            if chain.get("policy") == "drop":
                found[key] = "policy drop"
    for item in items:
        rule = item.get("rule")
        if not rule:
            continue
        key = (rule.get("family", ""), rule.get("table", ""), rule.get("chain", ""))
        text = json.dumps(rule.get("expr", []))
        if key not in found and ('"drop"' in text or '"reject"' in text):
            hooked = any(
                i.get("chain", {}).get("hook") == "forward"
                and (i["chain"].get("family"), i["chain"].get("table"), i["chain"].get("name"))
                == key
                for i in items
                if "chain" in i
            )
            if hooked and not (key[0] in ("ip", "ip6") and key[1] in IPTABLES_TABLES):
                found[key] = "a rule drops or rejects"
    return [f"{fam} {table}/{name}: {why}" for (fam, table, name), why in sorted(found.items())]


def backend_probe(fwd: Forward, timeout: float = 1.0) -> tuple[bool | None, str]:
    """TCP connect from this box to the backend (None for UDP-only forwards)."""
    if "tcp" not in fwd.protocols:
        return None, ""
    try:
        with socket.create_connection((str(fwd.backend.ip), fwd.backend.port), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, exc.strerror or type(exc).__name__


def stale_flows(fwd: Forward) -> int:
    """Flows to the listen ip:port/proto that were not DNATed (they bypass the forward)."""
    try:
        flows = conntrack.read_flows().flows
    except NatboxError:
        return 0
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


def gather_facts(
    fwd: Forward,
    *,
    other_side: list[str] | None = None,
    runner: Runner | None = None,
    probe: bool = True,
    flows: bool = True,
) -> Facts:
    """Everything the checks need for `fwd`, read from this box.

    probe=False skips the TCP connect to the backend, flows=False the conntrack read: the dashboard's
    periodic health check stays cheap; `natbox doctor` and the wizard do both.
    """
    from natbox.engine import interface_stats

    runner = runner or Runner()
    stats = interface_stats()
    local = {IPv4Address(a): i.name for i in stats for a in i.addresses}
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
    devs = {i.name for i in stats}
    return Facts(
        ip_forward=ip_forward_enabled(),
        local=local,
        route=route,
        route_error=error,
        mtus={i.name: i.mtu for i in stats},
        listeners=listeners(),
        rp_filter=rp_filter(devs),
        client_routes=client_routes,
        backend_answers=answers,
        backend_error=why,
        stale_flows=stale_flows(fwd) if flows else 0,
        other_side=list(other_side or []),
        nft_drops=nft_forward_drops(runner),
    )
