"""Provides `natbox demo`: the seed's lab in namespaces, the seed's forward, traffic, and the dashboard
running inside the nat box's namespace, so nothing on the host changes.

`q`, a closed terminal (SIGHUP: tmux kill-session, a dropped SSH) and SIGTERM all end the same way:
the dashboard stops, the namespaces and the lab's temp directory go. `natbox demo --down` cleans up
after a demo that was killed outright (SIGKILL), temp directory included.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

from natbox.errors import NatboxError
from natbox.lab import DEMO_FOREIGN, NAT_DMZ_IP, NAT_LAN_IP, SERVER_IP, Lab, sh, teardown
from natbox.txn import require_root

TAG = "natbox-demo"


def _marker() -> Path:
    """Where a running demo notes its lab's temp directory (for --down after a SIGKILL)."""
    return Path(tempfile.gettempdir()) / f"{TAG}.workdir"


class _Stopped(Exception):
    """SIGHUP or SIGTERM arrived: tear the demo down as `q` does."""


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stopped(signal.Signals(signum).name)


def down() -> list[str]:
    """Remove a demo left behind by a crash: its namespaces and its temp directory."""
    require_root()
    gone = teardown(TAG)
    marker = _marker()
    try:
        workdir = Path(marker.read_text().strip())
    except OSError:
        return gone
    if workdir.name.startswith("nbt-lab-") and workdir.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(workdir, ignore_errors=True)
        gone.append(str(workdir))
    marker.unlink(missing_ok=True)
    return gone


def run(flows: int = 0, backend_choice: str | None = None) -> int:
    """Build the lab, forward the seed's port, start traffic, open the dashboard; tear down on quit,
    on SIGHUP and on SIGTERM."""
    require_root()
    if f"{TAG}-n" in sh("ip", "netns", "list", check=False).stdout.split():
        raise NatboxError("a natbox demo is already running", "quit it, or run natbox demo --down")
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGHUP, signal.SIGTERM)}
    print(
        "building the seed's lab: client 192.168.1.20 — [nat box] — server 10.0.2.50 …", flush=True
    )
    lab = Lab(TAG)
    _marker().write_text(str(lab.workdir))
    tui: subprocess.Popen[bytes] | None = None
    try:
        lab.up()
        lab.nat_exec("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
        lab.nat_exec("iptables-restore", "--noflush", stdin=DEMO_FOREIGN)
        backend = ["--backend", backend_choice] if backend_choice else []
        out = lab.natbox(
            *backend,
            "add",
            f"{NAT_LAN_IP}:1234",
            f"{SERVER_IP}:80",
            "--proto",
            "both",
            "--snat",
            NAT_DMZ_IP,
            "--name",
            "web",
            "--yes",
        )
        if out.returncode != 0:
            raise NatboxError(
                f"the demo forward failed: {out.stderr.strip()}", "natbox demo --down, then retry"
            )
        lab.traffic()
        if flows:
            print(f"creating {flows} flows …", flush=True)
            lab.flood(flows, 1235, 4)
        argv = ["ip", "netns", "exec", lab.nat, sys.executable, "-m", "natbox", *backend]
        tui = subprocess.Popen(argv, env=lab.env)
        return tui.wait()
    except _Stopped:
        return 0
    finally:
        # Nothing may interrupt the teardown itself.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        if tui is not None and tui.poll() is None:
            tui.terminate()  # the dashboard we started, by its pid
            try:
                tui.wait(timeout=5)
            except subprocess.TimeoutExpired:
                tui.kill()
                tui.wait()
        lab.close()
        teardown(TAG)  # anything still inside the namespaces
        _marker().unlink(missing_ok=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
