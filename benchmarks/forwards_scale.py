"""Benchmark: natbox's commands on boxes with 10, 100 and 1,000 natbox forwards (issue #18).

Builds the seed lab in its own namespaces (prefix nbt-sp-, removed afterwards), writes N forwards'
rules at once with `iptables-nft-restore --noflush` from natbox's own plan text (as natbox would have
written them, one forward at a time, only much faster), then times, medians over several runs, every
command as a user runs it (a whole `python -m natbox` process inside the nat namespace):

  add (a new forward, then) remove, list, check (a new forward), doctor (all forwards)

against one `iptables-nft-save` of that box in the same run, and prints the ratio against the goal
(each command <= 4x one save). The engine part of add/remove (natbox's own report) is shown too.
With --doctor-backends the doctor case of #18 is measured as well: 1,000 forwards to 100 backends,
10 of them unreachable.

Run as root: python -m benchmarks.forwards_scale [--sizes 10,100,1000] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from benchmarks.boxes import forwards, restore_text
from natbox.lab import Lab

GOAL = 4.0


def run(lab: Lab, *argv: str, ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    """Wall time and stdout of one command in the nat namespace."""
    start = time.perf_counter()
    proc = lab.exec(lab.nat, *argv, check=False)
    took = time.perf_counter() - start
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return took, proc.stdout


def engine_ms(out: str) -> float:
    """natbox's own `(N ms)` report at the end of add/remove."""
    return float(out.rsplit("(", 1)[1].split(" ms")[0]) / 1000


def measure(lab: Lab, n: int, runs: int) -> dict[str, float]:
    lab.nat_exec("iptables-nft-restore", stdin="*nat\nCOMMIT\n*filter\nCOMMIT\n")
    lab.nat_exec("iptables-nft-restore", "--noflush", stdin=restore_text(forwards(n)))
    nb = [sys.executable, "-m", "natbox", "--backend", "restore"]
    new = ["192.168.1.30:1234", "10.0.2.50:80", "--snat", "10.0.2.40"]
    times: dict[str, list[float]] = {
        k: [] for k in ("save", "add", "add engine", "remove", "remove engine", "list")
    }
    times.update({"check": [], "doctor": []})
    for _ in range(runs):
        times["save"].append(run(lab, "iptables-nft-save")[0])
        took, out = run(lab, *nb, "add", *new, "--name", "bench", "--yes", "--force")
        times["add"].append(took)
        times["add engine"].append(engine_ms(out))
        took, out = run(lab, *nb, "remove", "bench", "--yes")
        times["remove"].append(took)
        times["remove engine"].append(engine_ms(out))
        times["list"].append(run(lab, *nb, "list")[0])
        times["check"].append(run(lab, *nb, "check", *new, ok=(0, 1))[0])
        times["doctor"].append(run(lab, *nb, "doctor", ok=(0, 1))[0])
    _took, listed = run(lab, *nb, "list", "--json")
    assert listed.count('"intact": true') == n, f"expected {n} intact forwards"
    return {k: statistics.median(v) for k, v in times.items()}


def doctor_backends(lab: Lab, runs: int) -> tuple[float, float]:
    """1,000 forwards to 100 backends on the server, 10 of which do not exist: doctor's time."""
    for i in range(90):  # 10.0.2.100-189 answer (connection refused is an answer); 190-199 do not
        lab.exec(lab.server, "ip", "addr", "add", f"10.0.2.{100 + i}/24", "dev", "eth0")
    lab.nat_exec("iptables-nft-restore", stdin="*nat\nCOMMIT\n*filter\nCOMMIT\n")
    lab.nat_exec(
        "iptables-nft-restore", "--noflush", stdin=restore_text(forwards(1000, 100, "10.0.2.100"))
    )
    nb = [sys.executable, "-m", "natbox", "--backend", "restore"]
    save = statistics.median(run(lab, "iptables-nft-save")[0] for _ in range(runs))
    doctor = statistics.median(
        run(lab, *nb, "doctor", ok=(0, 1))[0] for _ in range(max(1, runs // 3))
    )
    return save, doctor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--doctor-backends", action="store_true", help="also the 100-backend doctor case"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmark needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    lab = Lab(tag=f"nbt-sp-{os.getpid()}")
    lab.env["NATBOX_CONFIG_DIR"] = str(lab.workdir / "config")
    lab.up()
    try:
        starts = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import natbox.cli"], check=True)
            starts.append(time.perf_counter() - t)
        py = statistics.median(starts)
        print(
            f"load: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs; {args.runs} runs, medians"
        )
        print(f"python start-up + import natbox.cli: {py * 1000:.0f} ms")
        print(
            f"{'forwards':>8} {'rules':>6} {'save':>7} | {'add':>14} {'remove':>14} {'list':>7} "
            f"{'check':>7} {'doctor':>7} | worst ratio (goal <= {GOAL:g}x save)"
        )
        for n in (int(x) for x in args.sizes.split(",")):
            m = measure(lab, n, args.runs)
            save = m["save"]

            def ms(k: str, m: dict[str, float] = m) -> str:
                return f"{m[k] * 1000:5.0f}ms"

            ratios = {k: m[k] / save for k in ("add", "remove", "list", "check", "doctor")}
            # The same without the interpreter's start-up, which no goal of a few ms can absorb.
            net = {k: (m[k] - py) / save for k in ratios}
            worst = max(ratios, key=lambda k: ratios[k])
            print(
                f"{n:>8} {4 * n:>6} {ms('save')} | {ms('add')} ({m['add engine'] * 1000:3.0f}) "
                f"{ms('remove')} ({m['remove engine'] * 1000:3.0f}) {ms('list')} {ms('check')} "
                f"{ms('doctor')} | {worst} {ratios[worst]:.1f}x "
                + ("ok" if ratios[worst] <= GOAL else "OVER")
            )
            print(
                "         ratios: "
                + "  ".join(f"{k} {r:.1f}x" for k, r in ratios.items())
                + "   (engine part in parentheses, ms)"
            )
            print("         less start-up: " + "  ".join(f"{k} {r:.1f}x" for k, r in net.items()))
        if args.doctor_backends:
            save, doctor = doctor_backends(lab, args.runs)
            print(
                f"doctor, 1,000 forwards to 100 backends (10 unreachable): {doctor:.1f} s "
                f"(goal <= 5 s; one save {save * 1000:.0f} ms)"
            )
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
