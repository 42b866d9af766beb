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

    def kill(self) -> None:
        self.run("kill-server")


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
        screen = tmux.wait_for("=> 10.0.2.50:80")
        assert "TIME_WAIT" in screen
        tmux.run("send-keys", "-t", "nb", "Escape")
        tmux.wait_for("LISTEN → BACKEND")
        tmux.run("send-keys", "-t", "nb", "q")
        deadline = time.monotonic() + 10
        while "nb" in tmux.run("list-sessions") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "nb" not in tmux.run("list-sessions"), "q quits"
    finally:
        tmux.kill()
