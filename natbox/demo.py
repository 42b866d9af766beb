"""Provides `natbox demo`: the seed's lab in namespaces, the seed's forward, traffic, and the dashboard
running inside the nat box's namespace, so nothing on the host changes."""

from __future__ import annotations

import subprocess
import sys

from natbox.errors import NatboxError
from natbox.lab import DEMO_FOREIGN, NAT_DMZ_IP, NAT_LAN_IP, SERVER_IP, Lab, sh, teardown
from natbox.txn import require_root

TAG = "natbox-demo"


def down() -> list[str]:
    """Remove a demo left behind by a crash."""
    require_root()
    return teardown(TAG)


def run(flows: int = 0, backend_choice: str | None = None) -> int:
    """Build the lab, forward the seed's port, start traffic, open the dashboard; tear down on quit."""
    require_root()
    if f"{TAG}-n" in sh("ip", "netns", "list", check=False).stdout.split():
        raise NatboxError("a natbox demo is already running", "quit it, or run natbox demo --down")
    print(
        "building the seed's lab: client 192.168.1.20 — [nat box] — server 10.0.2.50 …", flush=True
    )
    lab = Lab(TAG).up()
    try:
        lab.nat_exec("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
        lab.nat_exec("iptables-restore", "--noflush", stdin=DEMO_FOREIGN)
        backend = ["--backend", backend_choice] if backend_choice else []
        out = lab.natbox(
            *backend,
            "add",
            f"{NAT_LAN_IP}:1234",
            f"{SERVER_IP}:80",
            "--proto",
            "both",
            "--snat",
            NAT_DMZ_IP,
            "--name",
            "web",
            "--yes",
        )
        if out.returncode != 0:
            raise NatboxError(
                f"the demo forward failed: {out.stderr.strip()}", "natbox demo --down, then retry"
            )
        lab.traffic()
        if flows:
            print(f"creating {flows} flows …", flush=True)
            lab.flood(flows, 1235, 4)
        tui = ["ip", "netns", "exec", lab.nat, sys.executable, "-m", "natbox", *backend]
        return subprocess.call(tui, env=lab.env)
    finally:
        lab.close()
