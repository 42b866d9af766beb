"""The SSH-safe confirm window on the real kernel: no confirm, no forward; confirm keeps it."""

from __future__ import annotations

import time

from natbox.lab import DEMO_FOREIGN, NAT_LAN_IP, SERVER_IP, Lab

SEED = [f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--name", "web", "--yes"]


def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_unconfirmed_change_is_rolled_back(lab: Lab) -> None:
    lab.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    before = lab.save()
    out = lab.natbox("add", *SEED, "--confirm", "5")
    assert out.returncode == 0, out.stderr
    assert "natbox confirm" in out.stdout
    assert lab.fetch() is not None, "the forward works during the window"
    assert wait_until(lambda: lab.save() == before, 12), "rolled back after the window"
    assert lab.fetch(timeout=1) is None
    out = lab.natbox("confirm")
    assert out.returncode == 2 and "no change waits for confirmation" in out.stderr


def test_confirmed_change_stays(lab: Lab) -> None:
    out = lab.natbox("add", *SEED, "--confirm", "5")
    assert out.returncode == 0, out.stderr
    out = lab.natbox("confirm")
    assert out.returncode == 0 and out.stdout.strip() == "kept web"
    time.sleep(6)
    assert lab.fetch() is not None
    assert "natbox:web" in lab.save()


def test_rollback_now_and_one_change_at_a_time(lab: Lab) -> None:
    lab.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    before = lab.save()
    assert lab.natbox("add", *SEED, "--confirm", "30").returncode == 0
    out = lab.natbox("add", f"{NAT_LAN_IP}:2000", f"{SERVER_IP}:80", "--yes", "--confirm", "30")
    assert out.returncode == 2 and "web still waits for confirmation" in out.stderr
    out = lab.natbox("rollback")
    assert out.returncode == 0 and out.stdout.strip() == "rolled back web"
    assert lab.save() == before


def test_failed_apply_leaves_no_watchdog(lab: Lab) -> None:
    assert lab.natbox("add", *SEED).returncode == 0
    out = lab.natbox("add", *SEED, "--confirm", "5")
    assert out.returncode == 2 and "already exists" in out.stderr
    time.sleep(6)
    assert "natbox:web" in lab.save(), (
        "the watchdog of a failed apply must not remove the old forward"
    )
