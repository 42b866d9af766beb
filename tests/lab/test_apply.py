"""`natbox apply FILE` on the real kernel: add/replace/prune, idempotence down to the counters,
--check, one transaction across tables and IP versions, bad files, drift, and no trace left."""

from __future__ import annotations

import difflib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from natbox.lab import (
    DEMO_FOREIGN,
    NAT_LAN_IP,
    NAT_LAN_IP6,
    PAGE_TOKEN,
    SERVER_IP,
    SERVER_IP6,
    Lab,
)
from tests.lab.test_ipv6 import save6

FLAVOUR = {"restore": "nft", "iptc": "legacy"}
FOREIGN6 = DEMO_FOREIGN.replace("10.0.2.0/24", "2001:db8:2::/64").replace(
    "192.168.1.0/24", "2001:db8:1::/64"
)

WEB = {
    "name": "web",
    "listen": f"{NAT_LAN_IP}:1234",
    "backend": f"{SERVER_IP}:80",
    "snat": "10.0.2.40",
}
DNS = {
    "name": "dns",
    "proto": "udp",
    "listen": f"{NAT_LAN_IP}:5353",
    "backend": f"{SERVER_IP}:80",
    "snat": "10.0.2.40",
}
WEB6 = {"name": "web6", "listen": f"[{NAT_LAN_IP6}]:1234", "backend": f"[{SERVER_IP6}]:80"}


@pytest.fixture
def box() -> Iterator[Lab]:
    """The seed lab under this helper's namespace prefix, with natbox's paths in its work dir."""
    lab = Lab(tag=f"nbt-ap-{os.getpid()}-{secrets.token_hex(2)}").up()
    lab.env["NATBOX_CONFIG_DIR"] = str(lab.workdir / "etc-natbox")
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(params=["restore", "iptc"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def write(lab: Lab, forwards: list[dict[str, object]], name: str = "forwards.json") -> str:
    path = lab.workdir / name
    path.write_text(json.dumps({"version": 1, "forwards": forwards}, indent=2) + "\n")
    return str(path)


def apply(lab: Lab, backend: str, *args: str, rc: int = 0) -> dict[str, object]:
    out = lab.natbox("--backend", backend, "apply", *args, "--yes", "--json")
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr, out.stderr
    assert out.returncode == rc, out.stderr + out.stdout
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def names(doc: dict[str, object], key: str) -> list[str]:
    items = doc[key]
    assert isinstance(items, list)
    return [i if isinstance(i, str) else str(i["name"]) for i in items]


def both_saves(lab: Lab, flavour: str, counters: bool = True) -> tuple[str, str]:
    """iptables-save and ip6tables-save, with every rule's counters (unless not `counters`).

    Only the INPUT and OUTPUT policy counters are blanked: the box's own traffic (IPv6 neighbour
    discovery runs in the background) moves them whatever natbox does.
    """
    v6 = lab.nat_exec(f"ip6tables-{flavour}-save", *(["-c"] if counters else [])).stdout
    v6 = "".join(line + "\n" for line in v6.splitlines() if not line.startswith("#"))
    pair = (lab.save(flavour, counters=counters), v6 if counters else save6(lab, flavour))
    own = re.compile(r"^(:(?:INPUT|OUTPUT) \S+) \[\d+:\d+\]$", re.M)
    return own.sub(r"\1 [-]", pair[0]), own.sub(r"\1 [-]", pair[1])


def _settled(box: Lab, flavour: str) -> list[str]:
    """The saves with counters once two reads 0.5 s apart agree (no packet still in flight)."""
    last = both_saves(box, flavour)
    for _ in range(20):
        time.sleep(0.5)
        now = both_saves(box, flavour)
        if now == last:
            return now
        last = now
    return last


def test_add_replace_prune_and_idempotent(box: Lab, backend: str) -> None:
    flavour = FLAVOUR[backend]
    box.nat_exec(f"iptables-{flavour}-restore", stdin=DEMO_FOREIGN)
    box.nat_exec(f"ip6tables-{flavour}-restore", stdin=FOREIGN6)
    before = both_saves(box, flavour, counters=False)
    path = write(box, [WEB, DNS, WEB6])

    doc = apply(box, backend, path)
    assert doc["changed"] is True and names(doc, "added") == ["web", "dns", "web6"]
    assert doc["findings"] == [] or all(f["severity"] != "error" for f in doc["findings"])  # type: ignore[union-attr]
    body = box.fetch()
    assert body is not None and PAGE_TOKEN in body
    assert box.udp_ask(port=5353) == "echo:ping"
    body6 = box.fetch(NAT_LAN_IP6)
    assert body6 is not None and PAGE_TOKEN in body6

    # Second run: nothing touched, not even a counter (traffic has moved them: they must stay).
    settled = _settled(box, flavour)  # the fetches' last packets (FIN, ACK) have arrived
    doc = apply(box, backend, path)
    assert doc["changed"] is False and names(doc, "unchanged") == ["web", "dns", "web6"]
    assert doc["lines"] == {}
    again = both_saves(box, flavour)
    assert again == settled, "\n".join(
        difflib.unified_diff(
            "".join(settled).splitlines(), "".join(again).splitlines(), lineterm=""
        )
    )

    # One forward changes (SNAT -> masquerade): only it is replaced; dns keeps its counters.
    dns_rules = [
        line for line in box.save(flavour, counters=True).splitlines() if "natbox:dns" in line
    ]
    path = write(box, [{**WEB, "snat": None, "masquerade": True}, DNS, WEB6])
    doc = apply(box, backend, path)
    assert names(doc, "replaced") == ["web"] and names(doc, "unchanged") == ["dns", "web6"]
    replaced = doc["replaced"]
    assert isinstance(replaced, list) and replaced[0]["to"]["masquerade"] is True
    after = box.save(flavour, counters=True)
    assert [line for line in after.splitlines() if "natbox:dns" in line] == dns_rules
    assert "natbox:web" in after and "-j MASQUERADE" in after
    assert box.fetch() is not None

    # Without --prune a forward missing from the file stays; with it, it goes.
    path = write(box, [DNS])
    doc = apply(box, backend, path)
    assert doc["changed"] is False and names(doc, "kept") == ["web", "web6"]
    doc = apply(box, backend, path, "--prune")
    assert names(doc, "removed") == ["web", "web6"] and names(doc, "unchanged") == ["dns"]
    assert box.fetch(timeout=1) is None and box.udp_ask(port=5353) == "echo:ping"

    # An empty file with --prune: every natbox rule goes, the foreign ones stay, byte for byte.
    path = write(box, [])
    apply(box, backend, path, "--prune")
    assert both_saves(box, flavour, counters=False) == before


def test_check_and_diff_change_nothing(box: Lab) -> None:
    box.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    out = box.natbox("apply", write(box, [WEB]), "--yes")
    assert out.returncode == 0, out.stderr
    before = both_saves(box, "nft")
    path = write(box, [{**WEB, "backend": f"{SERVER_IP}:8080"}, DNS, WEB6])
    out = box.natbox("apply", path, "--check", "--diff")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "1 to add" not in text and "2 to add, 1 to replace, 0 to remove" in text
    assert "~ web" in text and "backend 10.0.2.50:80 → 10.0.2.50:8080" in text
    assert "+ dns" in text and "+ web6" in text
    assert "--- iptables-save (before)" in text and "+++ ip6tables-save (after)" in text
    assert f"+-A NATBOX-PREROUTING -d {NAT_LAN_IP}/32 -p udp" in text
    assert "--to-destination 10.0.2.50:8080" in text and "-A NATBOX-PREROUTING" in text
    again = both_saves(box, "nft")
    assert again == before, "\n".join(
        difflib.unified_diff("".join(before).splitlines(), "".join(again).splitlines(), lineterm="")
    )
    doc = json.loads(box.natbox("apply", path, "--check", "--json").stdout)
    assert doc["changed"] is True and doc["check"] is True
    assert set(doc) >= {"changed", "added", "replaced", "removed", "findings"}
    assert both_saves(box, "nft") == before


POISON = """
import json, sys
from natbox import converge
from natbox.backends.detect import choose_backend
from natbox.errors import NatboxError
from natbox.model import Forward
from natbox.plan import Plan, PlannedRule, build_plan

real = converge.build_plan
def poisoned(fwd):
    plan = real(fwd)
    if fwd.name != "bad6":
        return plan
    # Parses (so --test passes), but the kernel refuses MASQUERADE in PREROUTING at commit time.
    bad = PlannedRule("nat", "NATBOX-PREROUTING",
        ("-m", "comment", "--comment", fwd.comment, "-j", "MASQUERADE"), "masquerade", "bad")
    return Plan(fwd, (*plan.rules, bad))
converge.build_plan = poisoned
backend, _ = choose_backend(sys.argv[1])
target = {
    "web": Forward.from_text("192.168.1.30:1234", "10.0.2.50:8080", name="web", masquerade=True),
    "dns": None,
    "new": Forward.from_text("192.168.1.30:7000", "10.0.2.50:80", name="new", snat="10.0.2.40"),
    "bad6": Forward.from_text("[2001:db8:1::30]:7000", "[2001:db8:2::50]:80", name="bad6",
                              snat="2001:db8:2::40"),
}
try:
    converge.converge(backend, target)
except NatboxError as exc:
    print(json.dumps({"error": exc.message, "hint": exc.hint}))
else:
    print(json.dumps({"error": None}))
"""


def test_failure_in_the_last_table_leaves_nothing(box: Lab, backend: str) -> None:
    """Replace one forward, remove one, add two (IPv4 and IPv6): the IPv6 nat table is refused
    after three tables were committed; all three are undone, to the byte (positions included)."""
    flavour = FLAVOUR[backend]
    box.nat_exec(f"iptables-{flavour}-restore", stdin=DEMO_FOREIGN)
    # (Legacy tables are kernel modules that stay once loaded: have them there before.)
    box.nat_exec(f"ip6tables-{flavour}-restore", stdin=FOREIGN6)
    apply(
        box, backend, write(box, [WEB, DNS, {**WEB, "name": "alt", "listen": f"{NAT_LAN_IP}:1235"}])
    )
    # Docker-like: someone inserts before natbox's jump, so the jump is not first any more.
    box.nat_exec(f"iptables-{flavour}", "-I", "FORWARD", "1", "-s", "192.0.2.1/32", "-j", "ACCEPT")
    before = both_saves(box, flavour, counters=False)
    script = box.workdir / "poison.py"
    script.write_text(POISON)
    out = box.nat_exec(sys.executable, str(script), backend)
    result = json.loads(out.stdout)
    assert result["error"] and "nat" in result["error"], result
    assert "undone: nothing changed" in result["hint"] and "IPv4 filter" in result["hint"], result
    assert both_saves(box, flavour, counters=False) == before
    assert box.fetch() is not None and box.udp_ask(port=5353) == "echo:ping"
    assert not (Path(box.state_dir) / "journal-set.json").exists()


BAD_FILES = [
    (
        '{"version": 1, "forwards": [\n  {"name": "web",\n   "listen": "192.168.1.30:1234",\n   "backend": "10.0.2.50:99999"}\n]}\n',
        "line 4: field backend: port 99999 is out of range",
    ),
    (
        '{"version": 1, "forwards": [\n  {"name": "web", "listen": "192.168.1.30:1234",\n   "backend": "10.0.2.50:80", "snta": "10.0.2.40"}\n]}\n',
        "line 3: field snta: unknown field (hint: did you mean 'snat'?",
    ),
    (
        '{"version": 1, "forwards": [\n  {"name": "web", "listen": "192.168.1.30:1234", "backend": "10.0.2.50:80",\n   "masquerade": "yes"}\n]}\n',
        "line 3: field masquerade: 'yes' is not true or false",
    ),
    (
        '{"version": 1, "forwards": [\n  {"name": "web", "listen": "192.168.1.30:1234", "backend": "10.0.2.50:80", \n]}\n',
        "line 3: Expecting property name",
    ),
    (
        'version = 1\n\n[[forwards]]\nname = "web"\nlisten = "192.168.1.30:1234"\nbackend = "10.0.2.50:80"\n\n[[forwards]]\nname = "Bad Name"\nlisten = "192.168.1.30:1235"\nbackend = "10.0.2.50:80"\n',
        "line 9: field name:",
    ),
    (
        'version = 1\n[[forwards]]\nname = "a"\nlisten = "192.168.1.30:1234"\nbackend = "10.0.2.50:80"\n[[forwards]]\nname = "b"\nproto = "both"\nlisten = "192.168.1.30:1230-1240"\nbackend = "10.0.2.50:80"\n',
        "line 9: field listen: 192.168.1.30:1230-1240 overlaps forward a (line 2)",
    ),
    (
        'version = 1\n[[forwards]]\nname = "a"\nlisten = "192.168.1.30:1234"\nbackend = "10.0.2.50:80"\nsnat = "2001:db8:2::40"\n',
        "line 6: field snat: SNAT source 2001:db8:2::40 is not the forward's IP version",
    ),
]


def test_bad_files_one_line_nothing_applied(box: Lab) -> None:
    box.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    before = both_saves(box, "nft")
    for i, (text, expected) in enumerate(BAD_FILES):
        suffix = "toml" if text.startswith("version") else "json"
        path = box.workdir / f"bad{i}.{suffix}"
        path.write_text(text)
        out = box.natbox("apply", str(path), "--yes")
        assert out.returncode == 2, (expected, out.stdout, out.stderr)
        assert out.stderr.count("\n") == 1 and f"{path} {expected}" in out.stderr, out.stderr
        assert out.stdout == ""
    assert both_saves(box, "nft") == before


def test_toml_and_stdin(box: Lab) -> None:
    toml = (
        '# the lab\'s web forward\nversion = 1\n\n[[forwards]]\nname = "web"\n'
        f'listen = "{NAT_LAN_IP}:1234"\nbackend = "{SERVER_IP}:80"\n'
    )
    out = box.natbox("apply", "-", "--yes", "--json", stdin=toml)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["added"][0]["snat"] == "10.0.2.40", "SNAT derived from the route, as add does"
    assert box.fetch() is not None
    out = box.natbox("apply", "-", "--yes", "--json", stdin=toml)
    assert json.loads(out.stdout)["changed"] is False


def test_drift_shown_with_the_fix(box: Lab) -> None:
    box.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    box.nat_exec("iptables-nft", "-P", "FORWARD", "DROP")
    path = write(box, [WEB, DNS])
    apply(box, "restore", path)
    assert box.natbox("diff", path).returncode == 0
    clean = box.save("nft")
    # Behind natbox's back: its FORWARD chain flushed, and a Docker restart puts its jump first.
    box.nat_exec("iptables-nft", "-F", "NATBOX-FORWARD")
    box.nat_exec("iptables-nft", "-I", "FORWARD", "1", "-j", "DOCKER-USER")
    assert box.fetch(timeout=1) is None
    out = box.natbox("diff", path)
    assert out.returncode == 1, out.stderr
    assert "~ web" in out.stdout and "drifted" in out.stdout and "missing in filter" in out.stdout
    assert "~ dns" in out.stdout
    assert "natbox's jump is rule 2, not first" in out.stdout
    assert f"fix: natbox apply {path}" in out.stdout
    doc = apply(box, "restore", path)
    assert names(doc, "replaced") == ["web", "dns"] and doc["repairs"]
    assert box.fetch() is not None
    assert box.natbox("diff", path).returncode == 0
    fixed = box.save("nft").replace("-A FORWARD -j DOCKER-USER\n", "", 1)
    assert fixed == clean


def nft_ruleset(lab: Lab) -> str:
    return lab.nat_exec("nft", "list", "ruleset").stdout


def test_no_trace_left_on_an_nft_host_without_tables(box: Lab) -> None:
    """No nat (or filter) table before: add then remove leaves iptables-nft-save and
    `nft list ruleset` exactly as before; apply + prune too, for both IP versions."""
    before = (box.save("nft", counters=True), save6(box, "nft"), nft_ruleset(box))
    assert "*nat" not in before[0]
    out = box.natbox("add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--yes")
    assert out.returncode == 0, out.stderr
    assert "*nat" in box.save("nft")
    out = box.natbox("remove", "tcp-1234", "--yes")
    assert out.returncode == 0, out.stderr
    assert (box.save("nft", counters=True), save6(box, "nft"), nft_ruleset(box)) == before

    apply(box, "restore", write(box, [WEB, WEB6]))
    assert box.fetch(NAT_LAN_IP6) is not None
    apply(box, "restore", write(box, []), "--prune")
    assert (box.save("nft", counters=True), save6(box, "nft"), nft_ruleset(box)) == before


LISTED = (
    "import json; from natbox.tables import listed; t = listed(); "
    "print(json.dumps('failed' if t is None else sorted(t)))"
)


def test_the_netlink_table_list_matches_nft(box: Lab) -> None:
    """tables.listed() (one NFT_MSG_GETTABLE dump) names exactly the ip/ip6 tables `nft list
    tables` shows, with native tables of other families beside them left out."""
    assert json.loads(box.nat_exec(sys.executable, "-c", LISTED).stdout) == []
    box.nat_exec("iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-j", "ACCEPT")
    box.nat_exec("ip6tables-nft", "-t", "filter", "-A", "FORWARD", "-j", "ACCEPT")
    box.nat_exec("nft", "add", "table", "inet", "mine")
    box.nat_exec("nft", "add", "table", "ip", "natbox-is-not-nat")  # a table without base chains
    shown = box.nat_exec("nft", "list", "tables").stdout.split("\n")
    expected = sorted(
        line.removeprefix("table ").strip()
        for line in shown
        if line.startswith(("table ip ", "table ip6 "))
    )
    assert expected == ["ip nat", "ip natbox-is-not-nat", "ip6 filter"]
    assert json.loads(box.nat_exec(sys.executable, "-c", LISTED).stdout) == expected


def test_the_netlink_table_list_reads_a_dump_of_many_parts(box: Lab) -> None:
    """2,000 tables do not fit one netlink datagram: every one is still named, once."""
    script = "".join(f"add table ip t{i:04d}-{'x' * 40}\n" for i in range(2000))
    assert box.nat_exec("nft", "-f", "-", stdin=script).returncode == 0
    box.nat_exec("nft", "add", "table", "ip6", "zz-last")
    names = json.loads(box.nat_exec(sys.executable, "-c", LISTED).stdout)
    assert len(names) == 2001 and len(set(names)) == 2001
    assert names[0] == f"ip t0000-{'x' * 40}" and names[-1] == "ip6 zz-last"


def test_no_trace_never_deletes_a_table_that_was_there_without_natbox_chains(box: Lab) -> None:
    """A bare `ip nat` table (a base chain of its own, not natbox's POSTROUTING) was there before
    natbox's add: after the remove it is still there (natbox did not create it)."""
    box.nat_exec("nft", "add", "table", "ip", "nat")
    box.nat_exec(
        "nft", "add", "chain", "ip", "nat", "PREROUTING",
        "{ type nat hook prerouting priority -100; policy accept; }",
    )  # fmt: skip
    out = box.natbox("add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--yes")
    assert out.returncode == 0, out.stderr
    out = box.natbox("remove", "tcp-1234", "--yes")
    assert out.returncode == 0, out.stderr
    assert "table ip nat" in nft_ruleset(box)


def test_no_trace_never_deletes_a_table_someone_used(box: Lab) -> None:
    out = box.natbox("add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--yes")
    assert out.returncode == 0, out.stderr
    box.nat_exec("iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-o", "dmz0", "-j", "MASQUERADE")
    out = box.natbox("remove", "tcp-1234", "--yes")
    assert out.returncode == 0, out.stderr
    saved = box.save("nft")
    assert "-A POSTROUTING -o dmz0 -j MASQUERADE" in saved and "NATBOX" not in saved
    assert "*filter" not in saved, "the filter table natbox created was empty: gone"


def test_confirm_window_rolls_the_whole_apply_back(box: Lab) -> None:
    path = write(box, [WEB, DNS])
    apply(box, "restore", path)
    before = both_saves(box, "nft", counters=False)
    doc = apply(
        box,
        "restore",
        write(box, [{**WEB, "masquerade": True, "snat": None}, WEB6]),
        "--prune",
        "--confirm",
        "2",
    )
    assert names(doc, "removed") == ["dns"] and names(doc, "added") == ["web6"]
    pending = json.loads((Path(box.state_dir) / "pending.json").read_text())
    assert pending["name"].startswith("apply:")
    import time

    deadline = time.monotonic() + 20
    while (Path(box.state_dir) / "pending.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    while both_saves(box, "nft", counters=False) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert both_saves(box, "nft", counters=False) == before
    assert box.udp_ask(port=5353) == "echo:ping"


def test_list_and_export_mixed_v4_v6(box: Lab) -> None:
    box.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)
    box.nat_exec("ip6tables-nft-restore", stdin=FOREIGN6)
    apply(box, "restore", write(box, [WEB, WEB6]))
    out = box.natbox("list")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    (chains6,) = [line for line in text.splitlines() if line.startswith("ip6tables chains")]
    assert "nat/NATBOX-PREROUTING (1)" in chains6 and "filter/NATBOX-FORWARD (2)" in chains6
    assert "ip6 nat/POSTROUTING" in text and "2001:db8:2::/64" in text
    assert "ip6tables policies" in text
    snap = json.loads(box.natbox("list", "--json").stdout)
    assert {r["family"] for r in snap["foreign"]} == {4, 6}
    assert any(c["family"] == 6 and c["chain"] == "NATBOX-FORWARD" for c in snap["chains"])
    assert [f["name"] for f in snap["forwards"]] == ["web", "web6"]

    exported = box.natbox("export", "--format", "json").stdout
    again = box.natbox("apply", "-", "--yes", "--json", stdin=exported)
    assert json.loads(again.stdout)["changed"] is False, "export json is what apply reads"
    toml = box.natbox("export", "--format", "toml").stdout
    assert json.loads(box.natbox("apply", "-", "--json", "--check", stdin=toml).stdout)[
        "unchanged"
    ] == ["web", "web6"]
    restore = box.natbox("export", "--format", "restore").stdout
    assert "(iptables-restore --noflush)" in restore and "(ip6tables-restore --noflush)" in restore
    commands = box.natbox("export", "--format", "commands").stdout
    assert "ip6tables -w -t nat -A NATBOX-PREROUTING -d 2001:db8:1::30/128" in commands
