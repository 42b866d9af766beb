"""Provides export: natbox's forwards as the file `natbox apply` reads (json, toml), as an Ansible
playbook for the role in contrib/ansible, as an iptables-restore fragment or as iptables commands.

Mixed sets are split by IP version: the restore fragment and the commands have an IPv4 part (for
iptables) and an IPv6 part (for ip6tables)."""

from __future__ import annotations

import json
import shlex

from natbox.model import Forward
from natbox.plan import TABLE_ORDER, Plan, build_plan, setup_rules

FORMATS = ("json", "toml", "ansible", "restore", "commands")


def _by_family(forwards: list[Forward]) -> list[tuple[int, list[Forward]]]:
    return [
        (fam, [f for f in forwards if f.family == fam])
        for fam in (4, 6)
        if any(f.family == fam for f in forwards)
    ]


def restore_fragment(forwards: list[Forward]) -> str:
    """iptables-restore --noflush fragments (one per IP version): natbox's chains (-N) and jumps
    once, then every rule."""
    out: list[str] = []
    for fam, group in _by_family(forwards):
        out.append(_fragment(group, "ip6tables" if fam == 6 else "iptables"))
    return "".join(out)


def _fragment(forwards: list[Forward], tool: str) -> str:
    plans = [build_plan(f) for f in forwards]
    lines: list[str] = [
        f"# natbox export: {', '.join(f.name for f in forwards)} ({tool}-restore --noflush)",
        "# for a box without natbox's chains: -N fails (and changes nothing) where they exist,",
        "# instead of flushing them as a ':CHAIN' line would; `natbox apply` has no such limit",
    ]
    for table in TABLE_ORDER:
        lines.append(f"*{table}")
        used = {c for p in plans for c in p.chains}
        lines.extend(f"-N {j.args[-1]}" for j in setup_rules([table], used))
        lines.extend(f"-I {j.chain} 1 {j.spec}" for j in setup_rules([table], used))
        lines.extend(r.save_line for p in plans for r in p.table_rules(table))
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def command_lines(forwards: list[Forward]) -> str:
    """The same as iptables (ip6tables) commands, chains and jumps first."""
    out = [f"# natbox export: {', '.join(f.name for f in forwards)}"]
    for fam, group in _by_family(forwards):
        binary = "ip6tables" if fam == 6 else "iptables"
        plans = [build_plan(f) for f in group]
        used = {c for p in plans for c in p.chains}
        for table in TABLE_ORDER:
            jumps = setup_rules([table], used)
            out.extend(f"{binary} -w -t {table} -N {j.args[-1]}" for j in jumps)
            out.extend(shlex.join(j.command(binary, "-I")) for j in jumps)
        for plan in plans:
            out.extend(plan.command_lines(()))
    return "\n".join(out) + "\n"


def ansible_playbook(forwards: list[Forward]) -> str:
    """A playbook for the natbox role (contrib/ansible/roles/natbox): `natbox apply` on every box,
    idempotent and atomic, check mode included. JSON is YAML, so no YAML library writes it."""
    play = [
        {
            "name": "natbox forwards",
            "hosts": "natboxes",
            "become": True,
            "roles": [
                {
                    "role": "natbox",
                    "vars": {
                        "natbox_prune": False,
                        "natbox_forwards": [f.to_dict() for f in forwards],
                    },
                }
            ],
        }
    ]
    return (
        "# natbox export: an Ansible playbook for the natbox role (contrib/ansible/roles/natbox)\n"
        "# ansible-playbook -i INVENTORY this.yml [--check]; natbox_prune: true also removes\n"
        "# natbox forwards that are not listed\n" + json.dumps(play, indent=2) + "\n"
    )


def dump(forwards: list[Forward], fmt: str = "json") -> str:
    """Forwards as a file `natbox apply` reads (json: exactly the saved set's format)."""
    if fmt == "json":
        return (
            json.dumps({"version": 1, "forwards": [f.to_dict() for f in forwards]}, indent=2) + "\n"
        )
    out = ["# natbox forwards: natbox apply FILE", "version = 1"]
    for f in forwards:
        out.append("\n[[forwards]]")
        for key, value in f.to_dict().items():
            if value is None or value is False or value == []:
                continue
            out.append(f"{key} = {json.dumps(value)}")
    return "\n".join(out) + "\n"


def export(forwards: list[Forward], fmt: str) -> str:
    """Render `forwards` in one of FORMATS."""
    if fmt in ("json", "toml"):
        return dump(forwards, fmt)
    if fmt == "restore":
        return restore_fragment(forwards)
    if fmt == "commands":
        return command_lines(forwards)
    return ansible_playbook(forwards)


def plans(forwards: list[Forward]) -> list[Plan]:
    """The plans behind an export (tests compare against them)."""
    return [build_plan(f) for f in forwards]
