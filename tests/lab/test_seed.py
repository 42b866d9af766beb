"""The seed, proven on the real kernel: the plan's restore text forwards the port; no SNAT, no reply."""

from __future__ import annotations

import pytest

from natbox.lab import NAT_DMZ_IP, NAT_LAN_IP, PAGE_TOKEN, SERVER_IP, Lab
from natbox.model import Forward
from natbox.plan import build_plan

SEED = Forward.from_text(f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", name="web", snat=NAT_DMZ_IP)


@pytest.mark.parametrize("flavour", ["nft", "legacy"])
def test_plan_restore_text_forwards_the_port(lab: Lab, flavour: str) -> None:
    assert lab.fetch() is None, "nothing forwards yet, so the fetch must fail"
    lab.nat_exec(f"iptables-{flavour}-restore", "--noflush", stdin=build_plan(SEED).restore_text())
    body = lab.fetch()
    assert body is not None and PAGE_TOKEN in body


@pytest.mark.parametrize("flavour", ["nft", "legacy"])
def test_without_snat_the_reply_never_comes_back(lab: Lab, flavour: str) -> None:
    text = build_plan(SEED).restore_text()
    no_snat = "".join(line + "\n" for line in text.splitlines() if "-j SNAT" not in line)
    assert no_snat != text
    lab.nat_exec(f"iptables-{flavour}-restore", "--noflush", stdin=no_snat)
    assert lab.fetch(timeout=1.5) is None


@pytest.mark.parametrize("flavour", ["nft", "legacy"])
def test_plan_reads_back_text_for_text(lab: Lab, flavour: str) -> None:
    fwd = Forward.from_text(
        f"{NAT_LAN_IP}:1234",
        f"{SERVER_IP}:80",
        proto="both",
        name="web",
        snat=NAT_DMZ_IP,
        mss_clamp=True,
        sources=["192.168.1.0/24"],
    )
    plan = build_plan(fwd)
    lab.nat_exec(f"iptables-{flavour}-restore", "--noflush", stdin=plan.restore_text())
    saved = lab.save(flavour)
    for rule in plan.rules:
        assert rule.save_line + "\n" in saved, rule.save_line
    assert lab.udp_ask() == "echo:ping"


def test_cli_plan_restore_format_in_the_lab(lab: Lab) -> None:
    out = lab.natbox(
        "plan", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--snat", NAT_DMZ_IP, "--format", "restore"
    )
    assert out.returncode == 0, out.stderr
    lab.nat_exec("iptables-nft-restore", "--noflush", stdin=out.stdout)
    body = lab.fetch()
    assert body is not None and PAGE_TOKEN in body


def test_cli_plan_derives_snat_from_the_route(lab: Lab) -> None:
    out = lab.natbox("plan", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert f'"snat": "{NAT_DMZ_IP}"' in out.stdout


def test_cli_plan_without_route_says_so(lab: Lab) -> None:
    out = lab.natbox("plan", f"{NAT_LAN_IP}:1234", "172.31.9.9:80")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "--snat" in out.stderr and "Traceback" not in out.stderr
