"""Benchmark: natbox on a lived-in box (issue #13): kube-like rules, natbox's forward, 100,000 flows.

Builds the seed lab in its own namespaces (prefix NATBOX_LAB_PREFIX, nbt- by default, removed
afterwards) and, on the nat box:
a kube-proxy-like ruleset (2,000 services: 8,000 nat rules in 4,000 chains, 2,000 filter rules),
natbox's UDP forward 192.168.1.30:1234-1237 -> 10.0.2.50:9-12, and 100,000 UDP flows through it.
Then, in one run, medians, each row with natbox's time, the reference's and the ratio against its goal:

  natbox conntrack (text / --json / --json-lines) > /dev/null   vs conntrack -L > /dev/null  (<= 1.5x)
  natbox list > /dev/null                     vs iptables-nft-save + python start-up   (<= 1.5x)
  import natbox.cli (python -X importtime)                                               (<= 150 ms)
  viewer in tmux 120x40: `c` until flow rows   vs iptstate's first screen of flows      (<= 0.5x)
  viewer in tmux: a filter / a sort until the rows change                                (<= 150 ms)
  viewer RSS with 100,000 flows                                                           (<= 150 MB)
  natbox add --yes / remove --yes (a tcp forward) vs one iptables-nft-save              (<= 4x)
  the engine part of add / remove (Engine.apply / .remove in process, what the TUI pays) vs one save (<= 2x)
  natbox doctor                               vs one iptables-nft-save      (no goal in #13: check_10k's 4x)
  dashboard in tmux 120x40 until the forward row vs iptstate's first screen of flows  (<= 0.5x),
    and whether "no natbox forwards" was ever on screen before the forward row (it must not be)

and, in-process, what the JSON encoders cost for the same 100,000 flows (natbox writes JSON text
directly; stdlib json, and orjson / msgspec when installed, encode `to_dict`).

Run as root: python -m benchmarks.lived_in [--flows N] [--runs R] [--services N]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import apply_10k, check_10k
from natbox.lab import Lab

PREFIX = os.environ.get("NATBOX_LAB_PREFIX", "nbt-")


def kube_rules(services: int) -> str:
    """kube-proxy's iptables shape: per service a KUBE-SERVICES match, its SVC and SEP chains."""
    nat = [
        "*nat",
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-MARK-MASQ - [0:0]",
        ":KUBE-POSTROUTING - [0:0]",
    ]
    body: list[str] = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
    ]
    flt = [
        "*filter",
        ":KUBE-SERVICES - [0:0]",
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    ]
    for i in range(services):
        vip = f"10.96.{i // 250}.{i % 250 + 1}"
        pod = f"10.244.{i // 250}.{i % 250 + 1}"
        svc, sep = f"KUBE-SVC-{i:016X}", f"KUBE-SEP-{i:016X}"
        name = f"ns{i}/svc{i}:http"
        nat += [f":{svc} - [0:0]", f":{sep} - [0:0]"]
        body += [
            f'-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment "{name} cluster IP" -m tcp --dport 80 -j {svc}',
            f'-A {svc} -m comment --comment "{name} -> {pod}:8080" -j {sep}',
            f'-A {sep} -s {pod}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ',
            f'-A {sep} -p tcp -m comment --comment "{name}" -m tcp -j DNAT --to-destination {pod}:8080',
        ]
        flt.append(
            f'-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment "{name} has no endpoints" '
            "-m tcp --dport 81 -j REJECT --reject-with icmp-port-unreachable"
        )
    return "\n".join([*nat, *body, "COMMIT", *flt, "COMMIT"]) + "\n"


def timed(lab: Lab, *argv: str, runs: int, ok: tuple[int, ...] = (0,)) -> float:
    """Median wall time of a command in the nat namespace, its output thrown away (as > /dev/null)."""
    took = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(
            ["ip", "netns", "exec", lab.nat, *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=lab.env,
            check=False,
        )
        took.append(time.perf_counter() - start)
        if proc.returncode not in ok:
            raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return statistics.median(took)


class Tmux:
    """A private tmux server (own socket) with one session running `argv` in the nat namespace."""

    def __init__(self, lab: Lab, argv: list[str], size: tuple[int, int] = (120, 40)) -> None:
        self.socket = f"{PREFIX}{os.getpid()}-{time.monotonic_ns()}"
        env = " ".join(f"{k}={lab.env[k]}" for k in ("XTABLES_LOCKFILE", "NATBOX_STATE_DIR"))
        command = f"ip netns exec {lab.nat} env {env} NATBOX_CONFIG_DIR={lab.env['NATBOX_CONFIG_DIR']} TERM=xterm-256color {' '.join(argv)}"
        self.started = time.perf_counter()
        self.run("new-session", "-d", "-s", "b", "-x", str(size[0]), "-y", str(size[1]), command)

    def run(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=False
        ).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "b")

    def keys(self, *keys: str) -> float:
        self.run("send-keys", "-t", "b", *keys)
        return time.perf_counter()

    def until(self, test: object, timeout: float = 60.0) -> tuple[float, str]:
        """Poll the screen (every 10 ms) until test(screen) holds; the time it first held."""
        deadline = time.perf_counter() + timeout
        screen = ""
        while time.perf_counter() < deadline:
            screen = self.screen()
            if test(screen):  # type: ignore[operator]
                return time.perf_counter(), screen
            time.sleep(0.01)
        raise SystemExit(f"timed out; the screen was:\n{screen}")

    def pid(self) -> int:
        return int(self.run("display-message", "-p", "-t", "b", "#{pane_pid}").strip())

    def kill(self) -> None:
        """End the server and remove its socket file (tmux leaves it behind)."""
        tmpdir = os.environ.get("TMUX_TMPDIR", "/tmp")
        path = self.run("display-message", "-p", "-t", "b", "#{socket_path}").strip()
        path = path or os.path.join(tmpdir, f"tmux-{os.getuid()}", self.socket)  # server gone
        self.run("kill-server")
        if os.path.exists(path):
            os.unlink(path)


FLOW_ROW = re.compile(r"192\.168\.1\.\d+:\d+ +→|192\.168\.1\.\d+:\d+\s+192\.168\.1\.30:123")


COUNT = re.compile(r"(\d+) of (\d+) flows")


def rows_on(screen: str) -> list[str]:
    """The first flow rows on a screen."""
    return [line for line in screen.splitlines() if FLOW_ROW.search(line)][:3]


def counts(screen: str) -> tuple[int, int]:
    """(shown, total) from the viewer's title, (-1, -1) before it shows one."""
    m = COUNT.search(screen)
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


def iptstate_first_screen(lab: Lab) -> float:
    tmux = Tmux(lab, ["iptstate"])
    try:
        at, _ = tmux.until(lambda s: len(FLOW_ROW.findall(s)) >= 10)
        return at - tmux.started
    finally:
        tmux.kill()


def rss_mb(pid: int) -> float:
    """Resident memory of the pane's process and its children (ip netns exec execs natbox)."""
    total = 0
    pids = [pid] + [
        int(p)
        for p in subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True
        ).stdout.split()
    ]
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def viewer(lab: Lab, per_port: int) -> dict[str, float]:
    """natbox in tmux: dashboard, `c`, then a filter and a sort, each until the screen shows it."""
    tmux = Tmux(lab, [sys.executable, "-m", "natbox"])
    out: dict[str, float] = {}
    try:
        at, _ = tmux.until(lambda s: "udp-1234" in s and "192.168.1.30:1234" in s)
        out["dashboard"] = at - tmux.started
        time.sleep(1.0)
        pressed = tmux.keys("c")
        at, _ = tmux.until(lambda s: len(FLOW_ROW.findall(s)) >= 10 and "of " in s)
        out["c"] = at - pressed
        tmux.until(lambda s: counts(s)[0] == counts(s)[1] > per_port, timeout=60)
        time.sleep(2.0)
        out["rss"] = rss_mb(tmux.pid())
        filters, sorts = [], []
        for port in ("1235", "1236", "1237"):
            tmux.keys("/")
            time.sleep(0.3)
            # the field filter in one burst (as pasted); timed from the last key to the new count
            tmux.keys("-l", f"port:{port[:-1]}")
            time.sleep(0.5)
            pressed = tmux.keys(port[-1])
            # port:N also matches the few flows whose client (or SNAT) port is N
            at, _ = tmux.until(lambda s: abs(counts(s)[0] - per_port) < per_port // 10)
            filters.append(at - pressed)
            tmux.keys("Escape")
            tmux.until(lambda s: counts(s)[0] == counts(s)[1] > per_port)
            time.sleep(0.5)
        for _ in range(3):
            before = rows_on(tmux.screen())
            pressed = tmux.keys("S")  # reverse the order: the rows on screen change
            tmux.until(lambda s, b=before: rows_on(s) != b)
            sorts.append(time.perf_counter() - pressed)
            time.sleep(0.5)
        out["filter"] = statistics.median(filters)
        out["sort"] = statistics.median(sorts)
        out["rss_after"] = rss_mb(tmux.pid())
    finally:
        tmux.kill()
    return out


def dashboard_first(lab: Lab) -> tuple[float, bool]:
    """`natbox` (the dashboard) in tmux 120x40: seconds until natbox's forward row is on screen, and
    whether "no natbox forwards" was on any screen read before it (it must never be)."""
    tmux = Tmux(lab, [sys.executable, "-m", "natbox"])
    said_empty = False

    def forward_row(screen: str) -> bool:
        nonlocal said_empty
        said_empty = said_empty or "no natbox forwards" in screen
        return "udp-1234" in screen and "192.168.1.30:1234" in screen

    try:
        at, _ = tmux.until(forward_row)
        return at - tmux.started, said_empty
    finally:
        tmux.kill()


def empty_app_first(lab: Lab) -> float:
    """The floor: an empty Textual app (benchmarks/empty_app.py) in the same tmux, seconds until
    its one line is on screen. Python's start-up and Textual's, with no natbox in it."""
    tmux = Tmux(lab, [sys.executable, str(Path(__file__).with_name("empty_app.py"))])
    try:
        at, _ = tmux.until(lambda screen: "first frame" in screen)
        return at - tmux.started
    finally:
        tmux.kill()


PROBE = ["192.168.1.30:8080", "10.0.2.50:80"]  # a tcp forward next to the seed's udp one
ENGINE_CHANGE = """
import statistics, sys, time
from natbox.engine import Engine
from natbox.model import Forward
engine = Engine()  # one engine, as the TUI holds one
fwd = Forward.from_text(sys.argv[1], sys.argv[2], snat="10.0.2.40", name="bm-engine")
applied, removed = [], []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter(); engine.apply(fwd); applied.append(time.perf_counter() - t)
    t = time.perf_counter(); engine.remove(fwd.name); removed.append(time.perf_counter() - t)
print(statistics.median(applied), statistics.median(removed))
"""


def changes(lab: Lab, runs: int) -> dict[str, float]:
    """Medians (s): one iptables-nft-save, natbox add --yes / remove --yes / doctor (whole
    commands, interleaved with the saves), their own "(N ms)" figures, and in process
    Engine.apply / Engine.remove of the same forward (what the TUI pays)."""
    nb = ["ip", "netns", "exec", lab.nat, sys.executable, "-m", "natbox"]
    took: dict[str, list[float]] = {
        k: [] for k in ("save", "add", "remove", "doctor", "add_txn", "remove_txn")
    }
    for _ in range(runs):
        took["save"].append(check_10k.timed(lab, "iptables-nft-save"))
        took["add"].append(
            apply_10k.timed(
                [*nb, "add", *PROBE, "--name", "bm-cli", "--yes"], lab.env, engine=took["add_txn"]
            )
        )
        took["remove"].append(
            apply_10k.timed([*nb, "remove", "bm-cli", "--yes"], lab.env, engine=took["remove_txn"])
        )
        took["doctor"].append(check_10k.timed(lab, *nb[4:], "doctor", ok=(0, 1)))
    out = {k: statistics.median(v) for k, v in took.items()}
    engine = lab.nat_exec(sys.executable, "-c", ENGINE_CHANGE, *PROBE, str(runs)).stdout.split()
    out["apply_engine"], out["remove_engine"] = (float(x) for x in engine)
    return out


ENCODERS = r"""
import json, statistics, sys, time
from natbox import conntrack
table = conntrack.read_flows()
flows = table.flows
def t(fn):
    r = []
    for _ in range(3):
        s = time.perf_counter(); fn(); r.append(time.perf_counter() - s)
    return statistics.median(r) * 1000
direct = t(lambda: "\n".join(f.to_json(plain=table.plain) for f in flows))
dicts = []
make = t(lambda: dicts.__setitem__(slice(None), [f.to_dict() for f in flows]))
std = t(lambda: json.dumps(dicts))
print(f"JSON of {len(flows)} flows, in-process: natbox's direct text {direct:.0f} ms; "
      f"to_dict {make:.0f} ms + stdlib json {std:.0f} ms", end="")
try:
    import orjson
    print(f"; + orjson {t(lambda: orjson.dumps(dicts)):.0f} ms", end="")
except ImportError:
    print("; orjson not installed", end="")
try:
    import msgspec
    print(f"; + msgspec {t(lambda: msgspec.json.encode(dicts)):.0f} ms", end="")
except ImportError:
    print("; msgspec not installed", end="")
print()
"""


def row(
    what: str, ours: float, ref: float | None, ref_name: str, goal: float, unit: str = "ms"
) -> None:
    if ref is None:
        verdict = "ok" if ours <= goal else "OVER"
        print(f"{what:<46}{ours:>9.0f} {unit:<3}{'':>36}  goal <= {goal:g} {unit}: {verdict}")
        return
    ratio = ours / ref
    verdict = "ok" if ratio <= goal else "OVER"
    print(
        f"{what:<46}{ours:>9.0f} {unit:<3}{ref_name:>27}{ref:>6.0f} {unit:<3}"
        f"  {ratio:5.2f}x (goal <= {goal:g}x): {verdict}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--services", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-tmux", action="store_true", help="skip the viewer rows")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmark needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    lab = Lab(tag=f"{PREFIX}li{os.getpid()}")
    lab.env["NATBOX_CONFIG_DIR"] = str(lab.workdir / "config")
    lab.env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode cached
    lab.up()
    try:
        lab.nat_exec("iptables-nft-restore", "--noflush", stdin=kube_rules(args.services))
        out = lab.natbox(
            "add", "192.168.1.30:1234-1237", "10.0.2.50:9-12", "--proto", "udp", "--yes", "--force"
        )
        assert out.returncode == 0, out.stderr
        sent = lab.flood(args.flows, 1234, 4)
        rules = lab.nat_exec("iptables-nft-save").stdout.count("\n-A ")
        count = int(lab.nat_exec("cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout)
        print(
            f"host: {rules} rules, {count} flows ({sent} sent); load {os.getloadavg()[0]:.2f} "
            f"on {os.cpu_count()} CPUs; {args.runs} runs, medians"
        )
        py = sys.executable
        # Interleaved, a round of every command per run: a busy spell slows all of them alike.
        commands = {
            "ref": ["conntrack", "-L"],
            "text": [py, "-m", "natbox", "conntrack"],
            "json": [py, "-m", "natbox", "conntrack", "--json"],
            "jl": [py, "-m", "natbox", "conntrack", "--json-lines"],
            "save": ["iptables-nft-save"],
            "start": [py, "-c", "pass"],
            "list": [py, "-m", "natbox", "list"],
        }
        took: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.runs):
            for key, argv in commands.items():
                took[key].append(timed(lab, *argv, runs=1) * 1000)
        ref, text, js, jl, save, start, listed = (statistics.median(v) for v in took.values())
        imports = []
        for _ in range(args.runs):
            err = subprocess.run(
                [py, "-X", "importtime", "-c", "import natbox.cli"],
                capture_output=True,
                text=True,
                check=True,
            ).stderr
            imports.append(int(err.strip().splitlines()[-1].split("|")[1]) / 1000)
        bare = timed(lab, py, "-c", "import natbox.cli", runs=args.runs) * 1000
        print(f"{'what':<46}{'natbox':>13}{'reference':>36}  ratio")
        row("natbox conntrack (text)", text, ref, "conntrack -L", 1.5)
        row("natbox conntrack --json", js, ref, "conntrack -L", 1.5)
        row("natbox conntrack --json-lines", jl, ref, "conntrack -L", 1.5)
        why = subprocess.run(
            ["ip", "netns", "exec", lab.nat, py, "-m", "natbox", "conntrack", "--json-lines"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**lab.env, "NATBOX_DEBUG": "1"},
            check=False,
        ).stderr.strip()
        print(f"  (reader: {why or 'ctnetlink, no fallback to /proc'})")
        row("natbox list", listed, save + start, "iptables-nft-save + start-up", 1.5)
        row("import natbox.cli (-X importtime)", statistics.median(imports), None, "", 150)
        print(
            f"  (python -c 'import natbox.cli' {bare:.0f} ms wall, python -c pass {start:.0f} ms)"
        )
        print(lab.nat_exec(py, "-c", ENCODERS).stdout, end="")
        if not args.no_tmux:
            ipt = statistics.median(iptstate_first_screen(lab) for _ in range(3)) * 1000
            runs = [viewer(lab, sent // 4) for _ in range(max(1, args.runs // 2))]
            v = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            row(
                "viewer (tmux 120x40): `c` until flow rows",
                v["c"] * 1000,
                ipt,
                "iptstate first screen",
                0.5,
            )
            row("viewer: filter keystroke until rows updated", v["filter"] * 1000, None, "", 150)
            row("viewer: S (reverse sort) until rows updated", v["sort"] * 1000, None, "", 150)
            row("viewer RSS at 100k flows (after filter+sort)", v["rss_after"], None, "", 150, "MB")
            print(
                f"  (dashboard until the forward row: {v['dashboard'] * 1000:.0f} ms, "
                f"iptstate first screen {ipt:.0f} ms; RSS when the viewer opened {v['rss']:.0f} MB)"
            )
        flows_now = lab.nat_exec("cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout
        print(f"(flows now {int(flows_now)}; load {os.getloadavg()[0]:.2f})")
        c = changes(lab, args.runs)
        save_ms = c["save"] * 1000
        row("natbox add --yes (whole CLI)", c["add"] * 1000, save_ms, "iptables-nft-save", 4)
        row("natbox remove --yes (whole CLI)", c["remove"] * 1000, save_ms, "iptables-nft-save", 4)
        row(
            "engine: Engine.apply (in process, the TUI)",
            c["apply_engine"] * 1000,
            save_ms,
            "iptables-nft-save",
            2,
        )
        row(
            "engine: Engine.remove (in process, the TUI)",
            c["remove_engine"] * 1000,
            save_ms,
            "iptables-nft-save",
            2,
        )
        row(
            "natbox doctor (whole CLI; check_10k's goal)",
            c["doctor"] * 1000,
            save_ms,
            "iptables-nft-save",
            4,
        )
        print(
            f"  (the CLI's own figures: added in {c['add_txn'] * 1000:.0f} ms, "
            f"removed in {c['remove_txn'] * 1000:.0f} ms)"
        )
        if not args.no_tmux:
            ipt_runs, dash_runs, floor_runs, empty = [], [], [], False
            for _ in range(args.runs):  # interleaved: the same load for all three
                ipt_runs.append(iptstate_first_screen(lab))
                took, said_empty = dashboard_first(lab)
                dash_runs.append(took)
                empty = empty or said_empty
                floor_runs.append(empty_app_first(lab))
            row(
                "dashboard (tmux 120x40) until the forward row",
                statistics.median(dash_runs) * 1000,
                statistics.median(ipt_runs) * 1000,
                "iptstate first screen",
                0.5,
            )
            floor = statistics.median(floor_runs)
            print(
                f"  (the floor: an empty Textual app's first frame {floor * 1000:.0f} ms = "
                f"{floor / statistics.median(ipt_runs):.2f}x iptstate's first screen)"
            )
            print(
                f'  ("no natbox forwards" on screen before the forward row: '
                f"{'YES, in some run' if empty else f'never, in {args.runs} runs'})"
            )
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
