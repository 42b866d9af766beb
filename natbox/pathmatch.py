"""Provides path-aware rule analysis: which rules a given packet really meets, from a built-in chain down.

A rule in a user chain sees only the packets that reached that chain, so the conditions of every jump
on the way count. `walk()` follows the jumps from a built-in chain for one Packet (what natbox knows
about the forward's traffic at that hook) and yields every rule the packet may meet, with how sure
that is (Match): ALL of the packet's traffic matches, SOME of it does (a port range half covered, any
client vs `-s 10.1.2.3`), or MAYBE (a match natbox cannot evaluate, such as `-m set` or `-m mark`).
Rules that cannot match (`-d <another cluster ip>`) are never yielded, nor anything behind them.

Pure: it reads a Ruleset and a Packet, nothing from the system. Rule texts are parsed once (cached).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import socket
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from enum import IntEnum
from functools import cached_property, lru_cache

from natbox.model import Forward, IPNetwork, Rule, Ruleset


class Match(IntEnum):
    """How much of a packet's traffic a rule (or a path of rules) matches; a conjunction is min()."""

    NONE = 0
    MAYBE = 1
    """natbox cannot tell: the rule has a match it does not evaluate."""
    SOME = 2
    """Part of the traffic matches (some clients, some ports, some packets)."""
    ALL = 3


TERMINAL = frozenset(
    {
        "ACCEPT",
        "DROP",
        "REJECT",
        "DNAT",
        "SNAT",
        "MASQUERADE",
        "REDIRECT",
        "NETMAP",
        "NFQUEUE",
        "QUEUE",
    }
)
DROPS = frozenset({"DROP", "REJECT"})
NAT_TARGETS = frozenset({"DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"})
CT_STATES = frozenset({"NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED"})
# Matches that select part of a flow's packets by something natbox does not model but that surely
# applies to some of them (a rate, a sample, TCP flags): SOME rather than MAYBE.
_PARTIAL_MODULES = frozenset(
    {"statistic", "limit", "hashlimit", "connlimit", "quota", "length", "time", "tcpmss"}
)
_IGNORED_MODULES = frozenset({"comment", "tcp", "udp", "sctp", "udplite", "multiport", "addrtype"})
_COMMENT_RE = re.compile(r'-m comment --comment (?:"(?:[^"\\]|\\.)*"|\S+) ?')


Span = tuple[int, int, int]
"""A network as (IP version, first address, last address), as integers: matching is comparisons."""


def _net(text: str) -> Span:
    """The span of `-s`/`-d`'s value (`10.0.0.0/8`, `10.1.2.3`); ValueError if it is none.

    Dotted IPv4 with a prefix length, as iptables-save prints it, is read without the ipaddress
    module (a kube-proxy chain names thousands of them); anything else goes through it."""
    addr, slash, bits = text.partition("/")
    if addr.count(".") == 3 and (not slash or (bits.isdigit() and int(bits) <= 32)):
        try:
            first = int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "big")
        except OSError:
            raise ValueError(text) from None
        size = 1 << (32 - (int(bits) if slash else 32))
        first -= first % size
        return (4, first, first + size - 1)
    return _span(ipaddress.ip_network(text, strict=False))


def _span(net: IPNetwork) -> Span:
    return (net.version, int(net.network_address), int(net.broadcast_address))


@dataclass(frozen=True)
class Packet:
    """What natbox knows about the forward's packets at one hook; None means any value."""

    proto: str
    """tcp or udp."""
    src: tuple[IPNetwork, ...] | None = None
    """The possible sources; None: any, (): an address no rule names (a typical client)."""
    dst: tuple[IPNetwork, ...] | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    iif: str | None = None
    oif: str | None = None
    dst_local: bool | None = None
    """Whether the destination is an address of this box (addrtype LOCAL)."""
    src_local: bool | None = None
    states: frozenset[str] = frozenset({"NEW"})
    """The conntrack states its packets can be in (NEW, ESTABLISHED, ...)."""
    dnat: bool = False
    """The connection has been DNATed (ctstate DNAT) by the time the packet is here."""
    snat: bool = False

    @cached_property
    def src_spans(self) -> tuple[Span, ...] | None:
        """`src` as spans (see _nets_match), worked out once per packet, not once per rule."""
        return None if self.src is None else tuple(_span(n) for n in self.src)

    @cached_property
    def dst_spans(self) -> tuple[Span, ...] | None:
        """`dst` as spans."""
        return None if self.dst is None else tuple(_span(n) for n in self.dst)

    def with_(self, **kw: object) -> Packet:
        """A copy with some fields changed."""
        return replace(self, **kw)  # type: ignore[arg-type]

    def typical(self) -> Packet:
        """The same packet from (or to) a client no rule names: unknown client addresses become ()."""
        return replace(
            self, src=() if self.src is None else self.src, dst=() if self.dst is None else self.dst
        )


Cond = Callable[[Packet], Match]


@dataclass(frozen=True)
class ParsedRule:
    """One rule's matches as conditions, its target and the target's options."""

    conds: tuple[Cond, ...]
    target: str
    target_args: tuple[str, ...]
    goto: bool = False
    unknown: tuple[str, ...] = ()
    """The matches natbox does not evaluate (e.g. `-m set`): they make the answer MAYBE."""

    def evaluate(self, pkt: Packet) -> Match:
        """How much of `pkt`'s traffic this rule's matches select."""
        best = Match.ALL
        for cond in self.conds:
            m = cond(pkt)
            if m is Match.NONE:
                return m
            best = min(best, m)
        if self.unknown:
            best = min(best, Match.MAYBE)
        return best

    def target_opt(self, flag: str) -> str | None:
        """The value of a target option such as --to-destination."""
        args = self.target_args
        for i, tok in enumerate(args[:-1]):
            if tok == flag:
                return args[i + 1]
        return None


def _negate(m: Match, neg: bool) -> Match:
    if not neg:
        return m
    return {Match.ALL: Match.NONE, Match.NONE: Match.ALL}.get(m, m)


def _nets_match(have: tuple[Span, ...] | None, rule: Span) -> Match:
    version, lo, hi = rule
    if lo == 0 and hi == (1 << (32 if version == 4 else 128)) - 1:  # 0.0.0.0/0, ::/0
        return Match.ALL if not have or any(n[0] == version for n in have) else Match.NONE
    if have is None:
        return Match.SOME
    inside = outside = 0
    for v, first, last in have:
        if v != version:
            outside += 1
        elif lo <= first and last <= hi:
            inside += 1
        elif first <= hi and lo <= last:
            return Match.SOME
        else:
            outside += 1
    if inside and outside:
        return Match.SOME
    return Match.ALL if inside else Match.NONE


def _ranges(text: str) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        lo, colon, hi = part.partition(":")
        if not (lo or hi).isdigit():
            continue
        first = int(lo) if lo else 0
        last = int(hi) if hi else (65535 if colon else first)
        out.append((first, last))
    return tuple(out)


def _ports_match(have: tuple[int, int] | None, rule: tuple[tuple[int, int], ...]) -> Match:
    lo, hi = have if have is not None else (0, 65535)
    covered = 0
    for a, b in sorted(rule):
        a, b = max(a, lo), min(b, hi)
        if a <= b:
            covered += b - a + 1  # ranges of one rule do not overlap in practice
    if covered == 0:
        return Match.NONE
    return Match.ALL if covered >= hi - lo + 1 else Match.SOME


def _iface_match(have: str | None, rule: str) -> Match:
    if have is None:
        return Match.SOME
    if rule.endswith("+"):
        return Match.ALL if have.startswith(rule[:-1]) else Match.NONE
    return Match.ALL if have == rule else Match.NONE


def _proto_match(have: str, rule: str) -> Match:
    rule = {"6": "tcp", "17": "udp", "0": "all"}.get(rule.lower(), rule.lower())
    return Match.ALL if rule in ("all", have) else Match.NONE


def _addrtype_match(local: bool | None, types: str) -> Match:
    if local is None:
        return Match.SOME
    kinds = set(types.upper().split(","))
    return Match.ALL if ("LOCAL" if local else "UNICAST") in kinds else Match.NONE


def _states_match(pkt: Packet, states: str) -> Match:
    want = set(states.upper().split(","))
    hits = sum(
        1
        for s in pkt.states
        if s in want or (pkt.dnat and "DNAT" in want) or (pkt.snat and "SNAT" in want)
    )
    if hits == 0:
        return Match.NONE
    return Match.ALL if hits == len(pkt.states) else Match.SOME


def _cond(kind: str, value: str, neg: bool) -> Cond | None:
    """A condition for one option, or None when natbox does not evaluate that option."""
    if kind in ("-s", "--source"):
        net = _net(value)
        return lambda p: _negate(_nets_match(p.src_spans, net), neg)
    if kind in ("-d", "--destination"):
        net = _net(value)
        return lambda p: _negate(_nets_match(p.dst_spans, net), neg)
    if kind in ("-p", "--protocol"):
        return lambda p: _negate(_proto_match(p.proto, value), neg)
    if kind in ("-i", "--in-interface"):
        return lambda p: _negate(_iface_match(p.iif, value), neg)
    if kind in ("-o", "--out-interface"):
        return lambda p: _negate(_iface_match(p.oif, value), neg)
    if kind in ("--dport", "--destination-port", "--dports", "--destination-ports"):
        ranges = _ranges(value)
        return lambda p: _negate(_ports_match(p.dport, ranges), neg)
    if kind in ("--sport", "--source-port", "--sports", "--source-ports"):
        ranges = _ranges(value)
        return lambda p: _negate(_ports_match(p.sport, ranges), neg)
    if kind == "--ports":
        ranges = _ranges(value)
        return lambda p: _negate(
            max(_ports_match(p.dport, ranges), _ports_match(p.sport, ranges)), neg
        )
    if kind == "--dst-type":
        return lambda p: _negate(_addrtype_match(p.dst_local, value), neg)
    if kind == "--src-type":
        return lambda p: _negate(_addrtype_match(p.src_local, value), neg)
    if kind in ("--ctstate", "--state"):
        return lambda p: _negate(_states_match(p, value), neg)
    return None


def _some(_: Packet) -> Match:
    return Match.SOME


# Options that take no value (or two), so the parser stays in step with the tokens.
_NO_VALUE = frozenset({"--syn", "--limit-iface-in", "--limit-iface-out", "-f", "--fragment"})
_TWO_VALUES = frozenset({"--tcp-flags"})
_PARTIAL_OPTS = frozenset({"--syn", "--tcp-flags", "-f", "--fragment", "--tcp-option"})
_EVALUATED_CT = frozenset({"--ctstate", "--state"})


def _tokens(text: str) -> list[str]:
    text = _COMMENT_RE.sub("", text)
    if '"' not in text:
        return text.split()
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


@lru_cache(maxsize=65536)
def parse_rule(text: str) -> ParsedRule:
    """Parse a rule in iptables-save form (`-A CHAIN ...`) into conditions and a target."""
    toks = _tokens(text)
    conds: list[Cond] = []
    unknown: list[str] = []
    module = ""
    neg = False
    i = 2 if toks[:1] == ["-A"] else 0
    target, goto = "", False
    args: tuple[str, ...] = ()
    while i < len(toks):
        tok = toks[i]
        if tok == "!":
            neg = True
            i += 1
            continue
        if tok in ("-j", "--jump", "-g", "--goto"):
            target = toks[i + 1] if i + 1 < len(toks) else ""
            goto = tok in ("-g", "--goto")
            args = tuple(toks[i + 2 :])
            break
        if tok in ("-m", "--match"):
            module = toks[i + 1] if i + 1 < len(toks) else ""
            if module in _PARTIAL_MODULES:
                conds.append(_some)
            elif module not in _IGNORED_MODULES and module not in ("conntrack", "state"):
                if module not in ("icmp", "icmp6", "icmpv6"):
                    unknown.append(f"-m {module}")
            i += 2
            continue
        if not tok.startswith("-"):
            i += 1  # a value of an option natbox skipped
            continue
        if tok in _NO_VALUE:
            if tok in _PARTIAL_OPTS:
                conds.append(_some)
            neg = False
            i += 1
            continue
        if tok in _TWO_VALUES:
            conds.append(_some)
            neg = False
            i += 3
            continue
        value = toks[i + 1] if i + 1 < len(toks) else ""
        if (value.startswith("-") and not value[1:2].isdigit()) or value == "!":
            # An option without a value (e.g. --physdev-is-bridged): natbox does not know it.
            unknown.append(tok if not module else f"-m {module}")
            neg = False
            i += 1
            continue
        cond = None
        try:
            cond = _cond(tok, value, neg)
        except ValueError:
            cond = None
        if cond is not None:
            conds.append(cond)
        elif tok in _PARTIAL_OPTS:
            conds.append(_some)
        elif module in ("conntrack", "state") and tok not in _EVALUATED_CT:
            unknown.append(f"-m {module} {'! ' if neg else ''}{tok} {value}")
        elif tok.startswith("--") and module in _IGNORED_MODULES | _PARTIAL_MODULES:
            pass  # e.g. --comment text, --mode random: no effect on which packets, or SOME already
        elif tok.startswith("--") and module and f"-m {module}" in unknown:
            pass  # the module is MAYBE already
        elif tok in ("--icmp-type", "--icmpv6-type"):
            pass  # only with -p icmp, which a tcp/udp packet does not match
        else:
            unknown.append(tok)
        neg = False
        i += 2
    return ParsedRule(tuple(conds), target, args, goto, tuple(dict.fromkeys(unknown)))


@dataclass(frozen=True)
class Hit:
    """A rule a packet may meet, how sure that is, and the jumps that lead to it."""

    rule: Rule
    match: Match
    parsed: ParsedRule
    via: tuple[Rule, ...] = ()
    top: int = 0
    """1-based position, in the built-in chain, of the rule (or jump) that leads here."""
    unknown: tuple[str, ...] = field(default=())
    """The unevaluated matches on the way (why a MAYBE is a MAYBE)."""

    @property
    def target(self) -> str:
        """The rule's target (-j/-g)."""
        return self.parsed.target

    @property
    def path(self) -> str:
        """`PREROUTING -> KUBE-SERVICES -> KUBE-NODEPORTS`: the chains on the way."""
        return " -> ".join([*(r.chain for r in self.via), self.rule.chain])


def walk(
    rs: Ruleset,
    table: str,
    builtin: str,
    pkt: Packet,
    *,
    skip: Callable[[Rule], bool] | None = None,
) -> Iterator[Hit]:
    """Every rule `pkt` may meet from `builtin` in `table`, in the order the kernel walks them.

    Jumps are followed with their conditions; a rule that surely ends the walk (ALL of the traffic
    meets a terminal target, or a RETURN) stops it. Rules for which `skip` is true are passed over
    (natbox's own, for instance).
    """
    chains = rs.tables[table].chains if table in rs.tables else {}

    def chain_walk(
        name: str, ctx: Match, via: tuple[Rule, ...], top: int, why: tuple[str, ...], depth: int
    ) -> Generator[Hit, None, bool]:
        """Yield hits; return (as StopIteration value) whether every packet entering ended here."""
        chain = chains.get(name)
        if chain is None or depth > 40:
            return False
        for i, rule in enumerate(chain.rules, 1):
            if skip is not None and skip(rule):
                continue
            parsed = parse_rule(rule.text)
            m = parsed.evaluate(pkt)
            if m is Match.NONE:
                continue
            here = top or i
            reasons = why + parsed.unknown
            yield Hit(rule, min(ctx, m), parsed, via, here, reasons)
            if parsed.target in chains and chains[parsed.target].policy is None:
                ended = yield from chain_walk(
                    parsed.target, min(ctx, m), (*via, rule), here, reasons, depth + 1
                )
                if m is Match.ALL and (ended or parsed.goto):
                    return bool(ended)
                continue
            if m is Match.ALL:
                if parsed.target in TERMINAL:
                    return True
                if parsed.target == "RETURN":
                    return False
        return False

    yield from chain_walk(builtin, Match.ALL, (), 0, (), 0)


@dataclass(frozen=True)
class Verdict:
    """Where a packet surely ends in a built-in chain, and what may end it earlier."""

    verdict: str
    """ACCEPT, DROP, REJECT, ... or the chain's policy; `?` when no rule surely decides."""
    decided_by: Hit | None
    """The rule that surely decides (None: the policy)."""
    earlier: tuple[Hit, ...]
    """Terminal rules before it that match part of the traffic, or may match it."""


def verdict(
    rs: Ruleset,
    table: str,
    builtin: str,
    pkt: Packet,
    *,
    skip: Callable[[Rule], bool] | None = None,
    stop: Callable[[Rule], bool] | None = None,
) -> Verdict:
    """The verdict `builtin` gives `pkt`: the first rule that surely decides, or the policy.

    `stop(rule)` ends the walk at a top-level rule (natbox's own jump: what lies behind it is natbox's).
    """
    chain = rs.chain(table, builtin)
    policy = (chain.policy if chain is not None else None) or "ACCEPT"
    earlier: list[Hit] = []
    for hit in walk(rs, table, builtin, pkt, skip=skip):
        if stop is not None and not hit.via and stop(hit.rule):
            return Verdict("natbox", hit, tuple(earlier))
        if hit.target not in TERMINAL:
            continue
        if hit.match is Match.ALL:
            return Verdict(hit.target, hit, tuple(earlier))
        earlier.append(hit)
    return Verdict(policy, None, tuple(earlier))


# ---------------------------------------------------------------- the forward's packets at each hook


def _host(ip: object) -> tuple[IPNetwork, ...]:
    return (ipaddress.ip_network(str(ip)),)


def _sources(fwd: Forward) -> tuple[IPNetwork, ...] | None:
    return tuple(fwd.sources) or None


def client_request(fwd: Forward, proto: str, iif: str | None, listen_local: bool | None) -> Packet:
    """A client's first packet to the listen address, as nat PREROUTING sees it."""
    return Packet(
        proto,
        src=_sources(fwd),
        dst=_host(fwd.listen.ip),
        dport=(fwd.listen.port, fwd.listen.port_end),
        iif=iif,
        dst_local=listen_local,
        src_local=False,
    )


def forwarded_request(fwd: Forward, proto: str, iif: str | None, oif: str | None) -> Packet:
    """The client's packets after the DNAT, as filter FORWARD sees them."""
    return Packet(
        proto,
        src=_sources(fwd),
        dst=_host(fwd.backend.ip),
        dport=(fwd.backend.port, fwd.backend.port_end),
        iif=iif,
        oif=oif,
        dst_local=False,
        src_local=False,
        states=frozenset({"NEW", "ESTABLISHED"}),
        dnat=True,
    )


def forwarded_reply(fwd: Forward, proto: str, iif: str | None, oif: str | None) -> Packet:
    """The backend's replies, as filter FORWARD sees them (SNAT undone, DNAT not yet)."""
    return Packet(
        proto,
        src=_host(fwd.backend.ip),
        dst=_sources(fwd),
        sport=(fwd.backend.port, fwd.backend.port_end),
        iif=iif,
        oif=oif,
        dst_local=False,
        src_local=False,
        states=frozenset({"ESTABLISHED"}),
        dnat=True,
        snat=True,
    )


def to_backend(fwd: Forward, proto: str, oif: str | None) -> Packet:
    """The client's first packet after the DNAT, as nat POSTROUTING sees it."""
    return Packet(
        proto,
        src=_sources(fwd),
        dst=_host(fwd.backend.ip),
        dport=(fwd.backend.port, fwd.backend.port_end),
        oif=oif,
        dst_local=False,
        src_local=False,
        dnat=True,
    )


def probe(fwd: Forward, src: object | None, oif: str | None) -> Packet:
    """This box's own TCP connect to the backend, as filter OUTPUT sees it."""
    return Packet(
        "tcp",
        src=_host(src) if src is not None else None,
        dst=_host(fwd.backend.ip),
        dport=(fwd.backend.port, fwd.backend.port),
        oif=oif,
        dst_local=False,
        src_local=True,
    )


def owner(rule: Rule) -> str:
    """Who wrote a rule, for people: natbox, docker, kube, ufw, firewalld or other."""
    if rule.owner.startswith("natbox"):
        return "natbox"
    if rule.owner != "other":
        return rule.owner
    low = rule.chain.lower()
    for name in ("ufw", "firewalld", "shorewall"):
        if low.startswith(name) or f"-j {name}" in rule.text.lower():
            return name
    return "other"


def describe(hit: Hit) -> str:
    """A hit as one line: the rule in iptables-save form, its owner and how it is reached."""
    via = f"; via {' -> '.join(r.chain for r in hit.via)}" if hit.via else ""
    why = f"; cannot evaluate {', '.join(hit.unknown)}" if hit.match is Match.MAYBE else ""
    return f"{hit.rule.text}  ({owner(hit.rule)}{via}{why})"
