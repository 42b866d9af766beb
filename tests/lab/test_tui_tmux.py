"""The real `natbox` in a real terminal: tmux at 80x24, inside the lab's nat namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from natbox.lab import NAT_LAN_IP, SERVER_IP, Lab

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)"
)


class Tmux:
    """A private tmux server (own socket), so nothing of the user's tmux is touched."""

    def __init__(self) -> None:
        self.socket = f"nbt-{os.getpid()}-{time.monotonic_ns()}"

    def run(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=False
        )
        return out.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "nb")

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; the screen was:\n{screen}")

    def type(self, *keys: str) -> None:
        """Send keys one group at a time, as a person types (a burst can outrun a focus change)."""
        for key in keys:
            self.run("send-keys", "-t", "nb", key)
            time.sleep(0.15)

    def kill(self) -> None:
        self.run("kill-server")


def start(lab: Lab, tmux: Tmux, window: float = 30) -> None:
    env = f"XTABLES_LOCKFILE={lab.lockfile} NATBOX_STATE_DIR={lab.state_dir}"
    command = (
        f"ip netns exec {lab.nat} env {env} {sys.executable} -m natbox --confirm-window {window:g}"
    )
    tmux.run("new-session", "-d", "-s", "nb", "-x", "80", "-y", "24", command)


def wizard_to_countdown(lab: Lab, tmux: Tmux) -> None:
    """Add the seed's forward through the wizard, as a person types it, up to the countdown."""
    tmux.wait_for("no natbox forwards yet")
    tmux.run("send-keys", "-t", "nb", "a")
    tmux.wait_for("Client-facing address")
    # The first address is prefilled; this box has two, so type the client-facing one.
    tmux.type("C-u", "192.168.1.30", "Tab", "1234", "Enter")
    tmux.wait_for("Backend ip:port")
    tmux.run("send-keys", "-t", "nb", "10.0.2.50:80")
    tmux.wait_for("from 10.0.2.40")
    tmux.run("send-keys", "-t", "nb", "Enter")
    screen = tmux.wait_for("Name")
    assert "tcp-1234" in screen
    tmux.run("send-keys", "-t", "nb", "Enter")
    screen = tmux.wait_for("Enter applies")
    assert "192.168.1.30:1234 → 10.0.2.50:80" in screen
    tmux.run("send-keys", "-t", "nb", "Enter")
    tmux.wait_for("Keep these rules?")


def test_wizard_adds_the_seed_forward_in_tmux(lab: Lab) -> None:
    tmux = Tmux()
    try:
        start(lab, tmux, window=5)
        wizard_to_countdown(lab, tmux)
        assert lab.fetch() is not None, "the forward works during the confirm window"
        tmux.run("send-keys", "-t", "nb", "y")
        tmux.wait_for("kept tcp-1234")
        time.sleep(5)
        body = lab.fetch()
        assert body is not None, "kept: still there after the window"
        screen = tmux.wait_for("192.168.1.30:1234 → 10.0.2.50:80")
        assert "ok" in screen
    finally:
        tmux.kill()


def test_terminal_death_rolls_back(lab: Lab) -> None:
    for how in ("hangup", "kill"):
        tmux = Tmux()
        try:
            start(lab, tmux, window=5)
            wizard_to_countdown(lab, tmux)
            assert "natbox:tcp-1234" in lab.save()
            pid = int(tmux.run("display-message", "-p", "-t", "nb", "#{pane_pid}").strip())
            if how == "hangup":
                tmux.kill()  # the terminal goes away: SIGHUP to natbox
            else:
                os.kill(pid, 9)  # the pane's process: natbox itself, started by this test
            deadline = time.monotonic() + 6
            while "natbox:" in lab.save() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "natbox:" not in lab.save(), f"rolled back after {how}"
            assert lab.fetch(timeout=1) is None
        finally:
            tmux.kill()


def test_dashboard_and_viewer_in_tmux_80x24(lab: Lab) -> None:
    out = lab.natbox("add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--name", "web", "--yes")
    assert out.returncode == 0, out.stderr
    assert lab.fetch() is not None
    tmux = Tmux()
    command = (
        f"ip netns exec {lab.nat} env XTABLES_LOCKFILE={lab.lockfile} {sys.executable} -m natbox"
    )
    try:
        tmux.run("new-session", "-d", "-s", "nb", "-x", "80", "-y", "24", command)
        screen = tmux.wait_for("192.168.1.30:1234 → 10.0.2.50:80")
        assert "web" in screen and "restore (nft)" in screen and "fwd on" in screen
        assert "policy ACCEPT" in screen and "NATBOX-PREROUTING" in screen
        assert len(screen.splitlines()) <= 24 and all(
            len(line) <= 80 for line in screen.splitlines()
        )
        tmux.run("send-keys", "-t", "nb", "c")
        screen = tmux.wait_for("of ")
        # both tuples at 80 columns: listen (.30 after the client's /24), SNAT source, backend
        screen = tmux.wait_for("=> 10.0.2.40 → .50:80")
        assert "→ .30:1234 =>" in screen and "TIMEW" in screen
        tmux.run("send-keys", "-t", "nb", "Escape")
        tmux.wait_for("LISTEN → BACKEND")
        tmux.run("send-keys", "-t", "nb", "q")
        deadline = time.monotonic() + 10
        while "nb" in tmux.run("list-sessions") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "nb" not in tmux.run("list-sessions"), "q quits"
    finally:
        tmux.kill()
