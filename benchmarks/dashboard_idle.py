"""The dashboard idling: CPU share of one core over 30 s with no input and no traffic, with 1 and with
1,000 forwards (issue #18's goal: <= 2 % and <= 5 %), read from /proc/PID/stat (utime + stime, and
the children it waited for). The app runs in a real terminal (a private tmux server) over the
SampleEngine, scaled; the refreshes skip the re-read and re-render while the fingerprint (the ruleset
generation and the conntrack count) stays the same.

    .venv/bin/python -m benchmarks.dashboard_idle [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

APP = """
import sys
from natbox.sample import SampleEngine, scaled_forwards
from tui.app import make_app
n = int(sys.argv[1])
forwards = scaled_forwards(n) if n > 1 else None
engine = SampleEngine(forwards=forwards) if forwards else SampleEngine(forwards=scaled_forwards(1))
make_app(engine).run()
"""


def cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15])  # utime stime cutime cstime


def measure(forwards: int, seconds: float) -> tuple[float, float]:
    """(seconds until the app was up and idle, CPU % of one core while idle)."""
    sock = f"nbt-ui-bench-{os.getpid()}-{forwards}-{time.monotonic_ns()}"
    tmux = ["tmux", "-L", sock]
    cmd = f"{sys.executable} -c '{APP}' {forwards}"
    subprocess.run([*tmux, "new-session", "-d", "-s", "b", "-x", "80", "-y", "24", cmd], check=True)
    try:
        pane = subprocess.run(
            [*tmux, "display-message", "-p", "-t", "b", "#{pane_pid}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        pid = int(pane)
        start = time.monotonic()
        # Up and settled: the first reads and renders are done when the CPU stops moving for 2 s.
        last, still = cpu_ticks(pid), 0.0
        while still < 2.0 and time.monotonic() - start < 120:
            time.sleep(0.5)
            now = cpu_ticks(pid)
            still = still + 0.5 if now - last <= 2 else 0.0
            last = now
        ready = time.monotonic() - start
        before, t0 = cpu_ticks(pid), time.monotonic()
        time.sleep(seconds)
        used = (cpu_ticks(pid) - before) / os.sysconf("SC_CLK_TCK")
        return ready, 100 * used / (time.monotonic() - t0)
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
        path = os.path.join(os.environ.get("TMUX_TMPDIR", "/tmp"), f"tmux-{os.getuid()}", sock)
        if os.path.exists(path):
            os.unlink(path)  # tmux leaves its socket file behind


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    print(f"{'forwards':>9} {'settled after':>14} {'idle CPU':>9} {'goal':>6}")
    for n, goal in ((1, 2.0), (1000, 5.0)):
        ready, share = measure(n, args.seconds)
        print(f"{n:>9} {ready:>12.1f} s {share:>8.2f}% {goal:>5.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
