"""Provides Flow: one conntrack entry with both tuples, parsed from the kernel's line format.

A row is one regex pass over the line (`LINE`), kept as the fields the kernel printed and converted
on access; `parse_generic` reads every other protocol token by token.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import NamedTuple

# One pass over the whole text: TCP/UDP lines (the bulk of any big table) are split into the fields
# that bulk work needs (filter, forward lookup, key); the rest of the line is kept whole and parsed
# on access. Any other line lands whole in the last group and takes the generic path.
_LINE = re.compile(
    r"^(?:ipv[46]\s+\d+\s+)?(?:(tcp|udp)\s+\d+\s+(\d+)\s+(?:([A-Z_]+)\s+)?"
    r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)"
    r"((?: packets=\d+ bytes=\d+)?(?: \[UNREPLIED\])? src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+).*)"
    r"|(.+))$",
    re.MULTILINE,
)
_REST = re.compile(
    r"(?: packets=(\d+) bytes=(\d+))?( \[UNREPLIED\])? src=(\S+) dst=(\S+)(?: sport=(\d+) dport=(\d+))?"
    r"(?: packets=(\d+) bytes=(\d+))?(.*)"
)
_FLAGS = re.compile(r"\[([A-Z_]+)\]")
_L3 = {"ipv4": 4, "ipv6": 6}
# Field positions in a Flow row (the groups of _LINE: both tuples, and the rest of the line from the
# reply's counters on, parsed on access) and in that rest (the groups of _REST).
_PROTO, _TIMEOUT, _STATE, _S1, _D1, _SP1, _DP1, _REST_OF, _RS, _RD, _RSP, _RDP, _OTHER = range(13)
_P1, _B1, _UNREP, _S2, _D2, _SP2, _DP2, _P2, _B2, _TAIL = range(10)


class Tuple(NamedTuple):
    """One direction of a flow. Ports are None for protocols without them (ICMP: id/type/code)."""

    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None

    def __str__(self) -> str:
        return f"{_hostport(self.src, self.sport)} → {_hostport(self.dst, self.dport)}"


def _hostport(ip: str, port: int | None) -> str:
    if port is None:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _hp(ip: str, port: str) -> str:
    """_hostport on a row's raw fields: the address as printed (IPv6 shortened), the port as text."""
    if ":" in ip:
        ip = _short_ip(ip)
        return f"[{ip}]:{port}" if port else ip
    return f"{ip}:{port}" if port else ip


def _word(tail: str, key: str) -> str:
    """The value of `key=` in a row's tail, as text ("" when absent)."""
    at = tail.find(key + "=")
    while at > 0 and tail[at - 1] != " ":
        at = tail.find(key + "=", at + 1)
    if at < 0:
        return ""
    return tail[at + len(key) + 1 :].split(" ", 1)[0]


def _short_ip(ip: str) -> str:
    # /proc prints IPv6 fully expanded; conntrack -L compressed. One form for both.
    return str(ipaddress.IPv6Address(ip)) if ":" in ip else ip


def _opt_int(text: str) -> int | None:
    return int(text) if text else None


class Flow(tuple[str, ...]):
    """One conntrack entry with both tuples, kept as the fields the kernel printed.

    A row is made in one regex pass and converted on access: a 100k-flow table is parsed at the
    speed of reading it, and a viewer pays for numbers only on the rows it shows or sorts by.
    """

    __slots__ = ()

    @classmethod
    def make(
        cls,
        proto: str,
        timeout: int,
        state: str | None,
        orig: Tuple,
        reply: Tuple,
        *,
        counters: tuple[int | None, int | None, int | None, int | None] = (None, None, None, None),
        unreplied: bool = False,
        tail: str = "",
    ) -> Flow:
        """Build a row from values (the generic parser and `--tuple` use this)."""

        def s(v: object) -> str:
            return "" if v is None else str(v)

        c1 = f" packets={counters[0]} bytes={counters[1]}" if counters[0] is not None else ""
        c2 = f" packets={counters[2]} bytes={counters[3]}" if counters[2] is not None else ""
        ports = f" sport={reply.sport} dport={reply.dport}" if reply.sport is not None else ""
        rest = f"{c1}{' [UNREPLIED]' if unreplied else ''} src={reply.src} dst={reply.dst}{ports}{c2}{tail}"
        return cls(
            (
                proto,
                str(timeout),
                s(state),
                orig.src,
                orig.dst,
                s(orig.sport),
                s(orig.dport),
                rest,
                reply.src,
                reply.dst,
                s(reply.sport),
                s(reply.dport),
            )
        )

    def _rest(self) -> tuple[str, ...]:
        m = _REST.match(self[_REST_OF])
        if m is None:  # cannot happen for rows made by the parser; keeps types honest
            raise ValueError(f"unparsable conntrack row: {self!r}")
        return m.groups(default="")

    @property
    def proto(self) -> str:
        """Layer-4 protocol name as the kernel prints it (tcp, udp, icmp, icmpv6, gre, ...)."""
        return self[_PROTO]

    @property
    def family(self) -> int:
        """4 or 6."""
        return 6 if ":" in self[_S1] else 4

    @property
    def timeout(self) -> int:
        """Seconds until the kernel forgets the flow."""
        return int(self[_TIMEOUT])

    @property
    def state(self) -> str | None:
        """TCP (or SCTP/DCCP) state; None for stateless protocols."""
        return self[_STATE] or None

    @property
    def orig(self) -> Tuple:
        """The original direction: client → address it asked for."""
        return Tuple(
            _short_ip(self[_S1]), _short_ip(self[_D1]), _opt_int(self[_SP1]), _opt_int(self[_DP1])
        )

    @property
    def reply(self) -> Tuple:
        """The reply direction as the kernel expects it: backend → SNAT source."""
        return Tuple(
            _short_ip(self[_RS]), _short_ip(self[_RD]), _opt_int(self[_RSP]), _opt_int(self[_RDP])
        )

    @property
    def flags(self) -> tuple[str, ...]:
        """UNREPLIED, ASSURED, OFFLOAD, ..."""
        r = self._rest()
        found = tuple(_FLAGS.findall(r[_TAIL])) if "[" in r[_TAIL] else ()
        return ("UNREPLIED", *found) if r[_UNREP] else found

    def _tail_int(self, key: str) -> int | None:
        tail = self._rest()[_TAIL]
        at = tail.find(" " + key + "=")
        if at < 0 and tail.startswith(key + "="):
            at = -1
        elif at < 0:
            return None
        rest = tail[at + len(key) + 2 :]
        return int(rest.split(" ", 1)[0])

    @property
    def mark(self) -> int:
        """The connection mark."""
        return self._tail_int("mark") or 0

    @property
    def zone(self) -> int:
        """The conntrack zone (0 when none)."""
        return self._tail_int("zone") or 0

    @property
    def age(self) -> int | None:
        """Seconds since the flow started (only with net.netfilter.nf_conntrack_timestamp=1)."""
        return self._tail_int("delta-time")

    @property
    def extra(self) -> str:
        """Protocol details that are not ports, e.g. `type=8 code=0 id=4711` for ICMP."""
        tail = self._rest()[_TAIL]
        if "type=" not in tail:
            return ""
        return " ".join(t for t in tail.split() if t.startswith(("type=", "code=", "id=")))

    @property
    def orig_packets(self) -> int | None:
        """Packets client → server (None without accounting)."""
        return _opt_int(self._rest()[_P1])

    @property
    def orig_bytes(self) -> int | None:
        """Bytes client → server (None without accounting)."""
        return _opt_int(self._rest()[_B1])

    @property
    def reply_packets(self) -> int | None:
        """Packets server → client (None without accounting)."""
        return _opt_int(self._rest()[_P2])

    @property
    def reply_bytes(self) -> int | None:
        """Bytes server → client (None without accounting)."""
        return _opt_int(self._rest()[_B2])

    @property
    def packets(self) -> int:
        """Packets both ways (0 without accounting)."""
        r = self._rest()
        return int(r[_P1] or 0) + int(r[_P2] or 0)

    @property
    def bytes(self) -> int:
        """Bytes both ways (0 without accounting)."""
        r = self._rest()
        return int(r[_B1] or 0) + int(r[_B2] or 0)

    @property
    def key(self) -> tuple[str, ...]:
        """What identifies a flow across refreshes (the kernel's own key: original tuple + zone)."""
        src, dst = self[_S1], self[_D1]
        if ":" in src:
            src, dst = _short_ip(src), _short_ip(dst)
        return (self[_PROTO], src, dst, self[_SP1], self[_DP1], str(self.zone))

    @property
    def listen_key(self) -> tuple[str, str, str]:
        """(proto, original destination address, its port) exactly as the kernel printed them (IPv6
        expanded from /proc): what a forward's listen side is found by, with nothing converted."""
        return (self[_PROTO], self[_D1], self[_DP1])

    @property
    def reply_src(self) -> str:
        """`reply.src` (the backend of a DNATed flow) without building the Tuple: scans of
        100,000 flows ask it of every one."""
        return self[_RS]

    @property
    def dnat(self) -> bool:
        """The destination was rewritten: replies come from somewhere else than the client asked."""
        return self[_RS] != self[_D1] or self[_RSP] != self[_DP1]

    @property
    def snat(self) -> bool:
        """The source was rewritten: the server answers an address other than the client's."""
        return self[_RD] != self[_S1] or self[_RDP] != self[_SP1]

    def path(self) -> str:
        """client → listen => snat-source → backend, the translation made visible."""
        # Raw fields, no Tuple objects: `natbox conntrack` prints 100k of these.
        s1, d1, sp1, dp1, _rest, s2, d2, sp2, dp2 = self[_S1 : _RDP + 1]
        client, listen = _hp(s1, sp1), _hp(d1, dp1)
        if s2 == d1 and sp2 == dp1 and d2 == s1 and dp2 == sp1:
            return f"{client} → {listen}"
        # The server sees the reply tuple reversed: from reply.dst to reply.src.
        return f"{client} → {listen} => {_hp(d2, dp2)} → {_hp(s2, sp2)}"

    def to_json(self, forward: str | None = None, *, plain: bool = False) -> str:
        """`to_dict` as compact JSON text, written directly (one f-string, no dict, no encoder).

        Every value is a number, a protocol/state/flag word, an address or a validated forward
        name; a row with anything that would need escaping takes the json module's path.
        `plain`: the caller knows the whole table has no such character (FlowRead.plain).
        """
        if not plain:
            raw = "".join(self)
            if '"' in raw or "\\" in raw or not raw.isprintable():
                return json.dumps(self.to_dict(forward), separators=(",", ":"))
        r = self._rest()
        s1, d1, sp1, dp1 = self[_S1], self[_D1], self[_SP1], self[_DP1]
        s2, d2, sp2, dp2 = self[_RS], self[_RD], self[_RSP], self[_RDP]
        v6 = ":" in s1
        if v6:
            s1, d1, s2, d2 = _short_ip(s1), _short_ip(d1), _short_ip(s2), _short_ip(d2)
        tail = r[_TAIL]
        flags = _FLAGS.findall(tail) if "[" in tail else []
        if r[_UNREP]:
            flags.insert(0, "UNREPLIED")
        state = self[_STATE]
        fwd = "null" if forward is None else f'"{forward}"'
        extra = ""
        if "type=" in tail:
            extra = " ".join(t for t in tail.split() if t.startswith(("type=", "code=", "id=")))
        dnat = "true" if (self[_RS] != self[_D1] or sp2 != dp1) else "false"
        snat = "true" if (self[_RD] != self[_S1] or dp2 != sp1) else "false"
        return (
            f'{{"family":"ipv{6 if v6 else 4}","proto":"{self[_PROTO]}",'
            f'"state":{f"{chr(34)}{state}{chr(34)}" if state else "null"},"timeout":{self[_TIMEOUT]},'
            f'"orig":{{"src":"{s1}","dst":"{d1}","sport":{sp1 or "null"},"dport":{dp1 or "null"}}},'
            f'"reply":{{"src":"{s2}","dst":"{d2}","sport":{sp2 or "null"},"dport":{dp2 or "null"}}},'
            f'"flags":[{",".join(f"{chr(34)}{x}{chr(34)}" for x in flags)}],'
            f'"mark":{_word(tail, "mark") or 0},"zone":{_word(tail, "zone") or 0},'
            f'"orig_packets":{r[_P1] or "null"},"orig_bytes":{r[_B1] or "null"},'
            f'"reply_packets":{r[_P2] or "null"},"reply_bytes":{r[_B2] or "null"},'
            f'"age":{_word(tail, "delta-time") or "null"},"extra":"{extra}",'
            f'"dnat":{dnat},"snat":{snat},"forward":{fwd}}}'
        )

    def to_dict(self, forward: str | None = None) -> dict[str, object]:
        """JSON-ready, both tuples in full."""
        return {
            "family": f"ipv{self.family}",
            "proto": self.proto,
            "state": self.state,
            "timeout": self.timeout,
            "orig": self.orig._asdict(),
            "reply": self.reply._asdict(),
            "flags": list(self.flags),
            "mark": self.mark,
            "zone": self.zone,
            "orig_packets": self.orig_packets,
            "orig_bytes": self.orig_bytes,
            "reply_packets": self.reply_packets,
            "reply_bytes": self.reply_bytes,
            "age": self.age,
            "extra": self.extra,
            "dnat": self.dnat,
            "snat": self.snat,
            "forward": forward,
        }


def parse_generic(line: str) -> Flow:
    """Parse any conntrack line token by token (ICMP, GRE, SCTP, unknown protocols)."""
    tokens = line.replace(",", " ").split()
    i = 2 if tokens[0] in _L3 else 0
    proto = tokens[i]
    int(tokens[i + 1])  # protocol number: must be numeric, else the line is malformed
    timeout = int(tokens[i + 2])
    state: str | None = None
    tuples: list[dict[str, str]] = []
    counters: list[list[int | None]] = []
    tail: list[str] = []
    extra: list[str] = []
    unreplied = False
    for tok in tokens[i + 3 :]:
        if tok.startswith("["):
            if tok == "[UNREPLIED]":
                unreplied = True
            else:
                tail.append(tok)
            continue
        key, eq, value = tok.partition("=")
        if not eq:
            if not tuples and state is None:
                state = tok
            continue
        if key == "src":
            tuples.append({})
            counters.append([None, None])
        if key in ("src", "dst", "sport", "dport") and tuples and key not in tuples[-1]:
            tuples[-1][key] = value
        elif key in ("type", "code", "id") and len(tuples) == 1:
            extra.append(tok)
        elif key == "packets" and counters:
            counters[-1][0] = int(value)
        elif key == "bytes" and counters:
            counters[-1][1] = int(value)
        elif key in ("mark", "zone", "delta-time"):
            tail.append(tok)
    if len(tuples) < 2:
        raise ValueError("a flow needs two tuples")

    def tup(d: dict[str, str]) -> Tuple:
        sp, dp = d.get("sport"), d.get("dport")
        return Tuple(d["src"], d["dst"], int(sp) if sp else None, int(dp) if dp else None)

    return Flow.make(
        proto,
        timeout,
        state,
        tup(tuples[0]),
        tup(tuples[1]),
        counters=(counters[0][0], counters[0][1], counters[1][0], counters[1][1]),
        unreplied=unreplied,
        tail=" " + " ".join(extra + tail) if extra or tail else "",
    )


# Field positions a decoded row (ctnetlink) adds after the 12 of every Flow: the counters as text
# ("" without accounting), the flags, mark, zone, age ("" without timestamps) and ICMP details.
_P1S, _B1S, _P2S, _B2S, _FLAGS_OF, _MARK, _ZONE, _AGE, _EXTRA = range(12, 21)
_FLAGS_JSON: dict[tuple[str, ...], str] = {}


def _hp_short(ip: str, port: str) -> str:
    """_hp on an address that is already in its short form (decoded rows)."""
    if ":" in ip:
        return f"[{ip}]:{port}" if port else ip
    return f"{ip}:{port}" if port else ip


class Decoded(Flow):
    """A Flow decoded from a ctnetlink dump: the same 12 fields as a parsed line (addresses in
    their short form, the `rest` of the line empty), then every other field already decoded, so
    nothing is parsed again on access (`natbox conntrack` formats 100k of these)."""

    __slots__ = ()

    def _rest(self) -> tuple[str, ...]:
        # What the line regex would have found, for any code that asks for it.
        flags = self[_FLAGS_OF]
        unreplied = bool(flags) and flags[0] == "UNREPLIED"
        tail = "".join(f" [{x}]" for x in flags[1 if unreplied else 0 :])
        tail += f" mark={self[_MARK]} zone={self[_ZONE]}"
        if self[_AGE]:
            tail += f" delta-time={self[_AGE]}"
        if self[_EXTRA]:
            tail = f" {self[_EXTRA]}{tail}"
        return (
            self[_P1S],
            self[_B1S],
            " [UNREPLIED]" if unreplied else "",
            self[_RS],
            self[_RD],
            self[_RSP],
            self[_RDP],
            self[_P2S],
            self[_B2S],
            tail,
        )

    @property
    def orig(self) -> Tuple:
        """The original direction: client → address it asked for."""
        return Tuple(self[_S1], self[_D1], _opt_int(self[_SP1]), _opt_int(self[_DP1]))

    @property
    def reply(self) -> Tuple:
        """The reply direction as the kernel expects it: backend → SNAT source."""
        return Tuple(self[_RS], self[_RD], _opt_int(self[_RSP]), _opt_int(self[_RDP]))

    @property
    def flags(self) -> tuple[str, ...]:
        """UNREPLIED, ASSURED, OFFLOAD, ..."""
        flags: tuple[str, ...] = self[_FLAGS_OF]  # type: ignore[assignment]
        return flags

    @property
    def mark(self) -> int:
        """The connection mark."""
        return int(self[_MARK])

    @property
    def zone(self) -> int:
        """The conntrack zone (0 when none)."""
        return int(self[_ZONE])

    @property
    def age(self) -> int | None:
        """Seconds since the flow started (only with net.netfilter.nf_conntrack_timestamp=1)."""
        return _opt_int(self[_AGE])

    @property
    def extra(self) -> str:
        """Protocol details that are not ports, e.g. `type=8 code=0 id=4711` for ICMP."""
        return self[_EXTRA]

    @property
    def orig_packets(self) -> int | None:
        """Packets client → server (None without accounting)."""
        return _opt_int(self[_P1S])

    @property
    def orig_bytes(self) -> int | None:
        """Bytes client → server (None without accounting)."""
        return _opt_int(self[_B1S])

    @property
    def reply_packets(self) -> int | None:
        """Packets server → client (None without accounting)."""
        return _opt_int(self[_P2S])

    @property
    def reply_bytes(self) -> int | None:
        """Bytes server → client (None without accounting)."""
        return _opt_int(self[_B2S])

    @property
    def packets(self) -> int:
        """Packets both ways (0 without accounting)."""
        return int(self[_P1S] or 0) + int(self[_P2S] or 0)

    @property
    def bytes(self) -> int:
        """Bytes both ways (0 without accounting)."""
        return int(self[_B1S] or 0) + int(self[_B2S] or 0)

    @property
    def key(self) -> tuple[str, ...]:
        """What identifies a flow across refreshes (the kernel's own key: original tuple + zone)."""
        return (self[_PROTO], self[_S1], self[_D1], self[_SP1], self[_DP1], self[_ZONE])

    def path(self) -> str:
        """client → listen => snat-source → backend, the translation made visible."""
        s1, d1, sp1, dp1, _rest, s2, d2, sp2, dp2 = self[_S1 : _RDP + 1]
        if ":" in s1:
            client, listen = _hp_short(s1, sp1), _hp_short(d1, dp1)
            if s2 == d1 and sp2 == dp1 and d2 == s1 and dp2 == sp1:
                return f"{client} → {listen}"
            return f"{client} → {listen} => {_hp_short(d2, dp2)} → {_hp_short(s2, sp2)}"
        client = f"{s1}:{sp1}" if sp1 else s1
        listen = f"{d1}:{dp1}" if dp1 else d1
        if s2 == d1 and sp2 == dp1 and d2 == s1 and dp2 == sp1:
            return f"{client} → {listen}"
        return f"{client} → {listen} => {f'{d2}:{dp2}' if dp2 else d2} → {f'{s2}:{sp2}' if sp2 else s2}"

    def to_json(self, forward: str | None = None, *, plain: bool = False) -> str:
        """`to_dict` as compact JSON text. Every field of a decoded row is a number, an address
        or a word from the kernel's tables: nothing to escape, whatever `plain` says."""
        (
            proto,
            timeout,
            state,
            s1,
            d1,
            sp1,
            dp1,
            _rest,
            s2,
            d2,
            sp2,
            dp2,
            p1,
            b1,
            p2,
            b2,
            flags,
            mark,
            zone,
            age,
            extra,
        ) = self
        flags_json = _FLAGS_JSON.get(flags)  # type: ignore[call-overload]
        if flags_json is None:
            flags_json = _FLAGS_JSON[flags] = ",".join(f'"{x}"' for x in flags)  # type: ignore[index]
        return (
            f'{{"family":"ipv{6 if ":" in s1 else 4}","proto":"{proto}",'
            f'"state":{f"{chr(34)}{state}{chr(34)}" if state else "null"},"timeout":{timeout},'
            f'"orig":{{"src":"{s1}","dst":"{d1}","sport":{sp1 or "null"},"dport":{dp1 or "null"}}},'
            f'"reply":{{"src":"{s2}","dst":"{d2}","sport":{sp2 or "null"},"dport":{dp2 or "null"}}},'
            f'"flags":[{flags_json}],"mark":{mark},"zone":{zone},'
            f'"orig_packets":{p1 or "null"},"orig_bytes":{b1 or "null"},'
            f'"reply_packets":{p2 or "null"},"reply_bytes":{b2 or "null"},'
            f'"age":{age or "null"},"extra":"{extra}",'
            f'"dnat":{"true" if (s2 != d1 or sp2 != dp1) else "false"},'
            f'"snat":{"true" if (d2 != s1 or dp2 != sp1) else "false"},'
            f'"forward":{"null" if forward is None else f"{chr(34)}{forward}{chr(34)}"}}}'
        )
