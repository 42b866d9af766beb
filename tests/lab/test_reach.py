"""Reach on the real kernel: the box's own connections (--local, nat OUTPUT) and hairpin clients (on
the backend's side), which natbox's forward-scoped SNAT serves without any option."""

from __future__ import annotations

import sys

from natbox.lab import _HTTP_GET, NAT_DMZ_IP, NAT_LAN_IP, PAGE_TOKEN, SERVER_IP, Lab
from natbox.model import Forward
from natbox.plan import build_plan


def fetch_from(lab: Lab, ns: str) -> str | None:
    out = lab.exec(
        ns, sys.executable, "-c", _HTTP_GET, f"http://{NAT_LAN_IP}:1234/", "1.5", check=False
    )
    return out.stdout if out.returncode == 0 else None


def test_the_box_itself_needs_local(lab: Lab) -> None:
    out = lab.natbox("add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--name", "web", "--yes")
    assert out.returncode == 0, out.stderr
    assert lab.fetch() is not None
    assert fetch_from(lab, lab.nat) is None, "the box's own traffic never passes PREROUTING"
    assert lab.natbox("remove", "web", "--yes").returncode == 0
    out = lab.natbox(
        "add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--name", "web", "--local", "--yes"
    )
    assert out.returncode == 0, out.stderr
    body = fetch_from(lab, lab.nat)
    assert body is not None and PAGE_TOKEN in body
    assert lab.fetch() is not None, "clients still work"
    assert "-A NATBOX-OUTPUT -d 192.168.1.30/32 -p tcp" in lab.save()
    listed = lab.natbox("list", "--json").stdout
    assert '"local": true' in listed
    assert lab.natbox("remove", "web", "--yes").returncode == 0
    assert "NATBOX" not in lab.save(), "the OUTPUT chain and jump go with the last forward"


def test_hairpin_client_on_the_backend_side(lab: Lab) -> None:
    # The server itself is a client on the backend's subnet; it reaches the listen address via the box.
    lab.exec(lab.server, "ip", "route", "add", f"{NAT_LAN_IP}/32", "via", NAT_DMZ_IP)
    fwd = Forward.from_text(f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", name="web", snat=NAT_DMZ_IP)
    text = build_plan(fwd).restore_text()
    dnat_only = "".join(line + "\n" for line in text.splitlines() if "-j SNAT" not in line)
    lab.nat_exec("iptables-nft-restore", "--noflush", stdin=dnat_only)
    assert fetch_from(lab, lab.server) is None, "DNAT alone: the reply bypasses the box"
    lab.nat_exec(
        "iptables-nft-restore",
        "--noflush",
        stdin="*nat\n"
        + next(r.save_line for r in build_plan(fwd).rules if r.kind == "snat")
        + "\nCOMMIT\n",
    )
    body = fetch_from(lab, lab.server)
    assert body is not None and PAGE_TOKEN in body, (
        "with natbox's SNAT the hairpin client is served"
    )
