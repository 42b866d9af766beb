"""edit, disable and enable on the real kernel: an edit replaces exactly the forward's rules and the
client then reaches the new backend; kill -9 at every point of the transaction leaves the old forward
or the new one (never neither, never both); the confirm window's rollback brings the old one back and
the client reaches the old backend again; disable → enable gives back identical rules; foreign rules
are never touched; a disabled saved forward is not restored at boot until it is enabled."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from natbox.lab import DEMO_FOREIGN, NAT_LAN_IP, PAGE_TOKEN, SERVER_IP, Lab
from tests.lab.test_confirm_window import wait_until

NEW_IP, NEW_TOKEN = "10.0.2.51", "natbox-lab-new-backend"
WEB = [f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--name", "web", "--yes"]
DNS = [f"{NAT_LAN_IP}:5353", f"{SERVER_IP}:80", "--proto", "udp", "--name", "dns", "--yes"]
FLAVOUR = {"restore": "nft", "iptc": "legacy"}


@pytest.fixture
def box() -> Iterator[Lab]:
    """The seed lab (under NATBOX_LAB_PREFIX), a second backend 10.0.2.51 with its own page, foreign
    rules, and natbox's paths in its work dir (never the host's /etc)."""
    prefix = os.environ.get("NATBOX_LAB_PREFIX", "nbt-")
    lab = Lab(tag=f"{prefix}ed-{os.getpid()}-{secrets.token_hex(2)}").up()
    try:
        lab.env.update(
            NATBOX_CONFIG_DIR=str(lab.workdir / "etc-natbox"),
            NATBOX_UNIT_DIR=str(lab.workdir / "systemd"),
            NATBOX_SYSCTL_DIR=str(lab.workdir / "sysctl.d"),
        )
        lab.add_backend(NEW_IP, NEW_TOKEN)
        yield lab
    finally:
        lab.close()


def nb(lab: Lab, *args: str, rc: int = 0) -> str:
    out = lab.natbox(*args)
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr, out.stderr
    assert out.returncode == rc, (out.returncode, out.stdout, out.stderr)
    return out.stdout


def killed_at(lab: Lab, point: str, *args: str) -> int:
    """Run natbox with NATBOX_FAULT=point (it SIGKILLs itself there); its return code."""
    env = {**lab.env, "NATBOX_FAULT": point}
    proc = subprocess.run(
        lab.natbox_argv(*args), capture_output=True, text=True, env=env, check=False, timeout=120
    )
    return proc.returncode


def forwards(lab: Lab, *args: str) -> dict[str, dict[str, object]]:
    """natbox's forwards as `natbox list --json` reads them back, by name."""
    snap = json.loads(nb(lab, *args, "list", "--json"))
    return {str(f["name"]): f for f in snap["forwards"]}


def disabled(lab: Lab) -> list[str]:
    return [str(f["name"]) for f in json.loads(nb(lab, "list", "--json"))["disabled"]]


def not_web(save: str) -> list[str]:
    """Every line of iptables-save but web's rules, in order (foreign rules, jumps, dns)."""
    return [line for line in save.splitlines() if '"natbox:web"' not in line]


def web_rules(save: str) -> list[str]:
    return sorted(line for line in save.splitlines() if '"natbox:web"' in line)


def seeded(box: Lab, backend: str, *adds: list[str]) -> str:
    """Foreign rules, then the forwards `adds` (add's arguments) with `backend`; the flavour."""
    flavour = FLAVOUR[backend]
    box.nat_exec(f"iptables-{flavour}-restore", stdin=DEMO_FOREIGN)
    for args in adds:
        nb(box, "--backend", backend, "add", *args)
    return flavour


@pytest.mark.parametrize("backend", ["restore", "iptc"])
def test_edit_replaces_exactly_the_forwards_rules_and_the_client_reaches_the_new_backend(
    box: Lab, backend: str
) -> None:
    flavour = seeded(box, backend, WEB, DNS)
    before = box.save(flavour)
    assert box.fetch() == PAGE_TOKEN + "\n"
    edit = ["--backend", backend, "edit", "web", "--backend", f"{NEW_IP}:80"]
    dry = json.loads(nb(box, *edit, "--dry-run", "--json"))
    assert dry["changed"] and not dry["applied"] and box.save(flavour) == before
    out = nb(box, *edit, "--yes")
    assert "backend 10.0.2.50:80 → 10.0.2.51:80" in out and "edited web" in out
    after = box.save(flavour)
    assert not_web(after) == not_web(before), "foreign rules, jumps and dns stay, in place"
    new = [f"{NAT_LAN_IP}:1234", f"{NEW_IP}:80", "--name", "web", "--snat", "10.0.2.40"]
    plan = json.loads(nb(box, "plan", *new, "--format", "json"))
    assert web_rules(after) == sorted(str(r["rule"]) for r in plan["rules"])
    web = forwards(box, "--backend", backend)["web"]
    assert web["intact"] and web["backend"] == f"{NEW_IP}:80"
    assert box.fetch() == NEW_TOKEN + "\n", "the client reaches the new backend"
    assert box.udp_ask(port=5353) == "echo:ping", "the other forward still works"


EDIT_POINTS = (
    "set-journal-written",
    "set-committed-4-filter",
    "set-committed-4-nat",
    "set-before-journal-end",
)


@pytest.mark.parametrize("backend", ["restore", "iptc"])
def test_kill_9_at_every_point_of_an_edit_leaves_the_old_or_the_new_forward(
    box: Lab, backend: str
) -> None:
    flavour = seeded(box, backend, DNS, WEB)
    old_rules, rest = web_rules(box.save(flavour)), not_web(box.save(flavour))
    edit = ["--backend", backend, "edit", "web", "--backend", f"{NEW_IP}:80", "--yes"]
    nb(box, *edit)
    new_rules = web_rules(box.save(flavour))
    outcomes = []
    for point in EDIT_POINTS:
        nb(box, "--backend", backend, "edit", "web", "--backend", f"{SERVER_IP}:80", "--yes")
        assert web_rules(box.save(flavour)) == old_rules
        assert killed_at(box, point, *edit) == -9, f"not killed at {point}"
        nb(box, "--backend", backend, "recover")
        save = box.save(flavour)
        assert not_web(save) == rest, f"{point}: foreign rules or dns moved"
        now = web_rules(save)
        assert now in (old_rules, new_rules), f"{point}: neither the old nor the new web"
        page = box.fetch()
        assert page == (NEW_TOKEN if now == new_rules else PAGE_TOKEN) + "\n", point
        outcomes.append("new" if now == new_rules else "old")
    # Up to the last table the change is undone; after it, it had finished and is kept.
    assert outcomes == ["old", "old", "new", "new"]


@pytest.mark.parametrize("point", ["set-committed-4-nat", "set-committed-4-filter"])
def test_kill_9_in_a_disable_leaves_the_forward_in_the_kernel_or_disabled(
    box: Lab, point: str
) -> None:
    box.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    nb(box, "add", *WEB)
    before = box.save()
    assert killed_at(box, point, "disable", "web", "--yes") == -9
    nb(box, "recover")
    live, held = "web" in forwards(box), "web" in disabled(box)
    assert live != held, "never both, never neither"
    # nat goes first in a pure removal: killed after it, the change is undone; after filter, kept.
    assert held == (point == "set-committed-4-filter")
    if live:
        assert box.save() == before and box.fetch() == PAGE_TOKEN + "\n"
    else:
        assert "natbox:web" not in box.save() and box.fetch(timeout=1) is None
        nb(box, "enable", "web", "--yes")
        assert box.save() == before


def test_rollback_of_an_unconfirmed_edit_brings_the_old_backend_back(box: Lab) -> None:
    box.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    nb(box, "add", *WEB)
    nb(box, "save", "--yes")
    saved = (box.workdir / "etc-natbox" / "forwards.json").read_text()
    before = box.save()
    out = nb(box, "edit", "web", "--backend", f"{NEW_IP}:80", "--yes", "--confirm", "5")
    assert "natbox confirm" in out
    assert box.fetch() == NEW_TOKEN + "\n", "the new backend during the window"
    pending = json.loads((Path(box.state_dir) / "pending.json").read_text())
    assert pending["name"] == "edit:web"
    assert wait_until(lambda: web_rules(box.save()) == web_rules(before), 15), "rolled back"
    assert not_web(box.save()) == not_web(before)
    assert box.fetch() == PAGE_TOKEN + "\n", "the client reaches the old backend again"
    assert (box.workdir / "etc-natbox" / "forwards.json").read_text() == saved
    assert (
        "edit:web rolled back: not confirmed within 5 s"
        in (Path(box.state_dir) / "watchdog.log").read_text()
    )


def test_a_confirmed_edit_stays_and_its_saved_entry_follows(box: Lab) -> None:
    nb(box, "add", *WEB)
    nb(box, "save", "--yes")
    edit = ["edit", "web", "--backend", f"{NEW_IP}:80", "--name", "site", "--yes"]
    nb(box, *edit, "--confirm", "5")
    assert (
        json.loads((box.workdir / "etc-natbox" / "forwards.json").read_text())["forwards"][0][
            "name"
        ]
        == "web"
    ), "not kept yet"
    assert nb(box, "confirm").strip() == "kept edit:web"
    saved = json.loads((box.workdir / "etc-natbox" / "forwards.json").read_text())["forwards"]
    assert [(f["name"], f["backend"]) for f in saved] == [("site", f"{NEW_IP}:80")]
    time.sleep(6)
    assert set(forwards(box)) == {"site"} and box.fetch() == NEW_TOKEN + "\n"
    assert box.natbox("diff").returncode == 0, "the saved set matches the kernel"


@pytest.mark.parametrize("backend", ["restore", "iptc"])
def test_disable_enable_round_trips_to_identical_rules(box: Lab, backend: str) -> None:
    flavour = FLAVOUR[backend]
    box.nat_exec(f"iptables-{flavour}-restore", stdin=DEMO_FOREIGN)
    foreign = box.save(flavour)
    nb(box, "--backend", backend, "add", *WEB)
    before = box.save(flavour)
    nb(box, "--backend", backend, "disable", "web", "--yes")
    assert box.save(flavour) == foreign, "exactly web's rules (and natbox's chains) went"
    assert box.fetch(timeout=1) is None
    assert disabled(box) == ["web"] and "web" not in forwards(box)
    text = nb(box, "list")
    assert "disabled (1)" in text and "natbox enable web" in text
    nb(box, "--backend", backend, "enable", "web", "--yes")
    assert box.save(flavour) == before, "byte for byte"
    assert box.fetch() == PAGE_TOKEN + "\n"
    # With another forward in natbox's chains the rules are the same (web's now after dns's).
    nb(box, "--backend", backend, "add", *DNS)
    before = box.save(flavour)
    nb(box, "--backend", backend, "disable", "web", "--yes")
    assert not_web(box.save(flavour)) == not_web(before)
    nb(box, "--backend", backend, "enable", "web", "--yes")
    assert sorted(box.save(flavour).splitlines()) == sorted(before.splitlines())
    assert box.fetch() == PAGE_TOKEN + "\n" and box.udp_ask(port=5353) == "echo:ping"


def test_disabled_names_ports_and_remove(box: Lab) -> None:
    nb(box, "add", *WEB)
    nb(box, "disable", "web", "--yes")
    err = box.natbox("add", f"{NAT_LAN_IP}:2000", f"{SERVER_IP}:80", "--name", "web", "--yes")
    assert err.returncode == 2 and "a disabled forward is named web" in err.stderr
    # A disabled forward holds no port: another forward may take it; enable then refuses.
    nb(box, "add", f"{NAT_LAN_IP}:1234", f"{NEW_IP}:80", "--name", "other", "--yes")
    before = box.save()
    err = box.natbox("enable", "web", "--yes")
    assert err.returncode == 2 and "already forwarded by other" in err.stderr
    assert box.save() == before and disabled(box) == ["web"]
    nb(box, "remove", "other", "--yes")
    out = nb(box, "remove", "web", "--yes")
    assert "forgot the disabled web" in out and disabled(box) == []
    err = box.natbox("enable", "web", "--yes")
    assert err.returncode == 2 and "no disabled forward named web" in err.stderr


def reboot(lab: Lab) -> None:
    """What a reboot leaves: foreign rules come back (their own tools), natbox's do not."""
    lab.nat_exec(
        "iptables-nft-restore", stdin="*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n*nat\nCOMMIT\n"
    )
    lab.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)


def test_a_disabled_saved_forward_is_not_restored_at_boot_until_enabled(box: Lab) -> None:
    box.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    nb(box, "add", *WEB)
    nb(box, "add", *DNS)
    nb(box, "save", "--yes")
    nb(box, "disable", "web", "--yes")
    assert box.natbox("diff").returncode == 0, "a disabled forward is no drift"
    out = nb(box, "save", "--yes")  # keeps web's saved entry
    saved = json.loads((box.workdir / "etc-natbox" / "forwards.json").read_text())["forwards"]
    assert sorted(f["name"] for f in saved) == ["dns", "web"], out
    reboot(box)
    out = nb(box, "restore")
    assert "restored dns" in out and "skipped disabled: web" in out
    assert set(forwards(box)) == {"dns"} and disabled(box) == ["web"]
    nb(box, "enable", "web", "--yes")
    reboot(box)
    nb(box, "restore")
    assert set(forwards(box)) == {"dns", "web"} and box.fetch() == PAGE_TOKEN + "\n"


_ENGINE = """
import json
from natbox.engine import Engine
from natbox.model import Forward

e = Engine()
old = next(s.forward for s in e.dashboard().forwards if s.name == "web")
new = Forward.from_text("192.168.1.30:1234", "10.0.2.51:80", name="web", snat="10.0.2.40")
preview = e.preview_edit("web", new)
out = {"preview": [preview.action, preview.changed, preview.blocked, sorted(preview.lines)]}
out["edit"] = e.edit("web", new).action
out["disable"] = e.disable("web").action
data = e.dashboard()
out["live"] = [s.name for s in data.forwards]
out["disabled"] = [f.backend.ip.exploded for f in data.disabled]
enable = e.preview_enable("web")
out["enable_preview"] = [enable.before == enable.after, enable.blocked]
out["enable"] = e.enable("web").action
out["disable_preview"] = sorted(e.preview_disable("web").lines)
e.disable("web")
out["remove"] = e.remove("web").action
out["after"] = [len(e.dashboard().forwards), len(e.dashboard().disabled)]
print(json.dumps(out))
"""


def test_the_engine_api_the_dashboard_uses(box: Lab) -> None:
    box.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    nb(box, "add", *WEB)
    out = json.loads(box.nat_exec(sys.executable, "-c", _ENGINE).stdout)
    assert out["preview"] == ["edit", True, False, ["filter", "nat"]]
    assert (out["edit"], out["disable"], out["enable"]) == ("edit", "disable", "enable")
    assert out["live"] == [] and out["disabled"] == [NEW_IP]
    assert out["enable_preview"] == [True, False]
    assert out["disable_preview"] == ["filter", "nat"]
    assert out["remove"] == "forget" and out["after"] == [0, 0]
    assert "NATBOX" not in box.save()
