"""Benchmark: read+parse of a 100k-flow conntrack table against `conntrack -L > /dev/null`, and kill.

Builds the seed lab (its own namespaces, removed afterwards), forwards 192.168.1.30:1234-1237 to the server,
and sends one UDP datagram per (client address, source port) through it from the client namespace
(raw socket, so no bind per port), with the UDP timeout raised so the flows stay. Then, inside the
nat namespace, in the same run: median of several runs of natbox's read_flows() (read + parse, every
flow a Flow object) and of `conntrack -L > /dev/null`, and their ratio; then the time to kill one flow
by tuple (natbox's ctnetlink delete) against `conntrack -D` for the same flow.

Run as root: python -m benchmarks.conntrack_100k [--flows N] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import sys

from natbox.lab import Lab

MEASURE = r"""
import statistics, subprocess, sys, time
from natbox.conntrack import read_flows, kill
runs = int(sys.argv[1])
ours, ref = [], []
for _ in range(runs):
    t = time.perf_counter(); table = read_flows(); ours.append(time.perf_counter() - t)
    t = time.perf_counter()
    subprocess.run(["conntrack", "-L"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    ref.append(time.perf_counter() - t)
flows = [f for f in table.flows if f.orig.dst == "192.168.1.30"]
kills, dels = [], []
for i in range(runs):
    f = flows[2 * i]
    t = time.perf_counter(); assert kill([f]) == 1; kills.append(time.perf_counter() - t)
    g = flows[2 * i + 1]
    t = time.perf_counter()
    subprocess.run(["conntrack", "-D", "-p", "udp", "-s", g.orig.src, "--sport", str(g.orig.sport),
                    "-d", g.orig.dst, "--dport", str(g.orig.dport)], capture_output=True, check=True)
    dels.append(time.perf_counter() - t)
m = statistics.median
print(f"flows in table: {len(table.flows)} (skipped {table.skipped})")
print(f"read+parse  natbox {m(ours) * 1000:7.0f} ms   conntrack -L {m(ref) * 1000:7.0f} ms   ratio {m(ours) / m(ref):.2f}  (goal <= 1.2)")
print(f"kill one    natbox {m(kills) * 1000:7.2f} ms   conntrack -D {m(dels) * 1000:7.2f} ms   ratio {m(kills) / m(dels):.3f}  (goal <= 20 ms)")
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmark needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    lab = Lab().up()
    try:
        # One SNAT address has ~64k source ports per backend ip:port, so spread over four ports.
        out = lab.natbox(
            "add", "192.168.1.30:1234-1237", "10.0.2.50:9-12", "--proto", "udp", "--yes"
        )
        assert out.returncode == 0, out.stderr
        sent = lab.flood(args.flows, 1234, 4)
        print(f"sent {sent} datagrams from the client namespace, {args.runs} runs, medians")
        print(lab.exec(lab.nat, sys.executable, "-c", MEASURE, str(args.runs)).stdout, end="")
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
