"""The real `natbox` in a real terminal: tmux at 80x24, inside the lab's nat namespace."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from natbox.lab import NAT_LAN_IP, SERVER_IP, Lab

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)"
)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """The seed's lab under this file's own prefix (nbt-ui-)."""
    lab = Lab(f"nbt-ui-{os.getpid()}-{secrets.token_hex(3)}").up()
    try:
        yield lab
    finally:
        lab.close()


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
        """End the server and remove its socket file (tmux leaves it behind)."""
        self.run("kill-server")
        tmpdir = os.environ.get("TMUX_TMPDIR", "/tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(tmpdir, f"tmux-{os.getuid()}", self.socket))


def start(lab: Lab, tmux: Tmux, window: float = 30, extra_env: str = "") -> None:
    env = f"XTABLES_LOCKFILE={lab.lockfile} NATBOX_STATE_DIR={lab.state_dir} {extra_env}"
    command = (
        f"ip netns exec {lab.nat} env {env} {sys.executable} -m natbox --confirm-window {window:g}"
    )
    tmux.run("new-session", "-d", "-s", "nb", "-x", "80", "-y", "24", command)


def wizard_to_countdown(lab: Lab, tmux: Tmux) -> None:
    """Add the seed's forward through the wizard, as a person types it, up to the countdown."""
    tmux.wait_for("no natbox forwards yet")
    tmux.run("send-keys", "-t", "nb", "a")
    tmux.wait_for("Client-facing address")
    # The prefilled address is selected: typing replaces it.
    tmux.type("192.168.1.30", "Tab", "1234", "Enter")
    tmux.wait_for("Backend ip:port")
    tmux.run("send-keys", "-t", "nb", "10.0.2.50:80")
    tmux.wait_for("from 10.0.2.40")
    tmux.run("send-keys", "-t", "nb", "Enter")
    screen = tmux.wait_for("Name")
    assert "tcp-1234" in screen
    tmux.run("send-keys", "-t", "nb", "Enter")
    screen = tmux.wait_for("Enter applies")
    assert "192.168.1.30:1234 → 10.0.2.50:80" in screen
    assert "⏎ Apply" in screen, "the footer says what Enter does on the last step"
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
        tmux.wait_for("192.168.1.30:1234 → 10.0.2.50:80")
        screen = tmux.wait_for("  ok  ")  # health fills in after the rules are on screen
        assert "web" in screen and "backend restore (nft)" in screen and "ip_forward on" in screen
        # 80 columns: name, listen → backend, health and flows always; the target of rules seen.
        header = next(line for line in screen.splitlines() if "LISTEN → BACKEND" in line)
        assert all(col in header for col in ("NAME", "HEALTH", "FLOWS")), header
        row = next(line for line in screen.splitlines() if "→ 10.0.2.50:80" in line)
        assert row.lstrip().startswith("▶") and "ok" in row, row
        tmux.wait_for("DNAT → 10.0.2.50:80")
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
        tmux.type("Tab", "Down")  # into the rules: the detail line has the full rule
        tmux.wait_for("iptables -t nat -A")
        tmux.run("send-keys", "-t", "nb", "q")
        deadline = time.monotonic() + 10
        while "nb" in tmux.run("list-sessions") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "nb" not in tmux.run("list-sessions"), "q quits"
    finally:
        tmux.kill()


def test_whole_wizard_in_one_burst_without_colour(lab: Lab) -> None:
    """Keys sent in one burst (a laggy link, a paste) land in the right fields; NO_COLOR shows state
    by glyphs: the radio set, the check boxes and the placeholders."""
    tmux = Tmux()
    try:
        start(lab, tmux, window=30, extra_env="NO_COLOR=1")
        tmux.wait_for("no natbox forwards yet")
        tmux.run("send-keys", "-t", "nb", "a")
        screen = tmux.wait_for("Client-facing address")
        assert "(•) tcp" in screen and "( ) udp" in screen and "( ) both" in screen, screen
        tmux.run("send-keys", "-t", "nb", "Escape")
        tmux.wait_for("no natbox forwards yet")
        tmux.run(
            "send-keys",
            "-t",
            "nb",
            "a",
            "192.168.1.30",
            "Tab",
            "1234",
            "Enter",
            "10.0.2.50:80",
            "Enter",
        )
        screen = tmux.wait_for("Allowed clients")
        assert "tcp-1234" in screen
        assert "[x] MSS clamp" in screen or "[ ] MSS clamp" in screen, screen
        assert "[ ] Also for this box" in screen and "e.g. 192.168.1.0/24" in screen
        tmux.run("send-keys", "-t", "nb", "Escape", "Escape", "Escape")
        tmux.wait_for("no natbox forwards yet")
        # Now the whole wizard in one go, keep included.
        tmux.run(
            "send-keys",
            "-t",
            "nb",
            "a",
            "192.168.1.30",
            "Tab",
            "1234",
            "Enter",
            "10.0.2.50:80",
            "Enter",
            "Enter",
            "Enter",
            "y",
        )
        tmux.wait_for("kept tcp-1234", timeout=20)
        assert lab.fetch() is not None
        assert "natbox:tcp-1234" in lab.save()
    finally:
        tmux.kill()


def test_window_running_out_and_the_marked_forward(lab: Lab) -> None:
    """The watchdog rolls back an unanswered forward and the TUI says so; after keeping a forward,
    the mark is on it and d offers to remove exactly that one, named with listen → backend."""
    out = lab.natbox("add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--name", "web", "--yes")
    assert out.returncode == 0, out.stderr
    tmux = Tmux()
    try:
        start(lab, tmux, window=6)
        tmux.wait_for("web")
        tmux.type("a")
        tmux.wait_for("Client-facing address")
        tmux.type("Tab", "8082", "Enter", "10.0.2.50:80")
        tmux.wait_for("from 10.0.2.40")
        tmux.type("Enter", "Enter")
        tmux.wait_for("Enter applies")
        tmux.type("Enter")
        tmux.wait_for("Keep these rules?")
        screen = tmux.wait_for("tcp-8082 rolled back:", timeout=15)  # the toast (wrapped)
        assert "no change waits" not in screen
        assert "natbox:tcp-8082" not in lab.save()
        tmux.type("4")
        tmux.wait_for("tcp-8082 rolled back: not confirmed within 6 s")  # the History tab
        tmux.type("1", "a")
        tmux.wait_for("Client-facing address")
        tmux.type("Tab", "8082", "Enter", "10.0.2.50:80")
        tmux.wait_for("from 10.0.2.40")
        tmux.type("Enter", "Enter")
        tmux.wait_for("Enter applies")
        tmux.type("Enter")
        tmux.wait_for("Keep these rules?")
        tmux.type("y")
        tmux.wait_for("kept tcp-8082")
        screen = tmux.wait_for("▶  tcp-8082")
        tmux.type("Tab", "Down", "Down", "d")  # the rules cursor moves; the mark does not
        screen = tmux.wait_for("No (n)")
        assert "Remove forward tcp-8082 (192.168.1.30:8082 → 10.0.2.50:80)?" in screen, screen
        tmux.type("n")
    finally:
        tmux.kill()


def _demo_left() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith("natbox-demo-")]


@pytest.mark.parametrize("how", ["hangup", "terminate"])
def test_demo_ends_with_its_terminal(how: str, tmp_path: object) -> None:
    """`natbox demo` killed with its terminal (tmux kill-session, a dropped SSH) or by SIGTERM tears
    down its namespaces and temp directory, as `q` does."""
    if _demo_left():
        pytest.skip("another natbox demo is running on this machine")
    import tempfile
    from pathlib import Path

    marker = Path(tempfile.gettempdir()) / "natbox-demo.workdir"
    tmux = Tmux()
    env = f"XTABLES_LOCKFILE=/tmp/nbt-ui-xtables.lock NATBOX_STATE_DIR={tmp_path}"
    try:
        tmux.run(
            "new-session",
            "-d",
            "-s",
            "nb",
            "-x",
            "80",
            "-y",
            "24",
            f"env {env} {sys.executable} -m natbox demo",
        )
        tmux.wait_for("192.168.1.30:1234 → 10.0.2.50:80", timeout=60)
        workdir = Path(marker.read_text().strip())
        assert workdir.is_dir() and _demo_left()
        pid = int(tmux.run("display-message", "-p", "-t", "nb", "#{pane_pid}").strip())
        if how == "hangup":
            tmux.kill()  # the terminal goes: SIGHUP
        else:
            os.kill(pid, 15)  # the demo process this test started
        deadline = time.monotonic() + 20
        while (_demo_left() or workdir.exists()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _demo_left(), f"namespaces left after {how}"
        assert not workdir.exists() and not marker.exists(), "the temp directory went too"
    finally:
        tmux.kill()
        if _demo_left():
            subprocess.run([sys.executable, "-m", "natbox", "demo", "--down"], check=False)


def test_edit_and_disable_enable_in_a_real_terminal(lab: Lab) -> None:
    """#14 item 12 with the real engine: E moves web to another backend (a client reaches it
    afterwards), x takes web out (the client is refused, the row stays `off`) and puts it back."""
    token = f"new-{secrets.token_hex(4)}"
    lab.add_backend("10.0.2.51", token)
    out = lab.natbox("add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--name", "web", "--yes")
    assert out.returncode == 0, out.stderr
    before = lab.fetch()
    assert before is not None and token not in before
    tmux = Tmux()
    try:
        start(lab, tmux)
        tmux.wait_for("▶  web")
        tmux.type("E")
        tmux.wait_for("edit web")
        tmux.type("Enter")  # listen as it is
        tmux.wait_for("Backend ip:port")
        tmux.type("C-u", "10.0.2.51:80", "Enter")
        tmux.wait_for("Name")
        tmux.type("Enter")
        tmux.wait_for("replaces the old rules", timeout=30)
        tmux.type("Enter")
        tmux.wait_for("is live. Keep", timeout=30)
        tmux.type("y")
        tmux.wait_for("kept web", timeout=30)
        assert token in (lab.fetch() or ""), "the client reaches the new backend"
        saved = lab.save()
        assert saved.count("natbox:web") >= 4 and "10.0.2.50:80" not in saved
        tmux.wait_for("10.0.2.51:80")
        tmux.type("x")
        screen = tmux.wait_for("No (n)", timeout=30)
        assert "Disable web (192.168.1.30:1234 → 10.0.2.51:80)?" in screen, screen
        tmux.type("y")
        tmux.wait_for("disabled web", timeout=30)
        assert "natbox:web" not in lab.save()
        assert lab.fetch(timeout=1.0) is None, "disabled: the client gets nowhere"
        screen = tmux.wait_for(" off ")
        assert "▶  web" in screen, "the disabled row stays, marked"
        tmux.type("x")
        screen = tmux.wait_for("No (n)", timeout=30)
        assert "Enable web (192.168.1.30:1234 → 10.0.2.51:80)?" in screen, screen
        tmux.type("y")
        tmux.wait_for("is live. Keep", timeout=30)
        tmux.type("y")
        tmux.wait_for("kept web", timeout=30)
        assert token in (lab.fetch() or ""), "enabled again: the new backend answers"
    finally:
        tmux.kill()
