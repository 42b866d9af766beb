"""Benchmark: `natbox conntrack` (text, --json, --json-lines) against `conntrack -L`, 100,000 flows.

Builds the seed lab in its own namespaces (prefix from NATBOX_LAB_PREFIX, default nbt-; removed
afterwards) and, on the nat box: a kube-proxy-like ruleset (as benchmarks.lived_in: 2,000 services,
10,000 rules), natbox's UDP forward 192.168.1.30:1234-1237 -> 10.0.2.50:9-12 and 100,000 UDP flows
through it. Then every command below runs in the nat namespace, output to /dev/null, the commands
taking turns run after run (so a change in the machine's load hits them alike); medians:

  natbox conntrack [--json | --json-lines]            the reader natbox picks (ctnetlink)
  the same with NATBOX_CONNTRACK_READER=proc           /proc/net/nf_conntrack, parsed (the old way)
  conntrack -L, conntrack -L -o extended, -o xml       the reference (-o xml: its structured output)
  python -c pass, python -c 'import natbox.cli'        start-up, for context

Each natbox row gives its ratio to `conntrack -L` (the goal: <= 1.5) and the JSON rows also to
`conntrack -L -o xml`. Before the timing, the outputs of both readers are compared (timeouts
aside): the numbers are for the same lines.

With --baseline DIR (a checkout of an older natbox, e.g. `git archive COMMIT | tar -x -C DIR`),
its `natbox conntrack` rows are timed in the same turns, for a before/after in one run.

Run as root: python -m benchmarks.conntrack_cli [--flows N] [--runs R] [--services N] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

from benchmarks.lived_in import kube_rules
from natbox.lab import Lab

_TIMEOUT = re.compile(r'"timeout":\d+|^(\w+ +\S+ +)\d+', re.MULTILINE)


def run_once(lab: Lab, argv: list[str], env: dict[str, str] | None = None) -> float:
    # A baseline runs from its own directory: Python puts the working directory first on the path.
    cwd = (env or {}).get("PYTHONPATH")
    start = time.perf_counter()
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.nat, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**lab.env, **(env or {})},
        cwd=cwd,
        check=False,
    )
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return took


def output(lab: Lab, argv: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.nat, *argv],
        capture_output=True,
        text=True,
        env={**lab.env, **env},
        check=True,
    )
    return _TIMEOUT.sub(lambda m: f"{m.group(1) or ''}T", proc.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--services", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline", metavar="DIR", help="an older natbox checkout to time too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmark needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    lab = Lab()
    lab.env["NATBOX_CONFIG_DIR"] = str(lab.workdir / "config")
    # As installed: Python's bytecode cached (a session may run with it off; each run would then
    # compile natbox again, ~0.1 s that no user pays).
    lab.env.pop("PYTHONDONTWRITEBYTECODE", None)
    lab.up()
    try:
        if args.services:
            lab.nat_exec("iptables-nft-restore", "--noflush", stdin=kube_rules(args.services))
        out = lab.natbox(
            "add", "192.168.1.30:1234-1237", "10.0.2.50:9-12", "--proto", "udp", "--yes", "--force"
        )
        assert out.returncode == 0, out.stderr
        lab.nat_exec("sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=3600")
        sent = lab.flood(args.flows, 1234, 4)
        lab.nat_exec("sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=3600")
        rules = lab.nat_exec("iptables-nft-save").stdout.count("\n-A ")
        count = int(lab.nat_exec("cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout)
        py = sys.executable
        natbox = [py, "-m", "natbox", "conntrack"]
        proc = {"NATBOX_CONNTRACK_READER": "proc"}
        for fmt in ([], ["--json"], ["--json-lines"]):
            a = output(lab, natbox + fmt, {})
            b = output(lab, natbox + fmt, proc)
            same = "same" if a == b else "DIFFERENT"
            print(
                f"natbox conntrack {' '.join(fmt) or '(text)'}: ctnetlink and /proc outputs {same}"
            )
        cases: dict[str, tuple[list[str], dict[str, str] | None]] = {
            "conntrack -L": (["conntrack", "-L"], None),
            "conntrack -L -o extended": (["conntrack", "-L", "-o", "extended"], None),
            "conntrack -L -o xml": (["conntrack", "-L", "-o", "xml"], None),
            "natbox conntrack": (natbox, None),
            "natbox conntrack --json": ([*natbox, "--json"], None),
            "natbox conntrack --json-lines": ([*natbox, "--json-lines"], None),
            "natbox conntrack (/proc reader)": (natbox, proc),
            "natbox conntrack --json (/proc reader)": ([*natbox, "--json"], proc),
            "natbox conntrack --json-lines (/proc reader)": ([*natbox, "--json-lines"], proc),
            "python -c pass": ([py, "-c", "pass"], None),
            "python -c 'import natbox.cli'": ([py, "-c", "import natbox.cli"], None),
        }
        if args.baseline:
            base = {"PYTHONPATH": os.path.abspath(args.baseline)}
            for fmt in ([], ["--json"], ["--json-lines"]):
                name = f"baseline natbox conntrack {' '.join(fmt)}".rstrip()
                cases[name] = ([*natbox, *fmt], base)
        took: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, (argv, env) in cases.items():
                took[name].append(run_once(lab, argv, env))
        med = {name: statistics.median(t) * 1000 for name, t in took.items()}
        print(
            f"nat box: {rules} rules, {count} flows ({sent} sent); load {os.getloadavg()[0]:.2f} "
            f"on {os.cpu_count()} CPUs at the end; {args.runs} runs each, interleaved, medians"
        )
        ref, xml = med["conntrack -L"], med["conntrack -L -o xml"]
        for name, ms in med.items():
            line = f"{name:<46}{ms:>8.0f} ms"
            if "natbox conntrack" in name:
                ratio = ms / ref
                line += f"  {ratio:5.2f}x conntrack -L ({'ok' if ratio <= 1.5 else 'OVER'} <= 1.5)"
                if "--json" in name:
                    line += f", {ms / xml:4.2f}x -o xml"
            print(line)
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
