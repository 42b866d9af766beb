"""Provides the iptables-save parser and the reconstruction of natbox forwards from tagged rules.

The kernel is the truth: a forward is whatever its `natbox:<name>` rules say, checked against the
plan those rules imply.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from natbox.errors import ConflictError, NatboxError, ValidationError
from natbox.model import (
    COMMENT_PREFIX,
    Chain,
    Endpoint,
    Forward,
    IPAddress,
    Rule,
    Ruleset,
    Table,
    parse_cidr,
    parse_ip,
)
from natbox.plan import OWN_CHAINS, build_plan

_COUNTERS_RE = re.compile(r"\[(\d+):(\d+)\]")
_COMMENT_RE = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')
_UNESCAPE_RE = re.compile(r"\\(.)")


def rule_comment(text: str) -> str | None:
    """The comment of a rule in save form, unescaped, or None."""
    m = _COMMENT_RE.search(text)
    if m is None:
        return None
    if m.group(1) is not None:
        return _UNESCAPE_RE.sub(r"\1", m.group(1))
    return m.group(2)


_OWN = {own for pairs in OWN_CHAINS.values() for _, own in pairs}
_JUMPS = {
    f"-A {builtin} -m comment --comment {COMMENT_PREFIX} -j {own}"
    for pairs in OWN_CHAINS.values()
    for builtin, own in pairs
}
"""natbox's jumps exactly as iptables-save prints them: any other `natbox` jump is a look-alike."""
_INTO_OWN = tuple(f" -j {own}" for own in sorted(_OWN))
"""How a rule that jumps into one of natbox's chains ends (one str.endswith for all of them)."""
FORGED = "forged"
"""The owner of a rule that carries natbox's tag where natbox never writes one: a look-alike."""


def classify_owner(chain: str, text: str) -> str:
    """Who wrote a rule: `natbox:<name>`, `natbox` (its jumps), `docker`, `kube`, `other`, or
    `forged` — a natbox tag outside natbox's own chains (or on a jump that is not natbox's)."""
    if "--comment natbox" in text or '--comment "natbox:' in text:
        comment = rule_comment(text)
        if comment == COMMENT_PREFIX:
            return COMMENT_PREFIX if text in _JUMPS else FORGED
        if comment is not None and comment.startswith(COMMENT_PREFIX + ":"):
            return comment if chain in _OWN else FORGED
    if chain.startswith("DOCKER") or " -j DOCKER" in text or "docker" in text:
        return "docker"
    if chain.startswith(("KUBE-", "CNI-", "CALI-")) or " -j KUBE-" in text or "kubernetes" in text:
        return "kube"
    return "other"


_INCOMPATIBLE_RE = re.compile(r"[Tt]able `([^']+)' is incompatible")


WATCHED: dict[str, tuple[str, ...]] = {  # what `natbox list` and the dashboard show
    "nat": ("PREROUTING", "POSTROUTING", "OUTPUT"),
    "filter": ("FORWARD",),
}
"""The built-in chains whose every rule natbox shows (with natbox's own), per table."""


def _unshown(raw: str, kept: Collection[str], heads: tuple[str, ...]) -> bool:
    """Whether a rule line (`-A ...`, or `[pk:by] -A ...`) is one a natbox_only parse drops: it
    does not name natbox and is not in one of the `kept` chains (`heads`: "CHAIN " for each)."""
    if "natbox" in raw or "NATBOX" in raw:
        return False
    if not kept:
        return True
    at = raw.find("-A ") + 3  # where the chain's name starts
    return at == 2 or not (
        raw.startswith(heads, at) or (raw.find(" ", at) == -1 and raw[at:].strip() in kept)
    )


def shown_lines(lines: Iterable[str], keep: Mapping[str, Collection[str]]) -> Iterator[str]:
    """The lines of a save that `parse_save(natbox_only=True, keep=keep)` does not drop unread,
    taken as they come (natbox.prefetch filters `natbox list`'s save while it streams): parsing
    what this yields gives the same Ruleset as parsing the whole text."""
    kept: Collection[str] = ()
    heads: tuple[str, ...] = ()
    inside = False
    for raw in lines:
        if inside and raw.startswith(("[", "-")) and _unshown(raw, kept, heads):
            continue
        line = raw.strip()
        if line.startswith("*"):
            inside = True
            kept = keep.get(line[1:], ())
            heads = tuple(f"{name} " for name in kept)
        elif line == "COMMIT":
            inside = False
        yield raw


def parse_save(
    text: str, natbox_only: bool = False, keep: Mapping[str, Collection[str]] | None = None
) -> Ruleset:
    """Parse `iptables-save [-c]` output (nft or legacy flavour) into a Ruleset.

    With `natbox_only`, every table and chain is kept but only natbox's own rules (its jumps and its
    tagged rules): all that apply and remove need, at a fraction of the cost on big rulesets.
    `keep` (table -> chain names, with `natbox_only`) adds every rule of those chains, and declares
    only those chains and natbox's own (NATBOX-*): what `natbox list` shows (the NAT and FORWARD
    built-ins) without classifying a kube-sized ruleset it never shows. Every line that could make
    a tampering() warning names natbox, so those warnings stay complete.
    """
    rs = Ruleset()
    table: Table | None = None
    kept: Collection[str] = ()
    heads: tuple[str, ...] = ()  # "CHAIN " for each kept chain: where a rule's text goes on
    declared: tuple[str, ...] = ()  # ":CHAIN " for each kept chain, and natbox's own
    decls: list[str] = []  # with `keep`: the table's chain lines, declared or not, in order
    late = False  # with `keep`: a rule landed in a chain left undeclared (see _in_save_order)
    # Lines end at "\n" only: iptables-save prints a comment's form feeds and other line breaks
    # str.splitlines() would split at as they are (a comment must never make a rule).
    for lineno, raw in enumerate(text.split("\n"), 1):
        # natbox_only: most lines are other software's rules (and, with `keep`, their chains),
        # dropped here at the least cost (no strip, no split); the lines kept go the whole way.
        if natbox_only and table is not None:
            if raw.startswith(("[", "-")):
                if _unshown(raw, kept, heads):
                    continue
            elif keep is not None and raw.startswith(":"):
                decls.append(raw)
                if not raw.startswith(declared) and raw[1:].strip() not in kept:
                    continue
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if "Warning" in line:
                rs.warnings.append(line.lstrip("# ").strip())
            elif (m := _INCOMPATIBLE_RE.search(line)) is not None:
                rs.incompatible.append(m.group(1))
            continue
        if line.startswith("*"):
            table = Table(line[1:])
            rs.tables[table.name] = table
            kept = keep.get(table.name, ()) if keep is not None else ()
            heads = tuple(f"{name} " for name in kept)
            declared = (":NATBOX-", *(f":{name} " for name in kept))
            decls, late = [], False
            continue
        if line == "COMMIT":
            if late and table is not None:
                _in_save_order(table, decls)
            table = None
            continue
        if table is None:
            raise NatboxError(
                f"iptables-save line {lineno} is outside a table: {line[:60]}",
                "is this iptables-save output?",
            )
        if line.startswith(":"):
            declared_chain = _chain_line(line)
            table.chains[declared_chain.name] = declared_chain
            continue
        if natbox_only and "natbox" not in line and "NATBOX" not in line:
            if not kept:
                continue
            body = line.partition(" ")[2] if line.startswith("[") else line
            if not body.startswith("-A ") or body.split(" ", 2)[1] not in kept:
                continue
        pk = by = 0
        if line.startswith("["):
            counters, _, line = line.partition(" ")
            if m := _COUNTERS_RE.fullmatch(counters):
                pk, by = int(m.group(1)), int(m.group(2))
        if not line.startswith("-A "):
            raise NatboxError(
                f"iptables-save line {lineno} is not a rule: {line[:60]}",
                "is this iptables-save output?",
            )
        chain_name = line.split(" ", 2)[1]
        chain = table.chains.get(chain_name)
        if chain is None:
            chain = table.chains[chain_name] = Chain(chain_name)
            late = keep is not None
        owner = classify_owner(chain_name, line)
        chain.rules.append(Rule(table.name, chain_name, line, pk, by, owner))
    if table is not None:
        raise NatboxError(
            f"iptables-save output ends inside the {table.name} table (no COMMIT): the read was cut",
            "natbox trusts no partial read; try again",
        )
    return rs


def _chain_line(line: str) -> Chain:
    """The chain a `:NAME POLICY [packets:bytes]` line declares."""
    parts = line[1:].split()
    policy = parts[1] if len(parts) > 1 and parts[1] != "-" else None
    pk = by = 0
    if len(parts) > 2 and (m := _COUNTERS_RE.fullmatch(parts[2])):
        pk, by = int(m.group(1)), int(m.group(2))
    return Chain(parts[0], policy, pk, by)


def _in_save_order(table: Table, decls: list[str]) -> None:
    """A listing parse (`keep`) put a rule in a chain it had not declared (natbox's tag, or a jump
    into natbox's chain, in another program's chain): declare it from its line and put the chains
    back in the save's order, as the full parse has them (tampering() reports in that order)."""
    chains: dict[str, Chain] = {}
    for line in decls:
        chain = _chain_line(line.strip())
        if (have := table.chains.get(chain.name)) is not None:
            chain.rules = have.rules
            chains[chain.name] = chain
    chains.update((name, c) for name, c in table.chains.items() if name not in chains)
    table.chains = chains


@dataclass
class ForwardState:
    """A natbox forward as found in the kernel."""

    name: str
    rules: list[Rule]
    forward: Forward | None = None
    problems: list[str] = field(default_factory=list)
    tampered: list[Rule] = field(default_factory=list)
    """Rules tagged with this forward's name that are not in its plan: not natbox's, left alone."""

    @property
    def intact(self) -> bool:
        """True when the kernel holds exactly the rules the reconstructed forward plans."""
        return self.forward is not None and not self.problems

    @property
    def packets(self) -> int:
        """Packets counted by the DNAT rules (new connections, as nat sees only first packets)."""
        return sum(r.packets for r in self.rules if " -j DNAT " in r.text)


def _opt(tokens: list[str], flag: str) -> str | None:
    for i, tok in enumerate(tokens[:-1]):
        if tok == flag:
            return tokens[i + 1]
    return None


def _strip_host(addr: str) -> str:
    return addr.removesuffix("/32").removesuffix("/128")


def _tokens(text: str) -> list[str]:
    """A rule's tokens without its comment: a plain split when nothing else is quoted.

    shlex costs ~0.2 ms a rule, which at 1,000 forwards was most of a read; natbox's rules quote
    only their comment, which the reconstruction does not need.
    """
    bare = _COMMENT_RE.sub("", text)
    if '"' in bare or "\\" in bare or "'" in bare:
        return shlex.split(text)
    return bare.split()


def forward_from_rules(name: str, rules: list[Rule]) -> Forward:
    """Rebuild the Forward that `rules` (all tagged natbox:<name>) were planned from."""
    dnats = [_tokens(r.text) for r in rules if " -j DNAT " in r.text]
    if not dnats:
        raise ValidationError(f"forward {name} has no DNAT rule", "remove it and add it again")
    first = dnats[0]
    listen_ip, dport = _opt(first, "-d"), _opt(first, "--dport")
    to_dest = _opt(first, "--to-destination")
    if listen_ip is None or dport is None or to_dest is None:
        raise ValidationError(f"forward {name}'s DNAT rule is not natbox's shape", "remove it")
    protos = sorted({p for t in dnats if (p := _opt(t, "-p"))})
    proto = "both" if protos == ["tcp", "udp"] else protos[0]
    host = _strip_host(listen_ip)
    host = f"[{host}]" if ":" in host else host
    listen = Endpoint.parse(f"{host}:{dport.replace(':', '-')}")
    backend = Endpoint.parse(to_dest.split("/", 1)[0])
    sources = tuple(dict.fromkeys(parse_cidr(s) for t in dnats if (s := _opt(t, "-s"))))
    snat: IPAddress | None = None
    masquerade = False
    for r in rules:
        if " -j SNAT " in r.text:
            src = _opt(_tokens(r.text), "--to-source")
            snat = parse_ip(src, "SNAT source") if src else None
        elif r.text.endswith(" -j MASQUERADE"):
            masquerade = True
    mss = any(" -j TCPMSS " in r.text for r in rules)
    local = any(r.chain == "NATBOX-OUTPUT" for r in rules)
    return Forward(name, proto, listen, backend, snat, masquerade, mss, sources, local)  # type: ignore[arg-type]


def forward_states(rs: Ruleset, only: str | None = None) -> list[ForwardState]:
    """Every natbox forward in the ruleset (or just `only`), each checked against its own plan."""
    states: list[ForwardState] = []
    for name, rules in rs.by_forward().items():
        if only is not None and name != only:
            continue
        rules = list(rules)
        state = ForwardState(name, rules)
        try:
            state.forward = forward_from_rules(name, rules)
        except (NatboxError, ValueError, IndexError) as exc:
            state.problems.append(f"cannot read forward {name} back: {exc}")
            states.append(state)
            continue
        want = Counter((r.table, r.save_line) for r in build_plan(state.forward).rules)
        have = Counter((r.table, r.text) for r in rules)
        for table, line in sorted((want - have).elements()):
            state.problems.append(f"missing in {table}: {line}")
        # A tagged rule that is not in the forward's exact plan is not the forward's: natbox
        # reports it and never deletes it (a comment tag can be written by anyone).
        extra = have - want
        if extra:
            state.tampered = [r for r in rules if (r.table, r.text) in extra]
            state.rules = [r for r in rules if (r.table, r.text) not in extra]
        if rs.incompatible and state.problems:
            tables = ", ".join(rs.incompatible)
            state.problems = [
                f"cannot be verified: iptables cannot show the {tables} table (native nftables "
                f"rules in it; see `nft list table ip {rs.incompatible[0]}`)"
            ]
        states.append(state)
    return states


def _listening(rules: list[Rule]) -> tuple[IPAddress, int, int, set[str], str] | None:
    """(listen ip, first port, last port, protocols, backend) from a forward's DNAT rules, without
    rebuilding the whole forward (conflicts() asks this of every forward on every add)."""
    protos: set[str] = set()
    found: tuple[str, str, str] | None = None
    for r in rules:
        if " -j DNAT " not in r.text or r.chain != "NATBOX-PREROUTING":
            continue
        tokens = _tokens(r.text)
        dst, dport, to = (
            _opt(tokens, "-d"),
            _opt(tokens, "--dport"),
            _opt(tokens, "--to-destination"),
        )
        proto = _opt(tokens, "-p")
        if dst is None or dport is None or to is None or proto is None:
            return None
        protos.add(proto)
        found = found or (dst, dport, to)
    if found is None:
        return None
    dst, dport, to = found
    try:
        ip = parse_ip(_strip_host(dst))
        lo, _, hi = dport.partition(":")
        return ip, int(lo), int(hi or lo), protos, to.split("/", 1)[0]
    except (NatboxError, ValueError):
        return None


def conflicts(rs: Ruleset, fwd: Forward) -> None:
    """Raise ConflictError when `fwd` clashes with a natbox forward already in the kernel."""
    groups = rs.by_forward()
    if fwd.name in groups:
        raise ConflictError(
            f"a forward named {fwd.name} already exists",
            f"pick another --name, or `natbox remove {fwd.name}` first",
        )
    for name, rules in groups.items():
        other = _listening(rules)
        if other is None or other[0] != fwd.listen.ip:
            continue
        _ip, lo, hi, protos, backend = other
        same_proto = protos & set(fwd.protocols)
        overlap = lo <= fwd.listen.port_end and fwd.listen.port <= hi
        if same_proto and overlap:
            raise ConflictError(
                f"{'/'.join(sorted(same_proto))} {fwd.listen} is already forwarded by {name} "
                f"(to {backend})",
                f"`natbox remove {name}` first, or listen on another port",
            )


def tampering(rs: Ruleset, states: list[ForwardState] | None = None) -> list[str]:
    """What in the ruleset imitates or intrudes on natbox: look-alike tags outside natbox's chains,
    rules in natbox's chains that natbox did not write, tables iptables could not show. natbox
    reports these and never deletes or adopts them. Pass `states` (forward_states(rs)) when the
    caller has them already: rebuilding every forward twice per refresh is wasted work."""
    out = [
        f"{t} table: iptables cannot show it (native nftables rules): natbox's forwards there "
        f"cannot be verified; see `nft list table ip {t}`"
        for t in rs.incompatible
    ]
    for state in forward_states(rs) if states is None else states:
        out.extend(
            f"a rule tagged natbox:{state.name} is not part of that forward (left alone): {r.text}"
            for r in state.tampered
        )
    for r in rs.rules():
        if r.owner == FORGED:
            out.append(f"a rule carries natbox's tag but is not natbox's (left alone): {r.text}")
        elif r.owner != COMMENT_PREFIX and r.text.endswith(_INTO_OWN):
            out.append(f"a rule natbox did not write jumps into natbox's chain: {r.text}")
        elif r.chain in _OWN and not r.owner.startswith(COMMENT_PREFIX):
            out.append(f"a rule in natbox's chain {r.chain} was not written by natbox: {r.text}")
    return out
