"""Benchmark: natbox check / doctor / add on a 10,000-rule kube-like host, against iptables-nft-save.

Builds the lab (client, nat box, server in namespaces named with NATBOX_LAB_PREFIX, deleted
afterwards), loads a kube-proxy node with ~10,000 rules (natbox/hostshapes.py) into the nat box, and
times, over several runs (medians), each as a whole command inside the nat box's namespace:
  - reference: one `iptables-nft-save` of that host (all tables)
  - natbox check SEED, natbox doctor (one forward), natbox add --yes + remove --yes
  - in-process: Engine.preflight() and Engine.doctor() (what the TUI pays)
and prints each one's ratio to the reference against the goal of 4x.
Run as root: python -m benchmarks.check_10k [--services N] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from natbox import hostshapes
from natbox.lab import NAT_LAN_IP, SERVER_IP, Lab

GOAL = 4.0
SEED = [f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80"]
IN_PROCESS = """
import statistics, sys, time
from natbox.engine import Engine
from natbox.model import Forward
fwd = Forward.from_text(sys.argv[1], sys.argv[2], snat="10.0.2.40", name="probe")
runs = int(sys.argv[3])
def med(f):
    out = []
    for _ in range(runs):
        t = time.perf_counter(); f(); out.append(time.perf_counter() - t)
    return statistics.median(out)
print(med(lambda: Engine().preflight(fwd)), med(lambda: Engine().doctor()))
"""


def timed(lab: Lab, *argv: str, ok: tuple[int, ...] = (0,)) -> float:
    start = time.perf_counter()
    proc = lab.exec(lab.nat, *argv, check=False)
    took = time.perf_counter() - start
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1250, help="~8 rules each (1250: 10k)")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmark needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    lab = Lab().up()
    try:
        rules = hostshapes.kube_node(args.services, nodeports={1: 30001})
        lab.nat_exec("iptables-nft-restore", stdin=rules)
        count = rules.count("\n-A ")
        nb = [sys.executable, "-m", "natbox"]
        save, check, doctor, add, remove = [], [], [], [], []
        for _ in range(args.runs):
            save.append(timed(lab, "iptables-nft-save"))
            check.append(timed(lab, *nb, "check", *SEED, ok=(0, 1)))
        timed(lab, *nb, "add", *SEED, "--yes")
        assert lab.fetch() is not None, "the forward works on the kube node"
        for _ in range(args.runs):
            doctor.append(timed(lab, *nb, "doctor", ok=(0, 1)))
        timed(lab, *nb, "remove", "tcp-1234", "--yes")
        for _ in range(args.runs):
            add.append(timed(lab, *nb, "add", *SEED, "--yes"))
            remove.append(timed(lab, *nb, "remove", "tcp-1234", "--yes"))
        timed(lab, *nb, "add", *SEED, "--yes")
        out = lab.exec(lab.nat, sys.executable, "-c", IN_PROCESS, *SEED, str(args.runs)).stdout
        pre_engine, doc_engine = (float(x) for x in out.split())
        py = statistics.median(
            timed(lab, sys.executable, "-c", "import natbox.cli") for _ in range(5)
        )
        ref = statistics.median(save)
        print(
            f"kube-like host: {count} rules ({args.services} services), {args.runs} runs, medians"
        )
        print(f"{'what':<34}{'time':>9}{'ratio':>8}   goal {GOAL:g}x iptables-nft-save")
        rows = [
            ("iptables-nft-save (reference)", ref),
            ("natbox check (whole CLI)", statistics.median(check)),
            ("natbox doctor (whole CLI)", statistics.median(doctor)),
            ("natbox add --yes (whole CLI)", statistics.median(add)),
            ("natbox remove --yes (whole CLI)", statistics.median(remove)),
            ("Engine.preflight (in process)", pre_engine),
            ("Engine.doctor (in process)", doc_engine),
        ]
        for what, took in rows:
            mark = (
                "" if what.startswith("iptables") else ("  ok" if took / ref <= GOAL else "  over")
            )
            print(f"{what:<34}{took * 1000:>6.0f} ms{took / ref:>7.1f}x{mark}")
        print(f"(python start-up + import natbox.cli alone: {py * 1000:.0f} ms)")
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
