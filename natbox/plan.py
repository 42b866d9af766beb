"""Provides the plan: a Forward turned into its rules, rendered as restore text, commands and prose.

Every rule is rendered in the canonical form iptables-save prints back, so a forward read back from
the kernel equals its plan text for text.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from natbox.model import COMMENT_PREFIX, PROTO_NUMBERS, Forward

CHAIN_PREFIX = "NATBOX-"
# natbox's own chains, each reached by one jump (inserted at position 1) from a built-in chain.
OWN_CHAINS: dict[str, tuple[tuple[str, str], ...]] = {
    # table -> ((builtin chain, natbox chain), ...)
    "filter": (("FORWARD", "NATBOX-FORWARD"),),
    "nat": (
        ("PREROUTING", "NATBOX-PREROUTING"),
        ("POSTROUTING", "NATBOX-POSTROUTING"),
        ("OUTPUT", "NATBOX-OUTPUT"),
    ),
}
# filter before nat: the FORWARD accept exists before the first packet is DNATed.
TABLE_ORDER: tuple[str, ...] = ("filter", "nat")


def save_quote(value: str) -> str:
    """Quote a string the way iptables-save does (only when it holds anything but [A-Za-z0-9_-])."""
    if value and all(c.isascii() and (c.isalnum() or c in "_-") for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment_args(comment: str) -> list[str]:
    """The comment match for `comment`, as tokens."""
    return ["-m", "comment", "--comment", comment]


@dataclass(frozen=True)
class PlannedRule:
    """One rule of a plan: where it goes, its tokens (without `-A CHAIN`), and why it exists."""

    table: str
    chain: str
    args: tuple[str, ...]
    kind: str
    """dnat | snat | masquerade | mss | accept | return | jump"""
    purpose: str
    """One line of plain language for the preview."""

    @property
    def spec(self) -> str:
        """The rule's arguments as iptables-save prints them."""
        out: list[str] = []
        after_comment = False
        for tok in self.args:
            out.append(save_quote(tok) if after_comment else tok)
            after_comment = tok == "--comment"
        return " ".join(out)

    @property
    def save_line(self) -> str:
        """`-A CHAIN ...` exactly as iptables-save prints this rule."""
        return f"-A {self.chain} {self.spec}"

    def command(self, binary: str = "iptables", op: str = "-A") -> list[str]:
        """The iptables command (argv) that adds this rule."""
        position = ["1"] if op == "-I" else []
        return [binary, "-w", "-t", self.table, op, self.chain, *position, *self.args]


def jump_rule(table: str, builtin: str, own: str) -> PlannedRule:
    """The jump from a built-in chain into natbox's chain."""
    return PlannedRule(
        table,
        builtin,
        (*comment_args(COMMENT_PREFIX), "-j", own),
        "jump",
        f"{table} {builtin} jumps first to {own}, where natbox keeps its rules",
    )


def setup_rules(
    tables: Iterable[str] = TABLE_ORDER, used: set[str] | None = None
) -> list[PlannedRule]:
    """The jumps that connect natbox's chains, for the given tables (only chains in `used`, if given)."""
    return [
        jump_rule(t, b, o) for t in tables for b, o in OWN_CHAINS[t] if used is None or o in used
    ]


@dataclass(frozen=True)
class Plan:
    """The rules a forward needs, in chain order."""

    forward: Forward
    rules: tuple[PlannedRule, ...]

    @property
    def chains(self) -> set[str]:
        """natbox chains this plan puts rules in (only those get created)."""
        return {r.chain for r in self.rules}

    def table_rules(self, table: str) -> list[PlannedRule]:
        """This plan's rules in one table."""
        return [r for r in self.rules if r.table == table]

    def restore_text(self, setup_tables: Iterable[str] = TABLE_ORDER) -> str:
        """The iptables-restore --noflush input that applies this plan.

        `setup_tables` names the tables whose natbox chains and jumps do not exist yet and must be
        created too (declaring an existing chain would flush it, so never declare those).
        """
        setup = set(setup_tables)
        lines: list[str] = []
        for table in TABLE_ORDER:
            rules = self.table_rules(table)
            if not rules and table not in setup:
                continue
            lines.append(f"*{table}")
            if table in setup:
                jumps = setup_rules([table], self.chains)
                lines.extend(f"-N {j.args[-1]}" for j in jumps)
                lines.extend(f"-I {j.chain} 1 {j.spec}" for j in jumps)
            lines.extend(r.save_line for r in rules)
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    @property
    def binary(self) -> str:
        """iptables or ip6tables, by the forward's IP version."""
        return "ip6tables" if self.forward.family == 6 else "iptables"

    def commands(
        self, setup_tables: Iterable[str] = TABLE_ORDER, binary: str | None = None
    ) -> list[list[str]]:
        """The equivalent iptables (or ip6tables) command lines (argv lists)."""
        binary = binary or self.binary
        setup = set(setup_tables)
        cmds: list[list[str]] = []
        for table in TABLE_ORDER:
            if table in setup:
                jumps = setup_rules([table], self.chains)
                cmds.extend([binary, "-w", "-t", table, "-N", j.args[-1]] for j in jumps)
                cmds.extend(j.command(binary, "-I") for j in jumps)
            cmds.extend(r.command(binary) for r in self.table_rules(table))
        return cmds

    def command_lines(
        self, setup_tables: Iterable[str] = TABLE_ORDER, binary: str | None = None
    ) -> list[str]:
        """The commands as copyable shell lines."""
        return [shlex.join(c) for c in self.commands(setup_tables, binary)]

    def plain(self) -> list[str]:
        """One line of plain language per rule, then the scoping note."""
        lines = [f"{r.kind.upper():<10} {r.purpose}" for r in self.rules]
        lines.append(
            "scope      SNAT and FORWARD match only connections this forward DNATed "
            f"(conntrack original destination {self.forward.listen}), never other traffic "
            f"to {self.forward.backend.ip}"
        )
        return lines

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description of the plan."""
        return {
            "forward": self.forward.to_dict(),
            "rules": [
                {
                    "table": r.table,
                    "chain": r.chain,
                    "kind": r.kind,
                    "rule": r.save_line,
                    "purpose": r.purpose,
                }
                for r in self.rules
            ],
            "restore": self.restore_text(),
            "commands": self.command_lines(),
        }


def _to_destination(fwd: Forward) -> str:
    b, listen = fwd.backend, fwd.listen
    if b.is_range:
        # base-port form: listen port p maps to b.port + (p - listen.port), one to one.
        return f"{b.host}:{b.port}-{b.port_end}/{listen.port}"
    return f"{b.host}:{b.port}"


def _origin(fwd: Forward) -> list[str]:
    return ["--ctorigdst", str(fwd.listen.ip), "--ctorigdstport", fwd.listen.ipt_ports]


def _dnat_args(fwd: Forward, proto: str, src: list[str]) -> tuple[str, ...]:
    """The DNAT of the listen ip:port/proto (PREROUTING for clients, OUTPUT for the box itself)."""
    return (
        *src,
        "-d",
        f"{fwd.listen.ip}{fwd.host_prefix}",
        "-p",
        proto,
        "-m",
        proto,
        "--dport",
        fwd.listen.ipt_ports,
        *comment_args(fwd.comment),
        "-j",
        "DNAT",
        "--to-destination",
        _to_destination(fwd),
    )


def build_plan(fwd: Forward) -> Plan:
    """Turn a forward into its rules: DNAT, SNAT, (MSS clamp), FORWARD accept, FORWARD return."""
    com = comment_args(fwd.comment)
    listen, backend = fwd.listen, fwd.backend
    bdport = f"{backend.port}:{backend.port_end}" if backend.is_range else str(backend.port)
    pre: list[PlannedRule] = []
    post: list[PlannedRule] = []
    fwd_rules: list[PlannedRule] = []
    for proto in fwd.protocols:
        sources: list[list[str]] = [["-s", n.with_prefixlen] for n in fwd.sources] or [[]]
        for src in sources:
            who = f" from {src[1]}" if src else ""
            pre.append(
                PlannedRule(
                    "nat",
                    "NATBOX-PREROUTING",
                    _dnat_args(fwd, proto, src),
                    "dnat",
                    f"{proto} {listen} → {backend}{who}: rewrite the destination to the backend",
                )
            )
        to_backend = (
            "-d",
            f"{backend.ip}{fwd.host_prefix}",
            "-p",
            proto,
            "-m",
            proto,
            "--dport",
            bdport,
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
            *_origin(fwd),
        )
        if fwd.masquerade:
            post.append(
                PlannedRule(
                    "nat",
                    "NATBOX-POSTROUTING",
                    (*to_backend, *com, "-j", "MASQUERADE"),
                    "masquerade",
                    f"{proto} to {backend}: rewrite the source to the outgoing interface's "
                    "address, so replies come back through this box",
                )
            )
        else:
            post.append(
                PlannedRule(
                    "nat",
                    "NATBOX-POSTROUTING",
                    (*to_backend, *com, "-j", "SNAT", "--to-source", str(fwd.snat)),
                    "snat",
                    f"{proto} to {backend}: rewrite the source to {fwd.snat}, so replies "
                    "come back through this box",
                )
            )
        ctproto = ("--ctproto", str(PROTO_NUMBERS[proto]))
        if fwd.mss_clamp and proto == "tcp":
            # TCPMSS does not terminate, so it sits before the accepts and sees SYN and SYN-ACK.
            fwd_rules.append(
                PlannedRule(
                    "filter",
                    "NATBOX-FORWARD",
                    (
                        "-p",
                        "tcp",
                        "-m",
                        "tcp",
                        "--tcp-flags",
                        "SYN,RST",
                        "SYN",
                        "-m",
                        "conntrack",
                        *ctproto,
                        *_origin(fwd),
                        *com,
                        "-j",
                        "TCPMSS",
                        "--clamp-mss-to-pmtu",
                    ),
                    "mss",
                    "clamp the MSS of this forward's SYNs to the path MTU (the two sides' MTUs differ)",
                )
            )
        fwd_rules.append(
            PlannedRule(
                "filter",
                "NATBOX-FORWARD",
                (*to_backend, *com, "-j", "ACCEPT"),
                "accept",
                f"let new {proto} connections of this forward through to {backend}",
            )
        )
        fwd_rules.append(
            PlannedRule(
                "filter",
                "NATBOX-FORWARD",
                (
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                    *ctproto,
                    *_origin(fwd),
                    *com,
                    "-j",
                    "ACCEPT",
                ),
                "return",
                f"let this forward's {proto} replies (and their ICMP errors) back through",
            )
        )
    local: list[PlannedRule] = []
    if fwd.local:
        for proto in fwd.protocols:
            local.append(
                PlannedRule(
                    "nat",
                    "NATBOX-OUTPUT",
                    _dnat_args(fwd, proto, []),
                    "local",
                    f"{proto} from this box itself to {listen} → {backend} too (its own traffic "
                    "never passes PREROUTING)",
                )
            )
    return Plan(fwd, (*pre, *local, *post, *fwd_rules))
