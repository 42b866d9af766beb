"""Benchmark: natbox add + remove on a box that already holds 10,000 foreign rules.

Builds its own network namespace (deleted afterwards), loads N foreign rules (half nat, half filter)
into the flavour under test, then times, over several runs (median reported):
  - reference: iptables-<flavour>-restore --noflush of the same forward's rules (what a bare script does)
  - natbox add --yes / natbox remove --yes (whole CLI commands, with read-back verification)
and prints natbox's ratio to the reference. Run as root: python -m benchmarks.apply_10k [--rules N] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from natbox.model import Forward, Ruleset
from natbox.plan import build_plan
from natbox.txn import apply_lines, inverse_lines


def sh(*argv: str, stdin: str | None = None, env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True, env=env)


def foreign_rules(n: int) -> str:
    half = n // 2
    nat = "".join(
        f"-A PREROUTING -d 172.16.{i // 250}.{i % 250}/32 -p tcp -m tcp --dport 8080 "
        f"-j DNAT --to-destination 10.200.{i // 250}.{i % 250}:80\n"
        for i in range(half)
    )
    flt = "".join(
        f'-A FORWARD -s 10.100.{i // 250}.{i % 250}/32 -m comment --comment "hand rule {i}" -j ACCEPT\n'
        for i in range(n - half)
    )
    return f"*nat\n{nat}COMMIT\n*filter\n{flt}COMMIT\n"


def timed(
    argv: list[str],
    env: dict[str, str],
    stdin: str | None = None,
    engine: list[float] | None = None,
) -> float:
    """Wall time of one command; natbox's own report of its engine time goes to `engine`."""
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, text=True, capture_output=True, env=env, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    if engine is not None:
        engine.append(float(proc.stdout.rsplit("(", 1)[1].split(" ms")[0]) / 1000)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmark needs root (it builds a network namespace)", file=sys.stderr)
        return 2
    ns = f"nbt-bench-{os.getpid()}"
    env = {**os.environ, "XTABLES_LOCKFILE": os.path.join(tempfile.mkdtemp(), "xtables.lock")}
    fwd = Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", name="bench", snat="10.0.2.40")
    plan = build_plan(fwd)
    plan_text = plan.restore_text()
    # The reference's own undo: the same lines inverted, per table (natbox's helper, no natbox run).
    fresh = apply_lines(Ruleset(), plan)
    undo = "".join(
        f"*{t}\n" + "".join(x + "\n" for x in inverse_lines(lines)) + "COMMIT\n"
        for t, lines in fresh.items()
    )
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        print(f"{args.rules} foreign rules, {args.runs} runs each, medians")
        print("natbox = whole CLI command; engine = in-process apply/remove (what the TUI pays)")
        print(
            f"{'backend':<16}{'reference':>10}{'natbox add':>12}{'ratio':>7}{'engine':>8}"
            f"{'natbox remove':>15}{'engine':>8}"
        )
        for backend, flavour in (("restore", "nft"), ("iptc", "legacy")):
            pre = ["ip", "netns", "exec", ns]
            sh(*pre, f"iptables-{flavour}-restore", stdin=foreign_rules(args.rules), env=env)
            ref: list[float] = []
            add: list[float] = []
            rem: list[float] = []
            add_engine: list[float] = []
            rem_engine: list[float] = []
            for _ in range(args.runs):
                ref.append(
                    timed(
                        [*pre, f"iptables-{flavour}-restore", "--noflush", "-w", "5"],
                        env,
                        plan_text,
                    )
                )
                timed([*pre, f"iptables-{flavour}-restore", "--noflush", "-w", "5"], env, undo)
                nb = [*pre, sys.executable, "-m", "natbox", "--backend", backend]
                add_args = ["add", "192.168.1.30:1234", "10.0.2.50:80", "--snat", "10.0.2.40"]
                add.append(
                    timed(
                        [*nb, *add_args, "--name", "bench", "--yes", "--force"],
                        env,
                        engine=add_engine,
                    )
                )
                rem.append(timed([*nb, "remove", "bench", "--yes"], env, engine=rem_engine))
            r, a, d, ae, de = (
                statistics.median(x) for x in (ref, add, rem, add_engine, rem_engine)
            )
            print(
                f"{backend + ' (' + flavour + ')':<16}{r * 1000:>7.0f} ms{a * 1000:>9.0f} ms"
                f"{a / r:>6.1f}x{ae * 1000:>5.0f} ms{d * 1000:>12.0f} ms{de * 1000:>5.0f} ms"
            )
            sh(
                *pre,
                f"iptables-{flavour}-restore",
                stdin="*nat\nCOMMIT\n*filter\nCOMMIT\n",
                env=env,
            )
        py = statistics.median(
            timed([sys.executable, "-c", "import natbox.cli"], env) for _ in range(5)
        )
        print(f"(python start-up + import natbox.cli alone: {py * 1000:.0f} ms)")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
