"""Provides facts about this host: root, sysctls, interfaces and MTUs (psutil), route lookups."""

from __future__ import annotations

import os
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from natbox.errors import NatboxError
from natbox.model import IPAddress
from natbox.runner import Runner

PROC_SYS = Path("/proc/sys")


def is_root() -> bool:
    """Whether natbox runs with the effective uid 0."""
    return os.geteuid() == 0


def read_sysctl(name: str, root: Path = PROC_SYS) -> str | None:
    """Read a sysctl like `net.ipv4.ip_forward`; None if the kernel has no such key."""
    try:
        return (root / name.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def ip_forward_enabled(root: Path = PROC_SYS, family: int = 4) -> bool:
    """Whether forwarding is on for IPv4 (or IPv6)."""
    key = "net.ipv6.conf.all.forwarding" if family == 6 else "net.ipv4.ip_forward"
    return read_sysctl(key, root) == "1"


@dataclass(frozen=True)
class Route:
    """How the kernel would reach an address: out of `dev`, from local address `src`."""

    dst: IPAddress
    dev: str
    src: IPAddress | None
    via: IPAddress | None


def parse_route_get(text: str, dst: IPAddress) -> Route:
    """Parse one line of `ip -4 -o route get DST` output."""
    tokens = text.split()
    fields: dict[str, str] = {}
    for key in ("dev", "src", "via"):
        if key in tokens and tokens.index(key) + 1 < len(tokens):
            fields[key] = tokens[tokens.index(key) + 1]
    if "dev" not in fields:
        raise NatboxError(f"no route to {dst}", "add a route or pass --snat/--masquerade")
    return Route(
        dst,
        fields["dev"],
        ip_address(fields["src"]) if "src" in fields else None,
        ip_address(fields["via"]) if "via" in fields else None,
    )


def route_to(dst: IPAddress, runner: Runner | None = None) -> Route:
    """Ask the kernel how it would reach `dst`; raise NatboxError when it has no route."""
    res = (runner or Runner()).run(["ip", f"-{dst.version}", "-o", "route", "get", str(dst)])
    if not res.ok:
        raise NatboxError(
            f"no route to {dst}: {res.first_error_line()}",
            "pass --snat ADDR (the box's backend-side address) or --masquerade",
        )
    return parse_route_get(res.stdout, dst)


@dataclass(frozen=True)
class InterfaceStat:
    """One interface at one moment: addresses, MTU, link state and byte counters."""

    name: str
    addresses: tuple[str, ...]
    mtu: int
    up: bool
    rx_bytes: int
    tx_bytes: int


def interface_stats() -> list[InterfaceStat]:
    """Interfaces with their counters (psutil)."""
    import socket

    import psutil  # imported on use: the CLI's write paths never need it

    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    io = psutil.net_io_counters(pernic=True)
    out: list[InterfaceStat] = []
    for name in sorted(addrs, key=lambda n: (n == "lo", n)):
        v4 = tuple(
            a.address
            for a in addrs[name]
            if a.family == socket.AF_INET
            or (a.family == socket.AF_INET6 and not a.address.lower().startswith("fe80"))
        )
        st, counters = stats.get(name), io.get(name)
        out.append(
            InterfaceStat(
                name,
                v4,
                st.mtu if st else 0,
                bool(st and st.isup),
                counters.bytes_recv if counters else 0,
                counters.bytes_sent if counters else 0,
            )
        )
    return out


def default_route_dev(proc_route: Path = Path("/proc/net/route")) -> str | None:
    """The interface of the IPv4 default route (where clients usually are), from /proc/net/route."""
    try:
        lines = proc_route.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000":
            return fields[0]
    return None
