"""The Ansible role in contrib/ansible, run by the real ansible-playbook against two lab NAT boxes.

Each "host" is a lab's nat namespace; the playbook runs inside it with a local connection, as a
fleet's control node would reach each box over SSH. First run: changed on both and the forwards
work; second run: changed=0 and the kernels untouched; a changed forward is replaced on both; check
mode changes nothing; a box with a conflicting foreign DNAT fails alone and stays as it was.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from natbox.lab import DEMO_FOREIGN, NAT_LAN_IP, PAGE_TOKEN, SERVER_IP, Lab

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
if not PLAYBOOK.exists() and shutil.which("ansible-playbook"):
    PLAYBOOK = Path(str(shutil.which("ansible-playbook")))

pytestmark = pytest.mark.skipif(
    not PLAYBOOK.exists(),
    reason="ansible-core is not installed (pip install -e '.[test]' installs it from PyPI)",
)

WEB = {"name": "web", "listen": f"{NAT_LAN_IP}:1234", "backend": f"{SERVER_IP}:80"}
DNS = {
    "name": "dns",
    "proto": "udp",
    "listen": f"{NAT_LAN_IP}:5353",
    "backend": f"{SERVER_IP}:80",
    "snat": "10.0.2.40",
}
PLAY = """- name: natbox forwards
  hosts: all
  gather_facts: false
  roles:
    - role: natbox
"""


@pytest.fixture
def boxes(tmp_path: Path) -> Iterator[list[Lab]]:
    """Two NAT boxes (two labs), each with foreign rules, and the playbook's files."""
    labs: list[Lab] = []
    try:
        for side in ("a", "b"):
            lab = Lab(tag=f"nbt-ap-{os.getpid()}-{secrets.token_hex(2)}{side}").up()
            labs.append(lab)
            lab.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
            home = lab.workdir / "ansible"
            home.mkdir()
            lab.env.update(
                ANSIBLE_ROLES_PATH=str(ROOT / "contrib" / "ansible" / "roles"),
                ANSIBLE_HOME=str(home),
                ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
                ANSIBLE_REMOTE_TEMP=str(home / "remote-tmp"),
                ANSIBLE_NOCOLOR="1",
                ANSIBLE_RETRY_FILES_ENABLED="0",
                ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                LC_ALL="C.UTF-8",
                NATBOX_CONFIG_DIR=str(lab.workdir / "etc-natbox"),
            )
        (tmp_path / "play.yml").write_text(PLAY)
        yield labs
    finally:
        for lab in labs:
            lab.close()


def play(lab: Lab, forwards: list[dict[str, object]], *extra: str) -> dict[str, int]:
    """Run the playbook inside the box's namespace; the PLAY RECAP counters of localhost."""
    var_file = lab.workdir / "vars.json"
    var_file.write_text(
        json.dumps(
            {
                "natbox_forwards": forwards,
                "natbox_prune": True,
                "natbox_command": [sys.executable, "-m", "natbox"],
            }
        )
    )
    play_file = lab.workdir / "play.yml"
    play_file.write_text(PLAY)
    out = lab.exec(
        lab.nat,
        str(PLAYBOOK),
        "-c",
        "local",
        "-i",
        "localhost,",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-e",
        f"@{var_file}",
        str(play_file),
        *extra,
        check=False,
    )
    m = re.search(
        r"localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out.stdout
    )
    assert m is not None, out.stdout + out.stderr
    recap = dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()), strict=True))
    recap["rc"] = out.returncode
    if recap["failed"]:
        lab.last_output = out.stdout  # type: ignore[attr-defined]
    return recap


def test_playbook_on_two_boxes(boxes: list[Lab]) -> None:
    a, b = boxes
    # First run: changed on both, the forwards work from both clients.
    for box in boxes:
        recap = play(box, [WEB, DNS])
        assert recap["changed"] == 1 and recap["failed"] == 0 and recap["rc"] == 0, recap
        body = box.fetch()
        assert body is not None and PAGE_TOKEN in body
        assert box.udp_ask(port=5353) == "echo:ping"

    # Second run: changed=0, and the kernels are untouched down to the counters.
    saved = [box.save("nft", counters=True) for box in boxes]
    for box in boxes:
        recap = play(box, [WEB, DNS])
        assert recap["changed"] == 0 and recap["failed"] == 0, recap
    assert [box.save("nft", counters=True) for box in boxes] == saved

    # A changed file updates one forward on both boxes; the other keeps its rules and counters.
    web2 = {**WEB, "masquerade": True}
    for box in boxes:
        dns_rules = [ln for ln in box.save("nft", counters=True).splitlines() if "natbox:dns" in ln]
        recap = play(box, [web2, DNS])
        assert recap["changed"] == 1 and recap["failed"] == 0, recap
        after = box.save("nft", counters=True)
        assert [ln for ln in after.splitlines() if "natbox:dns" in ln] == dns_rules
        assert '--comment "natbox:web" -j MASQUERADE' in after
        assert box.fetch() is not None

    # Check mode: reports the change, changes nothing.
    new = {**WEB, "name": "alt", "listen": f"{NAT_LAN_IP}:7000"}
    saved = [box.save("nft", counters=True) for box in boxes]
    for box in boxes:
        recap = play(box, [web2, DNS, new], "--check")
        assert recap["changed"] == 1 and recap["failed"] == 0, recap
    assert [box.save("nft", counters=True) for box in boxes] == saved
    assert a.fetch(port=7000, timeout=1) is None

    # Box b has a foreign DNAT on the port: b fails alone and stays untouched, a gets the forward.
    b.nat_exec(
        "iptables-nft", "-t", "nat", "-I", "PREROUTING", "1", "-d", f"{NAT_LAN_IP}/32",
        "-p", "tcp", "--dport", "7000", "-j", "DNAT", "--to-destination", f"{SERVER_IP}:9",
    )  # fmt: skip
    before_b = b.save("nft", counters=True)
    recap_a = play(a, [web2, DNS, new])
    recap_b = play(b, [web2, DNS, new])
    assert recap_a["changed"] == 1 and recap_a["failed"] == 0, recap_a
    assert recap_b["failed"] == 1 and recap_b["rc"] != 0, recap_b
    assert "another DNAT takes" in b.last_output  # type: ignore[attr-defined]
    assert b.save("nft", counters=True) == before_b
    assert a.fetch(port=7000) is not None
