"""Provides flow selection: which forward a flow belongs to, filters, sorts, and finding one flow."""

from __future__ import annotations

from collections.abc import Iterable

from natbox.conntrack.flow import _D1, _DP1, _PROTO, Flow, Tuple
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


SORT_KEYS = ("age", "bytes", "packets", "timeout")


def select(
    flows: Iterable[Flow],
    *,
    index: ForwardIndex | None = None,
    forward: str | None = None,
    proto: str | None = None,
    state: str | None = None,
    sort: str | None = None,
    limit: int | None = None,
) -> list[Flow]:
    """Filter and sort flows as `natbox conntrack` and the viewer do."""
    owner = index or ForwardIndex()
    out = [
        f
        for f in flows
        if (forward is None or owner(f) == forward)
        and (proto is None or f.proto == proto)
        and (state is None or (f.state or "").upper() == state.upper())
    ]
    if sort == "age":
        out.sort(key=lambda f: -1 if f.age is None else f.age, reverse=True)
    elif sort == "bytes":
        out.sort(key=lambda f: f.bytes, reverse=True)
    elif sort == "packets":
        out.sort(key=lambda f: f.packets, reverse=True)
    elif sort == "timeout":
        out.sort(key=lambda f: f.timeout)
    return out[:limit] if limit is not None else out


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
