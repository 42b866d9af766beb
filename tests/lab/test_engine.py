"""The engine on the real kernel, one conformance suite for both backends.

restore = iptables-nft-save/-restore (this machine's iptables is nft); iptc = python-iptables on the
legacy tables (selected with --backend iptc, as on a legacy host).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from natbox import hostshapes
from natbox.lab import NAT_LAN_IP, NAT_LAN_IP6, PAGE_TOKEN, SERVER_IP, SERVER_IP6, Lab

FOREIGN = (Path(__file__).parents[1] / "fixtures" / "foreign.rules").read_text()
FLAVOUR = {"restore": "nft", "iptc": "legacy"}


@pytest.fixture(params=["restore", "iptc"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def nb(lab: Lab, backend: str, *args: str) -> tuple[int, str, str]:
    out = lab.natbox("--backend", backend, *args)
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr, out.stderr
    return out.returncode, out.stdout, out.stderr


def with_foreign(lab: Lab, backend: str) -> str:
    """Load Docker/kube/hand-made rules (FORWARD policy DROP) and return the save before natbox."""
    lab.nat_exec(f"iptables-{FLAVOUR[backend]}-restore", stdin=FOREIGN)
    return lab.save(FLAVOUR[backend])


def test_seed_end_to_end_and_byte_exact_removal(lab: Lab, backend: str) -> None:
    before = with_foreign(lab, backend)
    assert lab.fetch(timeout=1) is None
    rc, out, err = nb(lab, backend, "add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--yes")
    assert rc == 0, err
    body = lab.fetch()
    assert body is not None and PAGE_TOKEN in body, "FORWARD policy is DROP: our jump must be first"

    rc, out, err = nb(lab, backend, "list", "--json")
    assert rc == 0, err
    snap = json.loads(out)
    (fwd,) = snap["forwards"]
    assert fwd["name"] == "tcp-1234" and fwd["intact"] and fwd["snat"] == "10.0.2.40"
    assert snap["policies"]["filter/FORWARD"] == "DROP"
    owners = {r["owner"] for r in snap["foreign"]}
    assert {"docker", "kube", "other"} <= owners
    assert len(fwd["rules"]) == 4 and any(r["packets"] > 0 for r in fwd["rules"])

    rc, out, err = nb(lab, backend, "remove", "tcp-1234", "--yes")
    assert rc == 0, err
    assert lab.fetch(timeout=1) is None
    assert lab.save(FLAVOUR[backend]) == before


def test_udp_forward(lab: Lab, backend: str) -> None:
    rc, _, err = nb(
        lab, backend, "add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--proto", "udp", "--yes"
    )
    assert rc == 0, err
    assert lab.udp_ask() == "echo:ping"
    assert lab.fetch(timeout=1) is None, "a udp forward must not carry tcp"


def test_two_forwards_then_remove_one_keeps_the_other(lab: Lab, backend: str) -> None:
    before = with_foreign(lab, backend)
    for args in (["--name", "web"], ["--name", "dns", "--proto", "udp"]):
        rc, _, err = nb(
            lab,
            backend,
            "add",
            f"{NAT_LAN_IP}:{1234 if 'web' in args else 5353}",
            f"{SERVER_IP}:80",
            *args,
            "--yes",
        )
        assert rc == 0, err
    rc, _, err = nb(lab, backend, "remove", "web", "--yes")
    assert rc == 0, err
    assert lab.udp_ask(port=5353) == "echo:ping"
    rc, out, _ = nb(lab, backend, "list", "--json")
    assert [f["name"] for f in json.loads(out)["forwards"]] == ["dns"]
    rc, _, err = nb(lab, backend, "remove", "dns", "--yes")
    assert rc == 0, err
    assert lab.save(FLAVOUR[backend]) == before


def test_conflicts_are_refused(lab: Lab, backend: str) -> None:
    rc, _, err = nb(
        lab, backend, "add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--name", "web", "--yes"
    )
    assert rc == 0, err
    before = lab.save(FLAVOUR[backend])
    rc, _, err = nb(
        lab, backend, "add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:8080", "--name", "other", "--yes"
    )
    assert rc == 2 and "already forwarded by web" in err
    rc, _, err = nb(
        lab,
        backend,
        "add",
        f"{NAT_LAN_IP}:1230-1240",
        f"{SERVER_IP}:80",
        "--proto",
        "both",
        "--yes",
    )
    assert rc == 2 and "already forwarded by web" in err
    rc, _, err = nb(
        lab, backend, "add", f"{NAT_LAN_IP}:9999", f"{SERVER_IP}:80", "--name", "web", "--yes"
    )
    assert rc == 2 and "a forward named web already exists" in err
    rc, _, err = nb(lab, backend, "remove", "nope", "--yes")
    assert rc == 2 and "there is no forward named nope" in err
    assert lab.save(FLAVOUR[backend]) == before


def test_kernel_rejects_second_table_first_is_undone(lab: Lab, backend: str) -> None:
    before = with_foreign(lab, backend)
    out = lab.nat_exec(sys.executable, str(Path(__file__).with_name("fault_apply.py")), backend)
    result = json.loads(out.stdout)
    assert result["error"] and "nat" in result["error"], result
    assert "filter table was undone" in result["hint"]
    assert lab.save(FLAVOUR[backend]) == before
    assert lab.fetch(timeout=1) is None


def test_ip_forward_off_is_refused_then_enabled(lab: Lab, backend: str) -> None:
    lab.nat_exec("sysctl", "-qw", "net.ipv4.ip_forward=0")
    before = lab.save(FLAVOUR[backend])
    rc, _, err = nb(lab, backend, "add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--yes")
    assert rc == 2 and "forwarding is off" in err and "--enable-forwarding" in err
    assert lab.save(FLAVOUR[backend]) == before
    rc, out, err = nb(
        lab, backend, "add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--yes", "--enable-forwarding"
    )
    assert rc == 0, err
    assert "enabled net.ipv4.ip_forward" in out
    assert lab.nat_exec("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    assert lab.fetch() is not None


def test_no_tty_without_yes_and_dry_run(lab: Lab, backend: str) -> None:
    before = lab.save(FLAVOUR[backend])
    rc, _, err = nb(lab, backend, "add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80")
    assert rc == 2 and "--yes" in err
    rc, out, err = nb(lab, backend, "add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--dry-run")
    assert rc == 0 and "-A NATBOX-PREROUTING" in out and "-N NATBOX-FORWARD" in out
    assert lab.save(FLAVOUR[backend]) == before


def test_concurrent_writer_loses_nothing(lab: Lab, backend: str) -> None:
    flavour = FLAVOUR[backend]
    script = (
        "import subprocess, sys, time\n"
        "end = time.monotonic() + float(sys.argv[2]); i = 0\n"
        "while time.monotonic() < end:\n"
        "    i += 1\n"
        "    subprocess.run([sys.argv[1], '-w', '5', '-A', 'FORWARD', '-s', f'10.77.{i // 250}.{i % 250}', '-j', 'ACCEPT'], check=True)\n"
        "    if i > 1:\n"
        "        j = i - 1\n"
        "        subprocess.run([sys.argv[1], '-w', '5', '-D', 'FORWARD', '-s', f'10.77.{j // 250}.{j % 250}', '-j', 'ACCEPT'], check=True)\n"
        "print(i)\n"
    )
    proc = lab.spawn_capture(lab.nat, sys.executable, "-c", script, f"iptables-{flavour}", "4")
    deadline = time.monotonic() + 3.5
    n = 0
    while time.monotonic() < deadline:
        n += 1
        rc, _, err = nb(lab, backend, "add", f"{NAT_LAN_IP}:{2000 + n}", f"{SERVER_IP}:80", "--yes")
        assert rc == 0, err
        if n % 2 == 0:
            rc, _, err = nb(lab, backend, "remove", f"tcp-{2000 + n - 1}", "--yes")
            assert rc == 0, err
    written = int(proc.communicate(timeout=30)[0])
    assert proc.returncode == 0
    saved = lab.save(flavour)
    theirs = [line for line in saved.splitlines() if line.startswith("-A FORWARD -s 10.77.")]
    assert theirs == [f"-A FORWARD -s 10.77.{written // 250}.{written % 250}/32 -j ACCEPT"]
    rc, out, _ = nb(lab, backend, "list", "--json")
    names = sorted(f["name"] for f in json.loads(out)["forwards"] if f["intact"])
    expected = sorted(f"tcp-{2000 + k}" for k in range(1, n + 1) if not (k % 2 == 1 and k + 1 <= n))
    assert names == expected and n >= 2


def test_auto_on_an_nft_host_creates_no_legacy_table(lab: Lab) -> None:
    names = "/proc/net/ip_tables_names"
    assert lab.nat_exec("cat", names).stdout == ""
    for args in (
        ["list"],
        ["add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--yes"],
        ["list", "--json"],
        ["remove", "tcp-1234", "--yes"],
    ):
        out = lab.natbox(*args)
        assert out.returncode == 0, out.stderr
    assert lab.nat_exec("cat", names).stdout == "", "python-iptables must not touch an nft host"


PREFETCH = r"""
import json, sys
from natbox import backends
from natbox.engine import Engine

reads = []
real = backends.Backend.read
def counted(self, natbox_only=False, **kw):
    reads.append(self.family)
    return real(self, natbox_only, **kw)
backends.Backend.read = counted
shown = []
real_shown = backends.Backend.read_shown
def counted_shown(self):
    shown.append(self.family)
    return real_shown(self)
backends.Backend.read_shown = counted_shown

engine = Engine()
engine.prefetch()
early = len(reads)
if sys.argv[1] == "change":
    import subprocess, time
    time.sleep(0.5)  # the prefetched read is done: it shows the firewall as it was
    subprocess.run(["iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-s", "10.9.9.9", "-j", "MASQUERADE"], check=True)
data = engine.dashboard()
rules = [r.text for rs in data.rulesets for r in rs.rules("nat")]
chains = {r.chain for rs in data.rulesets for t in ("nat", "filter") for r in rs.rules(t)}
dashboard_reads = len(reads)
health = engine.health(data)
print(json.dumps({"early": early, "shown": len(shown), "reads": dashboard_reads, "masq": any("10.9.9.9" in t for t in rules), "fwds": [s.name for s in data.forwards], "complete": data.complete, "kube": any(c.startswith(("KUBE-", "DOCKER")) for c in chains), "health_reads": len(reads) - dashboard_reads, "health": sorted(health)}))
"""


def test_the_dashboards_first_read_starts_early_and_is_dropped_once_the_firewall_changed(
    lab: Lab,
) -> None:
    """`natbox` starts the first ruleset read before Textual loads (Engine.prefetch); the first
    dashboard uses it only if the nft generation is still the one taken before it was read."""
    lab.nat_exec("iptables-nft-restore", "--noflush", stdin=FOREIGN)  # kube, docker, ...
    assert lab.natbox("add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--yes").returncode == 0
    same = json.loads(lab.nat_exec(sys.executable, "-c", PREFETCH, "same").stdout)
    # The reads ran in the prefetch (IPv4 and IPv6), and the dashboard made none of its own; they
    # listed only the chains the dashboard shows (no save, no rule of kube's own chains), so the
    # health check reads the whole ruleset itself, and checks the forward on it.
    assert same["shown"] == 2 and same["reads"] == 0, same
    assert same["fwds"] == ["tcp-1234"] and not same["masq"], same
    assert not same["complete"] and not same["kube"], same
    assert same["health_reads"] == 2 and same["health"] == ["tcp-1234"], same
    changed = json.loads(lab.nat_exec(sys.executable, "-c", PREFETCH, "change").stdout)
    # Changed after the early read: it is dropped, the dashboard reads again (a whole save of
    # each family) and shows the rule. (4 saves if the early Dashboard was made only after the
    # change, found stale by its generation and read once more.)
    assert changed["shown"] == 2 and changed["reads"] in (2, 4) and changed["masq"], changed
    assert changed["fwds"] == ["tcp-1234"], changed
    assert changed["complete"] and changed["health_reads"] == 0, changed


SHOWN = r"""
import json, subprocess
from natbox import prefetch
from natbox.backends import families
from natbox.engine import Engine
from natbox.ruleset import WATCHED, forward_states, tampering
from natbox.status import display_chains

out = {}
for b in families(Engine().backend()):
    listed = prefetch.shown(b.family, 10.0)
    shown, saved = b.read_shown(), b.read(natbox_only=True, keep=WATCHED)
    out[b.family] = {
        "listed": listed is not None,
        "chains": [repr(display_chains(rs)) for rs in (shown, saved)],
        "forwards": [repr(forward_states(rs)) for rs in (shown, saved)],
        "tampering": [tampering(rs) for rs in (shown, saved)],
        "warnings": [rs.warnings for rs in (shown, saved)],
        "tables": [list(rs.tables) for rs in (shown, saved)],
        "kube": any(c.startswith("KUBE-") for t in shown.tables.values() for c in t.chains),
    }
out["nft"] = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
print(json.dumps(out))
"""


def _shown(lab: Lab) -> dict[str, Any]:
    out = lab.nat_exec(sys.executable, "-c", SHOWN)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_the_dashboards_first_read_lists_its_chains_and_they_read_as_the_save_does(
    lab: Lab,
) -> None:
    """On a lived-in nft box (kube-proxy, Docker, a native nft table beside, natbox's forwards
    with counters moving) the chains the dashboard shows, listed one by one (`-S CHAIN -v`, a few
    ms each), parse to what the whole save (~250 ms at 10,000 rules) gives for them: the same
    chains, rules, counters, forwards. What they cannot hold is a natbox tag in another
    software's chain: that tampering warning waits for the whole read (Dashboard.complete is
    False, so the dashboard reads the whole ruleset right after its first frame)."""
    lab.nat_exec(
        "iptables-nft-restore",
        "--noflush",
        stdin=hostshapes.kube_node(300) + hostshapes.docker_host(),
    )
    lab.nat_exec(
        "nft",
        "add table inet fw; add chain inet fw pass_forward { type filter hook forward priority 5; }",
    )
    assert lab.natbox("add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--yes").returncode == 0
    assert (
        lab.natbox(
            "add", f"{NAT_LAN_IP}:5353", f"{SERVER_IP}:53", "--proto", "udp", "--yes"
        ).returncode
        == 0
    )
    six = lab.natbox("add", f"[{NAT_LAN_IP6}]:8443", f"[{SERVER_IP6}]:443", "--yes")
    assert six.returncode == 0, six.stderr
    assert lab.fetch() is not None  # counters that are not all zero
    got = _shown(lab)
    for family in ("4", "6"):
        one = got[family]
        assert one["listed"] and not one["kube"], one
        assert one["chains"][0] == one["chains"][1], one["chains"]
        assert one["forwards"][0] == one["forwards"][1], "\n".join(one["forwards"])
        assert one["tampering"] == [[], []], one["tampering"]
    assert "tcp-1234" in got["4"]["forwards"][0] and "udp-5353" in got["4"]["forwards"][0]
    assert "tcp6-8443" in got["6"]["forwards"][0], got["6"]["forwards"][0]
    assert re.search(r"packets=[1-9]", got["4"]["forwards"][0]), "the counters were carried over"

    lab.nat_exec(
        "iptables-nft",
        "-t",
        "nat",
        "-I",
        "KUBE-SERVICES",
        "-m",
        "comment",
        "--comment",
        "natbox:tcp-1234",
        "-j",
        "RETURN",
    )
    forged = _shown(lab)["4"]["tampering"]
    assert forged[0] == [] and any("natbox's tag" in w for w in forged[1]), forged


def test_the_first_read_creates_no_table_where_there_is_none(lab: Lab) -> None:
    """iptables-nft lists a built-in chain of a table that is not there as if it were (a default
    policy); the shown read asks netlink first, so a box without nat or filter tables reads as
    the save reads it, and is left without them."""
    lab.nat_exec("nft", "flush ruleset")
    got = _shown(lab)
    assert got["nft"] == "", got["nft"]
    assert got["4"]["listed"] and got["4"]["chains"] == ["[]", "[]"], got["4"]


def test_the_first_read_matches_the_save_where_iptables_only_began(lab: Lab) -> None:
    """A box where iptables touched nat POSTROUTING first and then filter INPUT only (nat made
    before filter; built-in chains made on first use, so FORWARD, PREROUTING and OUTPUT are not
    there yet, though the save declares them), with legacy tables beside: the listing reads as
    the save does, tables in the save's order, the legacy warning kept."""
    lab.nat_exec("nft", "flush ruleset")
    lab.nat_exec(
        "iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-s", "10.9.0.0/16", "-j", "MASQUERADE"
    )
    lab.nat_exec("iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    lab.nat_exec("iptables-legacy", "-t", "mangle", "-A", "PREROUTING", "-j", "ACCEPT")
    try:
        got = _shown(lab)["4"]
        assert got["listed"], got
        assert got["chains"][0] == got["chains"][1] and "FORWARD" in got["chains"][0], got["chains"]
        assert got["tables"][0] == got["tables"][1], got["tables"]  # (nat was made first)
        # The same warning (each tool names itself in it: iptables-legacy, iptables-legacy-save).
        assert [[w.split(", use")[0] for w in ws] for ws in got["warnings"]] == [
            ["Warning: iptables-legacy tables present"]
        ] * 2, got["warnings"]
        assert lab.natbox("add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--yes").returncode == 0
        got = _shown(lab)["4"]
        assert got["listed"] and got["chains"][0] == got["chains"][1], got["chains"]
        assert got["forwards"][0] == got["forwards"][1], "\n".join(got["forwards"])
    finally:
        lab.nat_exec("iptables-legacy", "-t", "mangle", "-F")


def test_a_native_chain_named_as_a_builtin_makes_the_first_read_the_save(lab: Lab) -> None:
    """A regular nft chain called PREROUTING in `ip nat` (no hook: not iptables' built-in):
    `iptables -S PREROUTING` would print a made-up policy and none of its rules, so netlink's
    answer sends the first read to the save, which shows what is there."""
    lab.nat_exec("nft", "flush ruleset")
    lab.nat_exec(
        "nft",
        "add table ip nat; add chain ip nat PREROUTING; add rule ip nat PREROUTING ip daddr 1.2.3.4 counter",
    )
    got = _shown(lab)["4"]
    assert not got["listed"], got
    assert got["chains"][0] == got["chains"][1], got["chains"]
