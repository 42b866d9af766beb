"""IPv6 forwards on the real kernel, both backends: the seed topology with 2001:db8::/32 addresses."""

from __future__ import annotations

import json
import re
import sys

import pytest

from natbox.lab import DEMO_FOREIGN, NAT_LAN_IP6, PAGE_TOKEN, SERVER_IP6, Lab

FLAVOUR = {"restore": "nft", "iptc": "legacy"}
V6 = [f"[{NAT_LAN_IP6}]:1234", f"[{SERVER_IP6}]:80"]


def save6(lab: Lab, flavour: str) -> str:
    """ip6tables-save without timestamps and policy counters (as Lab.save does for IPv4)."""
    out = lab.nat_exec(f"ip6tables-{flavour}-save").stdout
    lines = [
        re.sub(r" \[\d+:\d+\]$", " [0:0]", line) if line.startswith(":") else line
        for line in out.splitlines()
        if not line.startswith("#")
    ]
    return "".join(line + "\n" for line in lines)


@pytest.mark.parametrize("backend", ["restore", "iptc"])
def test_v6_forward_end_to_end(lab: Lab, backend: str) -> None:
    flavour = FLAVOUR[backend]
    lab.nat_exec(
        f"ip6tables-{flavour}-restore",
        stdin=DEMO_FOREIGN.replace("10.0.2.0/24", "2001:db8:2::/64").replace(
            "192.168.1.0/24", "2001:db8:1::/64"
        ),
    )
    before = save6(lab, flavour)
    v4_before = lab.save(flavour)
    assert lab.fetch(NAT_LAN_IP6, timeout=1) is None
    out = lab.natbox("--backend", backend, "add", *V6, "--proto", "both", "--yes")
    assert out.returncode == 0, out.stderr
    body = lab.fetch(NAT_LAN_IP6)
    assert body is not None and PAGE_TOKEN in body
    assert lab.udp_ask(NAT_LAN_IP6) == "echo:ping"
    listed = json.loads(lab.natbox("--backend", backend, "list", "--json").stdout)
    (fwd,) = listed["forwards"]
    assert fwd["name"] == "both6-1234" and fwd["snat"] == "2001:db8:2::40" and fwd["intact"]
    flows = json.loads(
        lab.natbox("--backend", backend, "conntrack", "--json", "--forward", "both6-1234").stdout
    )
    assert flows["flows"] and all(
        f["family"] == "ipv6" and f["dnat"] and f["snat"] for f in flows["flows"]
    )
    assert lab.save(flavour) == v4_before, "the IPv4 tables are untouched"
    out = lab.natbox("--backend", backend, "remove", "both6-1234", "--yes")
    assert out.returncode == 0, out.stderr
    assert lab.fetch(NAT_LAN_IP6, timeout=1) is None
    assert save6(lab, flavour) == before, "ip6tables-save byte for byte as before"


def test_v4_and_v6_names_do_not_collide(lab: Lab) -> None:
    assert (
        lab.natbox("add", "192.168.1.30:1234", "10.0.2.50:80", "--name", "web", "--yes").returncode
        == 0
    )
    out = lab.natbox("add", *V6, "--name", "web", "--yes")
    assert out.returncode == 2 and "a forward named web already exists (IPv4)" in out.stderr
    out = lab.natbox("add", *V6, "--yes")
    assert out.returncode == 0, out.stderr
    assert lab.fetch() is not None and lab.fetch(NAT_LAN_IP6) is not None
    doctor = lab.natbox("doctor")
    assert doctor.returncode == 0, doctor.stdout


def test_v6_crash_mid_apply_is_undone(lab: Lab) -> None:
    import subprocess
    import sys

    lab.nat_exec(
        "ip6tables-nft-restore", stdin="*filter\n:FORWARD DROP [0:0]\nCOMMIT\n*nat\nCOMMIT\n"
    )
    before = save6(lab, "nft")
    env = {**lab.env, "NATBOX_FAULT": "committed-filter"}
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.nat, sys.executable, "-m", "natbox", "add", *V6, "--yes"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == -9
    assert "natbox:tcp6-1234" in save6(lab, "nft")
    out = lab.natbox("recover")
    assert out.returncode == 0 and "undid the interrupted apply of tcp6-1234" in out.stdout
    assert save6(lab, "nft") == before


def test_dashboard_read_shows_ip6tables_chains_and_foreign_rules(lab: Lab) -> None:
    """The dashboard's one read per family lists ip6tables chains and foreign IPv6 rules."""
    lab.nat_exec(
        "ip6tables-nft-restore",
        stdin="*nat\n-A PREROUTING -d 2001:db8:1::30/128 -p tcp -m tcp --dport 8443 "
        "-j DNAT --to-destination [2001:db8:2::60]:443\nCOMMIT\n",
    )
    script = (
        "from natbox.engine import Engine\n"
        "d = Engine().dashboard()\n"
        "for c in d.chains:\n"
        "    print(c.family, c.table, c.chain.name, *[r.text for r in c.chain.rules])\n"
    )
    out = lab.nat_exec(sys.executable, "-c", script).stdout
    v6 = [line for line in out.splitlines() if line.startswith("6 nat PREROUTING")]
    assert v6 and "--to-destination [2001:db8:2::60]:443" in v6[0], out
