"""Provides flow selection: which forward a flow belongs to, filters, sorts, and finding one flow."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from natbox.conntrack.flow import (
    _D1,
    _DP1,
    _PROTO,
    _RDP,
    _REST_OF,
    _RSP,
    _S1,
    _SP1,
    _STATE,
    _TIMEOUT,
    Flow,
    Tuple,
    _hp,
)
from natbox.errors import NotFoundError, ValidationError
from natbox.model import Endpoint, Forward


class ForwardIndex:
    """Which natbox forward a flow belongs to: its original destination is the forward's listen
    ip:port/proto. Looked up on the raw fields, so tagging 100k flows converts nothing."""

    def __init__(self, forwards: Iterable[Forward] = ()) -> None:
        self._index: dict[tuple[str, str, str], str] = {}
        for fwd in forwards:
            for proto in fwd.protocols:
                for port in range(fwd.listen.port, fwd.listen.port_end + 1):
                    # /proc prints IPv6 fully expanded, conntrack -L compressed: index both.
                    for form in {str(fwd.listen.ip), fwd.listen.ip.exploded}:
                        self._index[(proto, form, str(port))] = fwd.name

    def __call__(self, flow: Flow) -> str | None:
        return self._index.get((flow[_PROTO], flow[_D1], flow[_DP1])) if self._index else None

    def packed(self) -> dict[tuple[str, bytes, int], str]:
        """The same index for the ctnetlink decoder: (protocol, packed address, port)."""
        return {
            (proto, ipaddress.ip_address(ip).packed, int(port)): name
            for (proto, ip, port), name in self._index.items()
        }


SORT_KEYS = ("age", "bytes", "packets", "timeout")
_BYTES = re.compile(r" bytes=(\d+)")
_PACKETS = re.compile(r" packets=(\d+)")
DESCENDING = frozenset({"age", "bytes", "packets"})
"""Sorts whose natural direction is biggest first (timeout: what expires first, first)."""


def _sort_key(sort: str) -> tuple[Callable[[Flow], int], bool]:
    if sort == "age":
        return (lambda f: -1 if f.age is None else f.age), True
    if sort == "bytes":
        # A parsed line's counters are in its rest (one findall); a decoded row has them apart.
        return (
            lambda f: sum(map(int, _BYTES.findall(f[_REST_OF]))) if f[_REST_OF] else f.bytes
        ), True
    if sort == "packets":
        return (
            lambda f: sum(map(int, _PACKETS.findall(f[_REST_OF]))) if f[_REST_OF] else f.packets
        ), True
    return (lambda f: int(f[1])), False


def select(
    flows: Iterable[Flow],
    *,
    index: ForwardIndex | None = None,
    forward: str | None = None,
    proto: str | None = None,
    state: str | None = None,
    sort: str | None = None,
    reverse: bool = False,
    limit: int | None = None,
) -> list[Flow]:
    """Filter and sort flows as `natbox conntrack` and the viewer do.

    Each sort has its natural direction (biggest bytes/packets/age first, soonest timeout first);
    `reverse` turns it around (the viewer's `S`).
    """
    owner = index or ForwardIndex()
    if forward is None and proto is None and state is None:
        out = list(flows)
    else:
        want_state = state.upper() if state is not None else None
        out = [
            f
            for f in flows
            if (forward is None or owner(f) == forward)
            and (proto is None or f[_PROTO] == proto)
            and (want_state is None or f[_STATE].upper() == want_state)
        ]
    if sort is not None:
        key, descending = _sort_key(sort)
        out.sort(key=key, reverse=descending != reverse)
    elif reverse:
        out.reverse()
    return out[:limit] if limit is not None else out


def locate(rows: list[Flow], want: Flow | None, near: int = 0) -> int:
    """Where the flow `want` (or its successor in a newer read: same key) is in `rows`; else the
    row at `near`. The same object is found at C speed; a key is compared only where the client's
    address and port already match."""
    if want is None or not rows:
        return 0
    for i, f in enumerate(rows):
        if f is want:
            return i
    key, src, sport = want.key, want[_S1], want[_SP1]
    for i, f in enumerate(rows):
        if f[_SP1] == sport and f[_S1] == src and f.key == key:
            return i
    return max(0, min(near, len(rows) - 1))


TEXT_HEADER = (
    f"{'PROTO':<7}{'STATE':<12}{'TTL':>6}  {'FLOW  client → listen => snat → backend':<62}"
    f"{'PKTS':>7}{'BYTES':>10}  FORWARD\n"
)


def text_lines(flows: list[Flow], index: ForwardIndex, accounting: bool) -> str:
    """`natbox conntrack`'s rows for these flows, one line each (the columns of TEXT_HEADER)."""
    off = f"{'-':>7}{'-':>10}"
    out: list[str] = []
    add = out.append
    for f in flows:
        counters = f"{f.packets:>7}{f.bytes:>10}" if accounting else off
        add(
            f"{f[_PROTO]:<7}{f[_STATE] or '-':<12}{f[_TIMEOUT]:>6}  {f.path():<62}{counters}"
            f"  {index(f) or ''}\n"
        )
    return "".join(out)


def row_text(flow: Flow, owner: str | None) -> str:
    """What a viewer row shows, lower case: protocol, state, both tuples, forward (filter text)."""
    s1, d1, sp1, dp1, _rest, s2, d2, sp2, dp2 = flow[_S1 : _RDP + 1]
    if ":" in s1:
        c, li, sn, b = _hp(s1, sp1), _hp(d1, dp1), _hp(d2, dp2), _hp(s2, sp2)
    else:
        c = f"{s1}:{sp1}" if sp1 else s1
        li = f"{d1}:{dp1}" if dp1 else d1
        sn = f"{d2}:{dp2}" if dp2 else d2
        b = f"{s2}:{sp2}" if sp2 else s2
    return f"{flow[_PROTO]} {flow[_STATE] or '-'} {c} → {li} => {sn} → {b} {owner or ''}".lower()


FIELDS = {
    "proto": "proto",
    "state": "state",
    "fwd": "forward",
    "forward": "forward",
    "port": "port",
}
"""Field filters the viewer understands: `proto:udp state:ESTABLISHED fwd:web port:1234`."""


@dataclass(frozen=True)
class FlowFilter:
    """The viewer's filter: words that must all appear in a row's text, plus field filters."""

    text: str = ""
    terms: tuple[str, ...] = ()
    proto: str | None = None
    state: str | None = None
    forward: str | None = None
    port: str | None = None

    @classmethod
    def parse(cls, text: str) -> FlowFilter:
        """`web 192.168.1.20 proto:udp port:1234` -> terms and fields (unknown `x:y` is a term)."""
        terms: list[str] = []
        fields: dict[str, str] = {}
        for word in text.split():
            key, colon, value = word.partition(":")
            if colon and value and key.lower() in FIELDS:
                fields[FIELDS[key.lower()]] = value
            else:
                terms.append(word.lower())
        return cls(
            text,
            tuple(terms),
            fields.get("proto", "").lower() or None,
            fields.get("state", "").upper() or None,
            fields.get("forward"),
            fields.get("port"),
        )

    def __bool__(self) -> bool:
        return bool(self.terms) or any((self.proto, self.state, self.forward, self.port))

    def fields(self) -> tuple[str | None, ...]:
        """The field filters (not the words)."""
        return (self.proto, self.state, self.forward, self.port)

    def narrows(self, before: FlowFilter) -> bool:
        """True when every row this filter keeps was kept by `before` (typing on: filter the
        rows already found, not the whole table)."""
        if self.fields() != before.fields():
            return False
        return all(any(old in new for new in self.terms) for old in before.terms)

    def apply_pairs(
        self, pairs: Iterable[tuple[Flow, str]], index: ForwardIndex
    ) -> list[tuple[Flow, str]]:
        """The (flow, row_text) pairs that pass: with the text made once per table read, a
        keystroke costs one substring test per flow."""
        proto, state, forward, port, terms = (
            self.proto,
            self.state,
            self.forward,
            self.port,
            self.terms,
        )
        if not (proto or state or forward or port):
            return [p for p in pairs if all(t in p[1] for t in terms)]
        out: list[tuple[Flow, str]] = []
        for pair in pairs:
            f, hay = pair
            if proto is not None and f[_PROTO] != proto:
                continue
            if state is not None and f[_STATE].upper() != state:
                continue
            if port is not None and port not in (f[_SP1], f[_DP1], f[_RSP], f[_RDP]):
                continue
            if forward is not None and index(f) != forward:
                continue
            if all(t in hay for t in terms):
                out.append(pair)
        return out

    def apply(self, flows: Iterable[Flow], index: ForwardIndex) -> list[Flow]:
        """The flows that pass."""
        proto, state, forward, port, terms = (
            self.proto,
            self.state,
            self.forward,
            self.port,
            self.terms,
        )
        out: list[Flow] = []
        keep = out.append
        for f in flows:
            if proto is not None and f[_PROTO] != proto:
                continue
            if state is not None and f[_STATE].upper() != state:
                continue
            if port is not None and port not in (f[_SP1], f[_DP1], f[_RSP], f[_RDP]):
                continue
            owner = index(f) if (forward is not None or terms) else None
            if forward is not None and owner != forward:
                continue
            if terms:
                hay = row_text(f, owner)
                if not all(t in hay for t in terms):
                    continue
            keep(f)
        return out


def parse_tuple(proto: str, src: str, dst: str) -> Flow:
    """A flow stub from `PROTO SRC:SPORT DST:DPORT`, for `natbox conntrack kill --tuple`."""
    if proto not in ("tcp", "udp"):
        raise ValidationError(
            f"--tuple takes tcp or udp, not {proto!r}", "use --forward for others"
        )
    a, b = Endpoint.parse(src, "source"), Endpoint.parse(dst, "destination")
    if a.is_range or b.is_range:
        raise ValidationError("--tuple takes single ports, not ranges", "give SRC:SPORT DST:DPORT")
    tup = Tuple(str(a.ip), str(b.ip), a.port, b.port)
    return Flow.make(proto, 0, None, tup, tup)


def find(flows: Iterable[Flow], wanted: Flow) -> Flow:
    """The flow whose original tuple is `wanted`'s."""
    for f in flows:
        if f.proto == wanted.proto and f.orig == wanted.orig:
            return f
    raise NotFoundError(f"no {wanted.proto} flow {wanted.orig}", "natbox conntrack lists them")
