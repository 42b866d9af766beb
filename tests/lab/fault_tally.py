"""Fault injection on the real kernel: kill -9 natbox at every named point of apply and remove, on both
backends, recover, and count the runs that left a state other than before or after (must be 0).

    python -m tests.lab.fault_tally        (as root; builds and removes its own lab)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from natbox.lab import DEMO_FOREIGN, NAT_LAN_IP, SERVER_IP, Lab

POINTS = ("journal-written", "committed-filter", "committed-nat", "before-journal-end")
FLAVOUR = {"restore": "nft", "iptc": "legacy"}


@dataclass
class Tally:
    runs: int = 0
    partial: int = 0
    outcomes: list[str] = field(default_factory=list)


def _nb(lab: Lab, backend: str, *args: str, fault: str | None = None) -> int:
    env = dict(lab.env)
    if fault:
        env["NATBOX_FAULT"] = fault
    import subprocess

    proc = subprocess.run(
        lab.natbox_argv("--backend", backend, *args),
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    return proc.returncode


def run(lab: Lab, tally: Tally) -> Tally:
    """Every point x op x backend in this lab (which it leaves as it found it)."""
    seed = [f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--name", "web", "--yes", "--force"]
    keeper = [
        f"{NAT_LAN_IP}:5353",
        f"{SERVER_IP}:80",
        "--proto",
        "udp",
        "--name",
        "dns",
        "--yes",
        "--force",
    ]
    for backend, flavour in FLAVOUR.items():
        lab.nat_exec(f"iptables-{flavour}-restore", stdin=DEMO_FOREIGN)
        assert _nb(lab, backend, "add", *keeper) == 0  # another forward must survive every crash
        before = lab.save(flavour)
        assert _nb(lab, backend, "add", *seed) == 0
        after = lab.save(flavour)
        assert _nb(lab, backend, "remove", "web", "--yes") == 0 and lab.save(flavour) == before
        for op in ("add", "remove"):
            for point in POINTS:
                start, goal = (before, after) if op == "add" else (after, before)
                if op == "remove":
                    assert _nb(lab, backend, "add", *seed) == 0
                argv = ["add", *seed] if op == "add" else ["remove", "web", "--yes"]
                rc = _nb(lab, backend, *argv, fault=point)
                assert rc == -9, f"{backend} {op} {point}: natbox was not killed (rc {rc})"
                assert _nb(lab, backend, "recover") == 0
                state = lab.save(flavour)
                ok = state in (start, goal)
                tally.runs += 1
                tally.partial += not ok
                tally.outcomes.append(
                    f"{backend:<8} {op:<7} killed at {point:<19} -> "
                    f"{'before' if state == start else 'after' if state == goal else 'PARTIAL'}"
                )
                # back to `before` for the next run
                if "natbox:web" in state:
                    assert _nb(lab, backend, "remove", "web", "--yes") == 0
                assert lab.save(flavour) == before, "reset failed"
        assert _nb(lab, backend, "remove", "dns", "--yes") == 0
    return tally


def main() -> int:
    lab = Lab().up()
    try:
        tally = run(lab, Tally())
    finally:
        lab.close()
    print("\n".join(tally.outcomes))
    print(f"runs: {tally.runs}, partial states found: {tally.partial} (must be 0)")
    return 1 if tally.partial else 0


if __name__ == "__main__":
    raise SystemExit(main())
