"""Provides natbox's data model: endpoints, forwards, rules, chains and rulesets.

Validation lives here as plain functions that return precise messages; the UI only shows them.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from natbox.errors import ValidationError, shown

TYPE_CHECKING = False  # not typing's: `natbox list` imports no typing (~4 ms); mypy knows the name
if TYPE_CHECKING:
    from typing import Literal, TypeAlias

    Proto: TypeAlias = Literal["tcp", "udp", "both"]
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
PROTOS: tuple[str, ...] = ("tcp", "udp", "both")
PROTO_NUMBERS: dict[str, int] = {"tcp": 6, "udp": 17}
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,23}")
COMMENT_PREFIX = "natbox"


# ---------------------------------------------------------------- validators (strings -> values)

_BROADCAST = IPv4Address("255.255.255.255")


@functools.lru_cache(maxsize=8192)
def _ip_address(text: str) -> IPAddress:
    # Addresses repeat (every forward of a box listens on its few addresses): parse each once.
    return ipaddress.ip_address(text)


def parse_ip(text: str, what: str = "address") -> IPAddress:
    """Parse an IPv4 or IPv6 address, or raise with a message naming the bad text."""
    text = text.strip()
    try:
        return _ip_address(text)
    except ValueError:
        if ":" not in text:
            raise ValidationError(
                f"{shown(text) or '(empty)'} is not an IPv4 address",
                f"give the {what} as four numbers 0-255, like 192.168.1.30",
            ) from None
        raise ValidationError(
            f"{shown(text)} is not an IPv6 address", f"give the {what} like 2001:db8::30"
        ) from None


def parse_port(text: str, what: str = "port") -> int:
    """Parse one port number 1-65535."""
    text = text.strip()
    # isdigit() alone admits '²' and Arabic-Indic digits (int() even reads '٨٠' as 80).
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ValidationError(
            f"{what} {shown(repr(text))} is not a number from 1 to 65535",
            "ports are whole numbers from 1 to 65535",
        )
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValidationError(
            f"port {port} is out of range 1-65535", "ports are whole numbers from 1 to 65535"
        )
    return port


def parse_port_range(text: str) -> tuple[int, int]:
    """Parse `1234` or `1000-1010` into (first, last)."""
    text = text.strip()
    if "-" in text:
        lo_text, _, hi_text = text.partition("-")
        lo, hi = parse_port(lo_text), parse_port(hi_text)
        if hi < lo:
            raise ValidationError(
                f"port range {lo}-{hi} runs backwards", f"write it low to high: {hi}-{lo}"
            )
        return lo, hi
    port = parse_port(text)
    return port, port


def parse_cidr(text: str) -> IPNetwork:
    """Parse a client CIDR such as 192.168.1.0/24 or 2001:db8:1::/64 (a bare address: one host)."""
    text = text.strip()
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            fixed = ipaddress.ip_network(text, strict=False)
            raise ValidationError(
                f"{text} has host bits set", f"did you mean {fixed.with_prefixlen}?"
            ) from None
        raise ValidationError(
            f"{shown(text) or '(empty)'} is not an IP network", "write it like 192.168.1.0/24"
        ) from None
    return net


def name_problem(name: str) -> str | None:
    """Return why `name` cannot name a forward, or None when it can."""
    if NAME_RE.fullmatch(name):
        return None
    return (
        f"name {shown(repr(name))} is not valid: use 1-24 characters, lowercase letters, digits and '-', "
        "starting with a letter or digit"
    )


def _unicast_problem(addr: IPAddress, what: str) -> str | None:
    if addr.is_unspecified:
        return f"{what} {addr} is the unspecified address; give a real address"
    if addr.is_loopback:
        return f"{what} {addr} is a loopback address; forwarded traffic never reaches it"
    if addr.is_multicast or addr == _BROADCAST:
        return f"{what} {addr} is not a unicast address"
    if addr.version == 6 and addr.is_link_local:
        return f"{what} {addr} is link-local; it needs an interface, so give a global address"
    return None


# ---------------------------------------------------------------- endpoints and forwards


@dataclass(frozen=True, order=True)
class Endpoint:
    """An IPv4 or IPv6 address with a port or a port range (port == port_end for a single port)."""

    ip: IPAddress
    port: int
    port_end: int = 0

    def __post_init__(self) -> None:
        if self.port_end == 0:
            object.__setattr__(self, "port_end", self.port)

    @classmethod
    def parse(cls, text: str, what: str = "address") -> Endpoint:
        """Parse `ip:port`, `ip:lo-hi`, `[v6]:port` or `[v6]:lo-hi`."""
        text = text.strip()
        if len(text) > 64:  # the longest real one, [v6]:lo-hi, has 53 characters
            raise ValidationError(
                f"{what} {shown(text)} is too long to be ip:port", f"give the {what} as ip:port"
            )
        if text.startswith("["):
            host, close, rest = text[1:].partition("]")
            if not close or not rest.startswith(":") or not rest[1:]:
                raise ValidationError(
                    f"{what} {text!r} has no port",
                    f"give the {what} as [ip]:port, like [{host}]:1234",
                )
            ports = rest[1:]
        elif text.count(":") > 1:
            raise ValidationError(
                f"{what} {text} needs brackets around the IPv6 address",
                f"write it like [{text.rpartition(':')[0]}]:{text.rpartition(':')[2]}",
            )
        else:
            host, sep, ports = text.rpartition(":")
            if not sep:
                raise ValidationError(
                    f"{what} {text!r} has no port", f"give the {what} as ip:port, like {text}:1234"
                )
        ip = parse_ip(host, what)
        lo, hi = parse_port_range(ports)
        return cls(ip, lo, hi)

    @property
    def is_range(self) -> bool:
        """Whether this endpoint spans more than one port."""
        return self.port_end != self.port

    @property
    def size(self) -> int:
        """How many ports this endpoint spans."""
        return self.port_end - self.port + 1

    @property
    def ports(self) -> str:
        """Ports as the user writes them: `1234` or `1000-1010`."""
        return f"{self.port}-{self.port_end}" if self.is_range else str(self.port)

    @property
    def ipt_ports(self) -> str:
        """Ports as iptables matches write them: `1234` or `1000:1010`."""
        return f"{self.port}:{self.port_end}" if self.is_range else str(self.port)

    @property
    def host(self) -> str:
        """The address as it stands before `:port`: `[2001:db8::30]` for IPv6."""
        return f"[{self.ip}]" if self.ip.version == 6 else str(self.ip)

    def __str__(self) -> str:
        return f"{self.host}:{self.ports}"


@dataclass(frozen=True)
class Forward:
    """One port forward: clients reach `listen`, the box rewrites to `backend` and SNATs.

    Constructing one validates it; an invalid forward raises ValidationError.
    """

    name: str
    proto: Proto
    listen: Endpoint
    backend: Endpoint
    snat: IPAddress | None = None
    masquerade: bool = False
    mss_clamp: bool = False
    sources: tuple[IPNetwork, ...] = ()
    local: bool = False
    """Also DNAT this box's own connections to the listen address (nat OUTPUT)."""

    def __post_init__(self) -> None:
        problem = forward_problem(self)
        if problem is not None:
            raise ValidationError(*problem)

    @staticmethod
    def default_name(proto: str, listen: Endpoint) -> str:
        """The name a forward gets when the user gives none, e.g. `tcp-1234` (`tcp6-1234` for IPv6)."""
        return f"{proto}{'6' if listen.ip.version == 6 else ''}-{listen.ports}"

    @classmethod
    def from_text(
        cls,
        listen: str,
        backend: str,
        *,
        proto: str = "tcp",
        name: str | None = None,
        snat: str | None = None,
        masquerade: bool = False,
        mss_clamp: bool = False,
        sources: Iterable[str] = (),
        local: bool = False,
    ) -> Forward:
        """Build a forward from what a user typed; every field is validated."""
        if proto not in PROTOS:
            raise ValidationError(
                f"protocol {proto!r} is not one of tcp, udp, both", "use --proto tcp|udp|both"
            )
        listen_ep = Endpoint.parse(listen, "listen address")
        backend_ep = Endpoint.parse(backend, "backend")
        snat_ip = parse_ip(snat, "SNAT source") if snat is not None else None
        nets = tuple(parse_cidr(s) for s in sources)
        return cls(
            name=name if name is not None else cls.default_name(proto, listen_ep),
            proto=proto,  # type: ignore[arg-type]  # checked against PROTOS above
            listen=listen_ep,
            backend=backend_ep,
            snat=snat_ip,
            masquerade=masquerade,
            mss_clamp=mss_clamp,
            sources=nets,
            local=local,
        )

    @property
    def protocols(self) -> tuple[str, ...]:
        """The layer-4 protocols this forward carries: ('tcp',), ('udp',) or both."""
        return ("tcp", "udp") if self.proto == "both" else (self.proto,)

    @property
    def family(self) -> int:
        """4 or 6: which iptables (iptables or ip6tables) carries this forward."""
        return self.listen.ip.version

    @property
    def host_prefix(self) -> str:
        """The prefix of one host in iptables-save's form: /32 or /128."""
        return "/128" if self.family == 6 else "/32"

    @property
    def comment(self) -> str:
        """The comment every rule of this forward carries."""
        return f"{COMMENT_PREFIX}:{self.name}"

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description."""
        return {
            "name": self.name,
            "proto": self.proto,
            "listen": str(self.listen),
            "backend": str(self.backend),
            "snat": str(self.snat) if self.snat else None,
            "masquerade": self.masquerade,
            "mss_clamp": self.mss_clamp,
            "local": self.local,
            "sources": [n.with_prefixlen for n in self.sources],
        }


def forward_problem(fwd: Forward) -> tuple[str, str] | None:
    """Return (message, hint) for the first thing wrong with `fwd`, or None."""
    problem = name_problem(fwd.name)
    if problem:
        return problem, "pass --name with a valid name"
    if fwd.proto not in PROTOS:
        return f"protocol {fwd.proto!r} is not one of tcp, udp, both", "use --proto tcp|udp|both"
    for what, ep in (("listen address", fwd.listen), ("backend", fwd.backend)):
        msg = _unicast_problem(ep.ip, what)
        if msg:
            return msg, f"give the {what} as a unicast IPv4 address"
        for port in (ep.port, ep.port_end):
            if not 1 <= port <= 65535:
                return f"port {port} is out of range 1-65535", "ports run from 1 to 65535"
        if ep.port_end < ep.port:
            return f"port range {ep.port}-{ep.port_end} runs backwards", "write it low to high"
    if fwd.backend.ip.version != fwd.listen.ip.version:
        return (
            f"listen {fwd.listen} and backend {fwd.backend} are not the same IP version",
            "forward IPv4 to IPv4 and IPv6 to IPv6",
        )
    if fwd.snat is not None and fwd.snat.version != fwd.listen.ip.version:
        return (
            f"SNAT source {fwd.snat} is not the forward's IP version",
            "give the box's own address of that version",
        )
    for net in fwd.sources:
        if net.version != fwd.listen.ip.version:
            return (
                f"client network {net} is not the forward's IP version",
                "give networks of the same version",
            )
    if fwd.mss_clamp and fwd.proto == "udp":
        return "MSS clamping applies to TCP only", "drop --mss-clamp or use --proto tcp|both"
    if fwd.backend.is_range and fwd.backend.size != fwd.listen.size:
        return (
            f"backend range {fwd.backend.ports} has {fwd.backend.size} ports but listen range "
            f"{fwd.listen.ports} has {fwd.listen.size}",
            "ranges map one to one, so give ranges of the same size (or one backend port)",
        )
    if fwd.backend.ip == fwd.listen.ip and (
        fwd.backend.port <= fwd.listen.port_end and fwd.listen.port <= fwd.backend.port_end
    ):
        return (
            f"backend {fwd.backend} is the listen address itself",
            "the backend must be another host (or another port)",
        )
    if fwd.snat is not None and fwd.masquerade:
        return (
            "both an SNAT source and masquerade were given",
            "pick one: --snat ADDR or --masquerade",
        )
    if fwd.snat is None and not fwd.masquerade:
        return (
            "the forward has no SNAT source; the backend's replies would never come back",
            "pass --snat ADDR (the box's backend-side address) or --masquerade",
        )
    if fwd.snat is not None:
        msg = _unicast_problem(fwd.snat, "SNAT source")
        if msg:
            return msg, "give the box's own backend-side address"
    return None


_FORWARD_KEYS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "proto": (str,),
    "listen": (str,),
    "backend": (str,),
    "snat": (str, type(None)),
    "masquerade": (bool,),
    "mss_clamp": (bool,),
    "local": (bool,),
    "sources": (list,),
}
_REQUIRED = ("name", "listen", "backend")
_TYPE_NAMES = {str: "a string", bool: "true or false", list: "a list", type(None): "null"}


def forward_from_dict(data: dict[str, object]) -> Forward:
    """The inverse of Forward.to_dict(), validated like user input and typed exactly:
    booleans are booleans, names are strings, unknown keys are refused."""
    unknown = sorted(set(data) - set(_FORWARD_KEYS))
    if unknown:
        raise ValidationError(
            f"unknown key {shown(unknown[0])}", f"known keys: {', '.join(_FORWARD_KEYS)}"
        )
    for key in _REQUIRED:
        if key not in data:
            raise ValidationError(
                f'missing "{key}"', 'each forward needs "name", "listen", "backend"'
            )
    for key, kinds in _FORWARD_KEYS.items():
        if key in data and not (
            isinstance(data[key], kinds) and not (bool not in kinds and isinstance(data[key], bool))
        ):
            want = " or ".join(_TYPE_NAMES[k] for k in kinds)
            raise ValidationError(
                f'"{key}" must be {want}, not {shown(json.dumps(data[key]))}',
                f"write it like {json.dumps(_example(key))}",
            )
    sources = data.get("sources") or []
    assert isinstance(sources, list)
    if not all(isinstance(s, str) for s in sources):
        raise ValidationError('"sources" must be a list of strings', 'like ["192.168.1.0/24"]')
    snat = data.get("snat")
    return Forward.from_text(
        str(data["listen"]),
        str(data["backend"]),
        proto=str(data.get("proto", "tcp")),
        name=str(data["name"]),
        snat=str(snat) if snat else None,
        masquerade=data.get("masquerade") is True,
        mss_clamp=data.get("mss_clamp") is True,
        local=data.get("local") is True,
        sources=[str(s) for s in sources],
    )


def _example(key: str) -> object:
    return {
        "name": "web",
        "proto": "tcp",
        "listen": "192.168.1.30:1234",
        "backend": "10.0.2.50:80",
        "snat": None,
        "sources": [],
    }.get(key, False)


# ---------------------------------------------------------------- rules and rulesets


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule as iptables-save prints it: `text` is `-A CHAIN ...` verbatim."""

    table: str
    chain: str
    text: str
    packets: int = 0
    bytes: int = 0
    owner: str = "other"
    """`natbox:<name>` for a forward's rule, `natbox` for natbox's jumps, else docker/kube/other."""

    @property
    def forward_name(self) -> str | None:
        """The natbox forward this rule belongs to, if any."""
        if self.owner.startswith(COMMENT_PREFIX + ":"):
            return self.owner.split(":", 1)[1]
        return None

    @property
    def spec(self) -> str:
        """The rule without its leading `-A CHAIN`."""
        return self.text.split(" ", 2)[2] if self.text.count(" ") >= 2 else ""


@dataclass
class Chain:
    """A chain with its policy (None for user-defined chains) and rules in order."""

    name: str
    policy: str | None = None
    packets: int = 0
    bytes: int = 0
    rules: list[Rule] = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        """Built-in chains have a policy; user chains have `-`."""
        return self.policy is not None


@dataclass
class Table:
    """One table (filter, nat, ...) and its chains in the order iptables-save printed them."""

    name: str
    chains: dict[str, Chain] = field(default_factory=dict)


@dataclass
class Ruleset:
    """Everything one iptables-save dump says, plus warnings it printed."""

    tables: dict[str, Table] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    incompatible: list[str] = field(default_factory=list)
    """Tables iptables-nft-save could not show (native nftables rules in them): not to be trusted."""

    def rules(self, table: str | None = None) -> Iterator[Rule]:
        """All rules, optionally of one table, in dump order."""
        for t in self.tables.values():
            if table is not None and t.name != table:
                continue
            for chain in t.chains.values():
                yield from chain.rules

    def chain(self, table: str, name: str) -> Chain | None:
        """The named chain, or None if the table or chain does not exist."""
        t = self.tables.get(table)
        return t.chains.get(name) if t else None

    def by_forward(self) -> dict[str, list[Rule]]:
        """natbox's tagged rules grouped by forward name (first appearance order), in one pass.

        Not cached: rulesets are copied and edited (a simulated change, a forward left out), so
        whoever needs every forward's rules asks once and keeps the answer."""
        groups: dict[str, list[Rule]] = {}
        tagged = COMMENT_PREFIX + ":"
        for r in self.rules():
            if r.owner.startswith(tagged):
                name = r.owner[len(tagged) :]
                group = groups.get(name)
                if group is None:
                    groups[name] = [r]
                else:
                    group.append(r)
        return groups

    def forward_rules(self, name: str) -> list[Rule]:
        """The rules tagged `natbox:<name>`, in dump order (one pass; for every forward at once,
        use by_forward())."""
        tag = f"{COMMENT_PREFIX}:{name}"
        return [r for r in self.rules() if r.owner == tag]

    def forward_names(self) -> list[str]:
        """Names of the natbox forwards present, in order of first appearance."""
        return list(self.by_forward())
