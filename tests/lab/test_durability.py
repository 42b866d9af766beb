"""Durability on the real kernel: save, simulated reboot, restore; corrupt files; crash recovery with
kill -9 at every point of apply and remove; the xtables lock held by another process; export."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from natbox.lab import DEMO_FOREIGN, NAT_LAN_IP, PAGE_TOKEN, SERVER_IP, Lab
from tests.lab.fault_tally import Tally, run

SEED = [f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--name", "web", "--yes"]
UDP = [f"{NAT_LAN_IP}:5353", f"{SERVER_IP}:80", "--proto", "udp", "--name", "dns", "--yes"]


@pytest.fixture
def box(lab: Lab) -> Lab:
    """The lab with every natbox path in its own work dir (never the host's /etc)."""
    lab.env.update(
        NATBOX_CONFIG_DIR=str(lab.workdir / "etc-natbox"),
        NATBOX_UNIT_DIR=str(lab.workdir / "systemd"),
        NATBOX_SYSCTL_DIR=str(lab.workdir / "sysctl.d"),
    )
    lab.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    return lab


def ok(lab: Lab, *args: str) -> str:
    out = lab.natbox(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def reboot(lab: Lab) -> None:
    """What a reboot leaves: foreign rules come back (their own tools), natbox's do not, routing off."""
    lab.nat_exec(
        "iptables-nft-restore", stdin="*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n*nat\nCOMMIT\n"
    )
    lab.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    lab.nat_exec("sysctl", "-qw", "net.ipv4.ip_forward=0")


def test_save_reboot_restore_twice(box: Lab) -> None:
    box.nat_exec("sysctl", "-qw", "net.ipv4.ip_forward=0")
    ok(box, "add", *SEED, "--enable-forwarding")
    ok(box, "add", *UDP)
    before = box.save()
    out = ok(box, "save", "--yes")
    assert "saved 2 forwards" in out
    saved = json.loads((box.workdir / "etc-natbox" / "forwards.json").read_text())
    assert [f["name"] for f in saved["forwards"]] == ["web", "dns"]
    assert "docker" not in json.dumps(saved).lower(), "only natbox's forwards are saved"
    assert oct((box.workdir / "etc-natbox" / "forwards.json").stat().st_mode & 0o777) == "0o600"
    unit = (box.workdir / "systemd" / "natbox-restore.service").read_text()
    assert "ExecStart=" in unit and "natbox restore" in unit
    assert (
        box.workdir / "systemd" / "multi-user.target.wants" / "natbox-restore.service"
    ).is_symlink()
    assert "net.ipv4.ip_forward = 1" in (box.workdir / "sysctl.d" / "90-natbox.conf").read_text()

    reboot(box)
    assert box.fetch(timeout=1) is None
    box.nat_exec("sysctl", "-p", str(box.workdir / "sysctl.d" / "90-natbox.conf"))
    assert "restored web, dns" in ok(box, "restore")
    assert box.save() == before, "identical rules after the simulated reboot"
    body = box.fetch()
    assert body is not None and PAGE_TOKEN in body
    assert box.udp_ask(port=5353) == "echo:ping"
    assert "restored nothing; 2 already there" in ok(box, "restore")
    assert box.save() == before, "restore twice: no duplicates"


def test_forget(box: Lab) -> None:
    ok(box, "add", *SEED)
    ok(box, "add", *UDP)
    ok(box, "save", "--yes")
    assert "forgot dns" in ok(box, "forget", "dns")
    reboot(box)
    box.nat_exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
    assert "restored web;" in ok(box, "restore")
    assert "natbox:dns" not in box.save()
    out = box.natbox("forget", "nope")
    assert out.returncode == 2 and "nope is not saved" in out.stderr


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda t: t.replace('"forwards": [', '"forwards": [,'), "line 3: Expecting value"),
        (
            lambda t: t.replace("192.168.1.30:5353", "192.168.1.30:70000"),
            "port 70000 is out of range 1-65535",
        ),
        (lambda t: t.replace('"dns"', '"web"'), "forward web is there twice"),
    ],
)
def test_a_damaged_saved_file_applies_nothing(box: Lab, damage: object, message: str) -> None:
    ok(box, "add", *SEED)
    ok(box, "add", *UDP)
    ok(box, "save", "--yes")
    path = box.workdir / "etc-natbox" / "forwards.json"
    path.write_text(damage(path.read_text()))  # type: ignore[operator]
    reboot(box)
    box.nat_exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
    before = box.save()
    out = box.natbox("restore")
    assert out.returncode == 2 and message in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert "forwards.json" in out.stderr
    assert box.save() == before, "nothing applied"


def test_kill_9_at_every_point_leaves_before_or_after(lab: Lab) -> None:
    tally = run(lab, Tally())
    assert tally.runs == 16
    assert tally.partial == 0, "\n".join(tally.outcomes)


def test_recover_says_what_it_did(lab: Lab) -> None:
    env = {**lab.env, "NATBOX_FAULT": "committed-filter"}
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.nat, sys.executable, "-m", "natbox", "add", *SEED],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == -9
    assert "natbox:web" in lab.save(), "the crash left the filter half in place"
    out = lab.natbox("list")  # reads never change anything
    assert "natbox:web" in lab.save()
    out = lab.natbox("add", f"{NAT_LAN_IP}:2000", f"{SERVER_IP}:80", "--yes")
    assert out.returncode == 0
    assert "recovered: undid the interrupted apply of web" in out.stderr
    assert "natbox:web" not in lab.save() and "natbox:tcp-2000" in lab.save()
    assert lab.natbox("recover").stdout.strip() == "nothing to recover"


def test_xtables_lock_held_by_another_process(lab: Lab) -> None:
    holder = lab.spawn_capture(
        lab.nat,
        sys.executable,
        "-c",
        "import fcntl, sys, time\n"
        "fd = open(sys.argv[1], 'w'); fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(30)\n",
        lab.lockfile,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    lab.env["NATBOX_LOCK_WAIT"] = "1"
    before = lab.save("legacy")
    out = lab.natbox("--backend", "iptc", "add", *SEED)
    assert (
        out.returncode == 2
        and "xtables lock" in out.stderr
        and "is held by another process" in out.stderr
    )
    assert lab.save("legacy") == before
    holder.kill()
    holder.wait()
    out = lab.natbox("--backend", "iptc", "add", *SEED)
    assert out.returncode == 0, out.stderr


def test_export_round_trips(lab: Lab) -> None:
    ok(lab, "add", *SEED, "--mss-clamp")
    ok(lab, "add", *UDP, "--from", "192.168.1.0/24")
    fragment = ok(lab, "export")
    commands = ok(lab, "export", "--format", "commands")
    tasks = ok(lab, "export", "web", "--format", "ansible")
    before = lab.save()
    ok(lab, "remove", "web", "--yes")
    ok(lab, "remove", "dns", "--yes")
    lab.nat_exec("iptables-nft-restore", "--noflush", stdin=fragment)
    assert lab.save() == before, "the restore fragment rebuilds exactly the same rules"
    assert lab.fetch() is not None
    out = lab.nat_exec("iptables-nft-restore", "--noflush", stdin=fragment, check=False)
    assert out.returncode != 0 and lab.save() == before, (
        "a second apply fails on -N and changes nothing"
    )
    for line in commands.splitlines():
        if not line.startswith("#"):
            argv = shlex.split(line)
            assert argv[0] == "iptables" and argv[1] == "-w"
    import yaml

    (play,) = yaml.safe_load(tasks)  # JSON is YAML: what ansible-playbook reads
    (role,) = play["roles"]
    assert role["role"] == "natbox"
    assert [f["name"] for f in role["vars"]["natbox_forwards"]] == ["web"]
    out = lab.natbox("export", "nope")
    assert out.returncode == 2 and "there is no forward named nope" in out.stderr
    assert Path(lab.workdir).exists()
