"""Provides export: natbox's forwards as an iptables-restore fragment, as iptables commands, or as an
Ansible task list, so a fleet can be driven by the tools admins already use."""

from __future__ import annotations

import json
import shlex

from natbox.model import Forward
from natbox.plan import TABLE_ORDER, Plan, build_plan, setup_rules

FORMATS = ("restore", "commands", "ansible")


def restore_fragment(forwards: list[Forward]) -> str:
    """One iptables-restore --noflush fragment: natbox's chains (-N) and jumps once, then every rule."""
    plans = [build_plan(f) for f in forwards]
    lines: list[str] = [
        f"# natbox export: {', '.join(f.name for f in forwards)}",
        "# for iptables-restore --noflush on a box without natbox's chains: -N fails (and changes",
        "# nothing) where they exist, instead of flushing them as a ':CHAIN' line would",
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
    """The same as iptables commands, chains and jumps first."""
    plans = [build_plan(f) for f in forwards]
    used = {c for p in plans for c in p.chains}
    out = [f"# natbox export: {', '.join(f.name for f in forwards)}"]
    for table in TABLE_ORDER:
        jumps = setup_rules([table], used)
        out.extend(f"iptables -w -t {table} -N {j.args[-1]}" for j in jumps)
        out.extend(shlex.join(j.command("iptables", "-I")) for j in jumps)
    for plan in plans:
        out.extend(plan.command_lines(()))
    return "\n".join(out) + "\n"


def ansible_tasks(forwards: list[Forward]) -> str:
    """An Ansible task list: ip_forward on, the restore fragment in place, applied once per forward.

    ansible.builtin.iptables cannot express the conntrack scoping (--ctorigdst), so the tasks carry the
    exact fragment and apply it with iptables-restore --noflush, guarded by natbox's own rule comment so
    a second run changes nothing.
    """
    fragment = restore_fragment(forwards)
    names = [f.name for f in forwards]
    guard = " && ".join(f"iptables-save | grep -q -- '--comment \"natbox:{n}\"'" for n in names)
    tasks = [
        {
            "name": "natbox: IPv4 forwarding on (runtime and at boot)",
            "ansible.builtin.copy": {
                "dest": "/etc/sysctl.d/90-natbox.conf",
                "content": "net.ipv4.ip_forward = 1\n",
                "mode": "0644",
            },
        },
        {
            "name": "natbox: apply IPv4 forwarding now",
            "ansible.builtin.command": "sysctl -w net.ipv4.ip_forward=1",
            "changed_when": False,
        },
        {
            "name": f"natbox: rules of {', '.join(names)}",
            "ansible.builtin.copy": {
                "dest": "/etc/natbox/export.rules",
                "content": fragment,
                "mode": "0600",
            },
        },
        {
            "name": f"natbox: apply {', '.join(names)} unless present",
            "ansible.builtin.shell": f"{guard} || iptables-restore --noflush /etc/natbox/export.rules",
            "register": "natbox_apply",
            "changed_when": False,
        },
    ]
    # JSON is valid YAML: no YAML library needed to write it, any parser reads it back.
    return "# natbox export (Ansible task list)\n" + json.dumps(tasks, indent=2) + "\n"


def export(forwards: list[Forward], fmt: str) -> str:
    """Render `forwards` in one of FORMATS."""
    if fmt == "restore":
        return restore_fragment(forwards)
    if fmt == "commands":
        return command_lines(forwards)
    return ansible_tasks(forwards)


def plans(forwards: list[Forward]) -> list[Plan]:
    """The plans behind an export (tests compare against them)."""
    return [build_plan(f) for f in forwards]
