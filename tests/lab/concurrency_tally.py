"""Several natboxes at once, plus an outside iptables writer: count what went wrong.

Each round starts, at the same moment on the nat box: two `natbox add`, one `natbox remove` of a
forward added before the round, one `natbox list --json` (a reader, as the dashboard is), and an
outside writer appending its own FORWARD rules with iptables. Afterwards the kernel is checked:
every command that reported success is true, every failure is one line, natbox's jumps are not
duplicated, no foreign rule (the fixture's or the outside writer's) is lost.

    sudo .venv/bin/python -m tests.lab.concurrency_tally [ROUNDS]     (default 20, both backends)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from natbox.lab import NAT_LAN_IP, SERVER_IP, Lab

FOREIGN = (Path(__file__).parents[1] / "fixtures" / "foreign.rules").read_text()
FLAVOUR = {"restore": "nft", "iptc": "legacy"}
JUMPS = (
    "-A FORWARD -m comment --comment natbox -j NATBOX-FORWARD",
    "-A PREROUTING -m comment --comment natbox -j NATBOX-PREROUTING",
    "-A POSTROUTING -m comment --comment natbox -j NATBOX-POSTROUTING",
)


def _natbox(lab: Lab, backend: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        lab.natbox_argv("--backend", backend, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=lab.env,
    )


def _outside_writer(lab: Lab, flavour: str, round_no: int, count: int) -> subprocess.Popen[str]:
    script = "; ".join(
        f"iptables-{flavour} -w -A FORWARD -s 10.99.{round_no}.{i}/32 -j ACCEPT"
        for i in range(1, count + 1)
    )
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.nat, "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=lab.env,
    )


def prepare(lab: Lab, backend: str) -> None:
    """Foreign rules (Docker, kube, hand-made, FORWARD policy DROP) before natbox."""
    lab.nat_exec(f"iptables-{FLAVOUR[backend]}-restore", stdin=FOREIGN)


def run_round(lab: Lab, backend: str, round_no: int) -> list[str]:
    """One round; returns the anomalies found (empty when all is well)."""
    flavour = FLAVOUR[backend]
    base = f"base{round_no}"
    port = 2000 + round_no * 10
    setup = _natbox(
        lab, backend, "add", f"{NAT_LAN_IP}:{port}", f"{SERVER_IP}:80", "--name", base, "--yes"
    )
    _out, err = setup.communicate(timeout=120)
    if setup.returncode != 0:
        return [f"round {round_no}: setup add of {base} failed: {err.strip()[:200]}"]
    procs = {
        "add-a": _natbox(
            lab,
            backend,
            "add",
            f"{NAT_LAN_IP}:{port + 1}",
            f"{SERVER_IP}:80",
            "--name",
            f"a{round_no}",
            "--yes",
        ),
        "add-b": _natbox(
            lab,
            backend,
            "add",
            f"{NAT_LAN_IP}:{port + 2}",
            f"{SERVER_IP}:80",
            "--name",
            f"b{round_no}",
            "--yes",
        ),
        "remove": _natbox(lab, backend, "remove", base, "--yes"),
        "list": _natbox(lab, backend, "list", "--json"),
    }
    writer = _outside_writer(lab, flavour, round_no, 8)
    results = {k: (p, *p.communicate(timeout=120)) for k, p in procs.items()}
    writer.communicate(timeout=120)
    anomalies: list[str] = []
    for key, (proc, _out, err) in results.items():
        if "Traceback" in err or "internal error" in err:
            anomalies.append(f"round {round_no} {key}: crashed: {err.strip()[-300:]}")
        elif proc.returncode != 0:
            anomalies.append(f"round {round_no} {key}: exit {proc.returncode}: {err.strip()[:200]}")
    snap_proc = _natbox(lab, backend, "list", "--json")
    snap_out, snap_err = snap_proc.communicate(timeout=120)
    if snap_proc.returncode != 0:
        return [*anomalies, f"round {round_no}: list failed: {snap_err.strip()}"]
    forwards = {f["name"]: f for f in json.loads(snap_out)["forwards"]}
    for key, name in (("add-a", f"a{round_no}"), ("add-b", f"b{round_no}")):
        if results[key][0].returncode == 0 and not forwards.get(name, {}).get("intact"):
            anomalies.append(f"round {round_no}: {name} reported added but is not intact")
    if results["remove"][0].returncode == 0 and base in forwards:
        anomalies.append(f"round {round_no}: {base} reported removed but is still there")
    if any(not f["intact"] for f in forwards.values()):
        broken = [n for n, f in forwards.items() if not f["intact"]]
        anomalies.append(f"round {round_no}: broken forwards {broken}")
    save = lab.save(flavour)
    for jump in JUMPS:
        if save.count(jump + "\n") > 1:
            anomalies.append(f"round {round_no}: duplicated jump {jump}")
    for line in FOREIGN.splitlines():
        if line.startswith("-A ") and line + "\n" not in save:
            anomalies.append(f"round {round_no}: foreign rule lost: {line}")
    for i in range(1, 9):
        if f"-A FORWARD -s 10.99.{round_no}.{i}/32 -j ACCEPT\n" not in save:
            anomalies.append(f"round {round_no}: outside writer's rule {i} lost")
    return anomalies


def main(rounds: int = 20) -> int:
    total: list[str] = []
    for backend in FLAVOUR:
        lab = Lab().up()
        try:
            prepare(lab, backend)
            for r in range(rounds):
                total.extend(run_round(lab, backend, r))
        finally:
            lab.close()
        print(f"{backend}: {rounds} rounds done", flush=True)
    for a in total:
        print(a)
    print(
        f"rounds: {rounds} per backend x 2 backends; processes per round: 4 natbox + 1 iptables; "
        f"anomalies: {len(total)}"
    )
    return 1 if total else 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
