"""natbox never loses a rule: concurrent natboxes, look-alike tags, a chain natbox did not create,
native nftables rules in `ip nat`, a dead watchdog, hostile state files. Real kernel, namespaces."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

from natbox.lab import DEMO_FOREIGN, NAT_LAN_IP, SERVER_IP, Lab
from tests.lab import concurrency_tally

SEED = (f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80")


@pytest.mark.parametrize("backend", ["restore", "iptc"])
def test_concurrent_natboxes_lose_nothing(lab: Lab, backend: str) -> None:
    concurrency_tally.prepare(lab, backend)
    anomalies = [a for r in range(3) for a in concurrency_tally.run_round(lab, backend, r)]
    assert anomalies == []


def ok(lab: Lab, *args: str) -> str:
    out = lab.natbox(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def fails(lab: Lab, *args: str, code: int = 2) -> str:
    out = lab.natbox(*args)
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr


def test_look_alike_tag_is_reported_never_deleted(lab: Lab) -> None:
    ok(lab, "add", *SEED, "--name", "web", "--yes")
    forged = "-A FORWARD -s 172.16.9.9/32 -m comment --comment natbox:web -j DROP"
    ghost = '-A FORWARD -m comment --comment "natbox:ghost" -j ACCEPT'
    lab.nat_exec("iptables-nft", "-I", "FORWARD", "2", *forged.split()[2:])
    lab.nat_exec("iptables-nft", "-A", "FORWARD", *ghost.replace('"', "").split()[2:])
    snap = json.loads(ok(lab, "list", "--json"))
    assert [f["name"] for f in snap["forwards"]] == ["web"], "a lone tag is no forward"
    assert snap["forwards"][0]["intact"], "a look-alike does not break web"
    assert any("not natbox's" in w and "172.16.9.9" in w for w in snap["warnings"])
    ok(lab, "remove", "web", "--yes")
    save = lab.save()
    assert '-A FORWARD -s 172.16.9.9/32 -m comment --comment "natbox:web" -j DROP' in save
    assert "natbox:ghost" in save


def test_chain_natbox_did_not_create_is_refused_unless_adopted(lab: Lab) -> None:
    lab.nat_exec("iptables-nft", "-N", "NATBOX-FORWARD")
    lab.nat_exec("iptables-nft", "-A", "NATBOX-FORWARD", "-j", "DROP")
    before = lab.save()
    err = fails(lab, "add", *SEED, "--yes")
    assert "NATBOX-FORWARD" in err and "--adopt" in err
    assert lab.save() == before
    # Rules natbox does not own in its chain are reported.
    assert any(
        "NATBOX-FORWARD was not written by natbox" in w
        for w in json.loads(ok(lab, "list", "--json"))["warnings"]
    )


def _nft(lab: Lab) -> str:
    return re.sub(r"packets \d+ bytes \d+", "", lab.nat_exec("nft", "list", "ruleset").stdout)


def test_native_nft_rule_in_ip_nat_stops_every_write(lab: Lab) -> None:
    ok(lab, "add", *SEED, "--name", "web", "--yes")
    lab.nat_exec(
        "nft",
        f"add rule ip nat PREROUTING ip daddr 192.168.9.9 tcp dport {{1951,1952}} dnat to {SERVER_IP}:80",
    )
    before = _nft(lab)
    err = fails(lab, "add", f"{NAT_LAN_IP}:1240", f"{SERVER_IP}:80", "--name", "k2", "--yes")
    assert "nat table" in err and "nft list table ip nat" in err
    err = fails(lab, "remove", "web", "--yes")
    assert "nft list table ip nat" in err
    assert _nft(lab) == before, "nothing was touched"
    snap = json.loads(ok(lab, "list", "--json"))
    assert any("cannot be verified" in w for w in snap["warnings"])
    assert lab.fetch() is not None, "web still works"


def _pending(lab: Lab) -> dict[str, object]:
    return json.loads((Path(lab.state_dir) / "pending.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_dead_watchdog_is_replaced_and_the_change_still_rolls_back(lab: Lab, sig: int) -> None:
    lab.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)  # tables exist before natbox
    before = lab.save()
    ok(lab, "add", *SEED, "--yes", "--confirm", "6")
    os.kill(int(str(_pending(lab)["watchdog_pid"])), sig)
    time.sleep(0.5)
    # Any natbox command notices and hands the change to a new watchdog.
    out = lab.natbox("list")
    assert out.returncode == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and lab.save() != before:
        time.sleep(0.3)
    assert lab.save() == before, "rolled back at the deadline although its first watchdog died"
    assert lab.fetch(timeout=1) is None


def test_expired_change_without_watchdog_is_rolled_back_by_the_next_natbox(lab: Lab) -> None:
    lab.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)  # tables exist before natbox
    before = lab.save()
    ok(lab, "add", *SEED, "--yes", "--confirm", "5")
    os.kill(int(str(_pending(lab)["watchdog_pid"])), signal.SIGKILL)
    time.sleep(6)  # the deadline passes with nobody watching
    assert "natbox:tcp-1234" in lab.save()
    out = lab.natbox("recover")
    assert out.returncode == 0, out.stderr
    assert "rolled back: not confirmed within 5 s" in out.stdout
    assert lab.save() == before
    out = lab.natbox("add", *SEED, "--yes", "--confirm", "5")
    assert out.returncode == 0, "the next confirm window is not blocked"
    ok(lab, "confirm")


def test_death_mid_rollback_is_finished_by_the_next_natbox(lab: Lab) -> None:
    lab.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)  # tables exist before natbox
    before = lab.save()
    ok(lab, "add", *SEED, "--yes", "--confirm", "5")
    pid = int(str(_pending(lab)["watchdog_pid"]))
    os.kill(pid, signal.SIGKILL)
    # The rollback, interrupted right after its first table: as a watchdog killed mid-rollback.
    lab.env["NATBOX_FAULT"] = "committed-nat"
    try:
        lab.natbox("rollback")
    finally:
        del lab.env["NATBOX_FAULT"]
    assert lab.save() != before, "half removed"
    out = lab.natbox("recover")
    assert out.returncode == 0 and "completed the interrupted removal" in out.stdout, out.stdout
    assert lab.save() == before


@pytest.mark.parametrize("window", ["nan", "inf", "1e308", "4", "-5", "٣٠", "3601"])
def test_confirm_window_must_be_finite_seconds_in_range(lab: Lab, window: str) -> None:
    before = lab.save()
    err = fails(lab, "add", *SEED, "--yes", "--confirm", window)
    assert "5 to 3600" in err
    assert lab.save() == before


@pytest.mark.parametrize(
    ("port", "words"),
    [("²", "not a number"), ("٨٠", "not a number"), ("9" * 5000, "too long")],
)
def test_non_ascii_and_huge_ports_are_refused_briefly(lab: Lab, port: str, words: str) -> None:
    err = fails(lab, "add", f"{NAT_LAN_IP}:{port}", f"{SERVER_IP}:80", "--yes")
    assert words in err and len(err) < 400


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "abc"])
def test_lock_wait_env_is_validated(lab: Lab, value: str) -> None:
    lab.env["NATBOX_LOCK_WAIT"] = value
    try:
        err = fails(lab, "add", *SEED, "--yes")
    finally:
        del lab.env["NATBOX_LOCK_WAIT"]
    assert "NATBOX_LOCK_WAIT" in err


def test_bogus_journal_is_refused_and_web_is_untouched(lab: Lab) -> None:
    ok(lab, "add", *SEED, "--name", "web", "--yes")
    before = lab.save()
    path = Path(lab.state_dir) / "journal.json"
    for body in ('{"op":"bogus","name":"web","forward":null,"started":1}', "[1]", "\x00\x01"):
        path.write_text(body)
        path.chmod(0o600)
        err = fails(lab, "recover")
        assert "journal.json" in err and "not a journal natbox understands" in err
        err = fails(lab, "remove", "web", "--yes")  # no write on top of an unknown journal
        assert lab.save() == before
    path.unlink()


def test_hostile_saved_file_applies_nothing(lab: Lab) -> None:
    conf = Path(lab.workdir) / "etc"
    conf.mkdir(mode=0o755)
    lab.env["NATBOX_CONFIG_DIR"] = str(conf)
    try:
        saved = conf / "forwards.json"
        good = {
            "name": "a",
            "listen": f"{NAT_LAN_IP}:1234",
            "backend": f"{SERVER_IP}:80",
            "snat": "10.0.2.40",
        }
        before = lab.save()
        cases = [
            ({"version": 1, "forwards": [good, dict(good, name="b")]}, 0o600, "as a does"),
            ({"version": 1, "forwards": [dict(good, masquerade="false")]}, 0o600, "true or false"),
            ({"version": 1, "forwards": [good]}, 0o666, "writable by other users"),
        ]
        for body, mode, words in cases:
            saved.write_text(json.dumps(body))
            saved.chmod(mode)
            err = fails(lab, "restore")
            assert words in err
            assert lab.save() == before, "nothing applied"
        saved.unlink()
        os.mkfifo(saved, 0o600)
        assert "not a regular file" in fails(lab, "restore")
    finally:
        del lab.env["NATBOX_CONFIG_DIR"]


def test_busy_lock_names_the_holder(lab: Lab) -> None:
    """While another natbox changes the firewall, a second one waits (bounded), then says who."""
    holder = lab.spawn_capture(
        lab.nat,
        sys.executable,
        "-c",
        "import time\n"
        "from natbox import lock\n"
        "with lock.held('adding web'):\n"
        "    print('held', flush=True); time.sleep(30)\n",
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = lab.save()
        lab.env["NATBOX_WAIT"] = "1"
        try:
            err = fails(lab, "add", *SEED, "--yes")
        finally:
            del lab.env["NATBOX_WAIT"]
        assert f"another natbox is changing the firewall (pid {holder.pid}, adding web" in err
        assert lab.save() == before
    finally:
        holder.kill()
        holder.wait()


def test_look_alike_jump_and_adopted_chain_never_strand_traffic(lab: Lab) -> None:
    """A foreign jump into natbox's chain is reported and keeps the chain; after --adopt and
    remove, natbox's own jump goes, so nothing is sent into the foreign DROP any more."""
    ok(lab, "add", *SEED, "--name", "web", "--yes")
    lab.nat_exec(
        "iptables-nft",
        "-I",
        "FORWARD",
        "1",
        "-i",
        "lo",
        "-m",
        "comment",
        "--comment",
        "natbox",
        "-j",
        "NATBOX-FORWARD",
    )
    snap = json.loads(ok(lab, "list", "--json"))
    assert any("-i lo" in w for w in snap["warnings"])
    ok(lab, "remove", "web", "--yes")
    save = lab.save()
    assert "-A FORWARD -i lo -m comment --comment natbox -j NATBOX-FORWARD" in save
    assert ":NATBOX-FORWARD" in save, "the chain stays while someone jumps into it"

    other = Lab().up()
    try:
        other.nat_exec("iptables-nft", "-N", "NATBOX-FORWARD")
        other.nat_exec("iptables-nft", "-A", "NATBOX-FORWARD", "-j", "DROP")
        assert other.natbox("add", *SEED, "--adopt", "--yes").returncode == 0
        assert other.natbox("remove", "tcp-1234", "--yes").returncode == 0
        save = other.save()
        assert "-j NATBOX-FORWARD" not in save, "no jump left into the foreign DROP"
        assert "-A NATBOX-FORWARD -j DROP" in save, "their rule stays"
    finally:
        other.close()


def test_empty_precreated_chain_is_refused(lab: Lab) -> None:
    lab.nat_exec("iptables-nft", "-N", "NATBOX-FORWARD")
    before = lab.save()
    err = fails(lab, "add", *SEED, "--yes")
    assert "NATBOX-FORWARD exists that natbox did not create" in err and "--adopt" in err
    assert lab.save() == before


def _apply_file(lab: Lab, name: str, port: int) -> str:
    path = Path(lab.workdir) / f"{name}.json"
    body = {
        "version": 1,
        "forwards": [
            {"name": name, "listen": f"{NAT_LAN_IP}:{port}", "backend": f"{SERVER_IP}:80"}
        ],
    }
    path.write_text(json.dumps(body))
    return str(path)


def test_refused_second_apply_does_not_defeat_the_first_ones_window(lab: Lab) -> None:
    lab.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    before = lab.save()
    ok(lab, "apply", _apply_file(lab, "n1", 1401), "--yes", "--confirm", "5")
    err = fails(lab, "apply", _apply_file(lab, "n2", 1402), "--yes", "--confirm", "5")
    assert "still waits for confirmation" in err
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and lab.save() != before:
        time.sleep(0.3)
    assert lab.save() == before, "n1 rolled back at its deadline"


def test_busy_lock_at_the_deadline_delays_the_rollback_never_loses_it(lab: Lab) -> None:
    lab.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    before = lab.save()
    lab.env["NATBOX_WAIT"] = "2"  # the watchdog inherits it: it gives up waiting after 2 s
    try:
        ok(lab, "apply", _apply_file(lab, "n1", 1401), "--yes", "--confirm", "5")
    finally:
        del lab.env["NATBOX_WAIT"]
    holder = lab.spawn_capture(
        lab.nat,
        sys.executable,
        "-c",
        "import time\nfrom natbox import lock\nwith lock.held('a long change'):\n"
        "    print('held', flush=True); time.sleep(9)\n",
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.wait(timeout=30)  # the deadline passes while the lock is held
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and lab.save() != before:
        time.sleep(0.3)
    assert lab.save() == before, "rolled back once the lock was free"


def test_look_alike_inside_natbox_chain_is_reported_never_deleted(lab: Lab) -> None:
    ok(lab, "add", *SEED, "--name", "web", "--yes")
    lab.nat_exec(
        "iptables-nft",
        "-A",
        "NATBOX-FORWARD",
        "-s",
        "172.16.7.7/32",
        "-m",
        "comment",
        "--comment",
        "natbox:web",
        "-j",
        "DROP",
    )
    snap = json.loads(ok(lab, "list", "--json"))
    (web,) = snap["forwards"]
    assert web["intact"], "web's own rules are all there"
    assert any("172.16.7.7" in w and "not part of that forward" in w for w in snap["warnings"])
    ok(lab, "remove", "web", "--yes")
    save = lab.save()
    assert '-A NATBOX-FORWARD -s 172.16.7.7/32 -m comment --comment "natbox:web" -j DROP' in save
    assert "-j NATBOX-FORWARD" not in save, "natbox's jump left with web"


DASHBOARD = (
    "from natbox.engine import Engine\n"
    "d = Engine().dashboard()\n"
    "print(sorted(d.drifted))\n"
    "print('\\n'.join(d.warnings))\n"
)


def test_dashboard_marks_drift_behind_natboxs_back(lab: Lab) -> None:
    """Saved forwards changed or gone behind natbox's back, and a jump no longer first, are what
    the dashboard's SAVED column (DRIFT) and warnings show."""
    conf = Path(lab.workdir) / "etc"
    conf.mkdir(mode=0o755)
    lab.env["NATBOX_CONFIG_DIR"] = str(conf)
    try:
        ok(lab, "add", *SEED, "--name", "web", "--yes")
        ok(lab, "add", f"{NAT_LAN_IP}:1240", f"{SERVER_IP}:80", "--name", "alt", "--yes")
        ok(lab, "save", "--yes")
        out = lab.nat_exec(sys.executable, "-c", DASHBOARD).stdout
        assert out.startswith("[]"), out
        # Behind natbox's back: web's FORWARD accept deleted, alt removed whole, a rule before
        # natbox's jump (as a Docker restart does).
        save = lab.save()
        accept = next(
            line for line in save.splitlines() if "natbox:web" in line and "NATBOX-FORWARD" in line
        )
        lab.nat_exec("iptables-nft", "-D", *shlex.split(accept)[1:])
        ok(lab, "remove", "alt", "--yes")
        lab.nat_exec("iptables-nft", "-I", "FORWARD", "1", "-s", "192.0.2.1/32", "-j", "ACCEPT")
        out = lab.nat_exec(sys.executable, "-c", DASHBOARD).stdout
        assert out.splitlines()[0] == "['web']", out
        assert "saved forward alt is not in the kernel" in out
        assert "no longer first in filter FORWARD" in out
    finally:
        del lab.env["NATBOX_CONFIG_DIR"]
