"""Conntrack on the real kernel: natbox's flow set equals conntrack -L's; kill removes exactly one flow."""

from __future__ import annotations

import json
import re
import sys

from natbox.lab import NAT_LAN_IP, SERVER_IP, Lab

TUPLE = re.compile(
    r"^(\S+)\s+\d+\s+\d+\s+(?:[A-Z_]+\s+)?src=(\S+) dst=(\S+)(?: sport=(\d+) dport=(\d+))?"
)


def oracle(lab: Lab) -> set[tuple[str, str, str, int | None, int | None]]:
    """The flows conntrack -L prints, as (proto, src, dst, sport, dport) of the original direction."""
    out = lab.nat_exec("conntrack", "-L").stdout
    found = set()
    for line in out.splitlines():
        m = TUPLE.match(line)
        assert m, line
        proto, src, dst, sport, dport = m.groups()
        found.add((proto, src, dst, int(sport) if sport else None, int(dport) if dport else None))
    return found


def natbox_flows(lab: Lab, *args: str) -> list[dict[str, object]]:
    out = lab.natbox("conntrack", "--json", *args)
    assert out.returncode == 0, out.stderr
    flows: list[dict[str, object]] = json.loads(out.stdout)["flows"]
    return flows


def as_set(flows: list[dict[str, object]]) -> set[tuple[object, ...]]:
    return {
        (f["proto"], f["orig"]["src"], f["orig"]["dst"], f["orig"]["sport"], f["orig"]["dport"])  # type: ignore[index]
        for f in flows
    }


def make_flows(lab: Lab) -> None:
    out = lab.natbox(
        "add", f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--proto", "both", "--name", "web", "--yes"
    )
    assert out.returncode == 0, out.stderr
    assert lab.fetch() is not None
    for _ in range(3):
        assert lab.udp_ask() == "echo:ping"
    lab.exec(lab.client, "ping", "-c", "1", "-W", "1", NAT_LAN_IP)


def test_flow_set_equals_conntrack_L(lab: Lab) -> None:
    make_flows(lab)
    flows = natbox_flows(lab)
    assert as_set(flows) == oracle(lab)
    assert len(flows) == len(oracle(lab)) >= 5
    web = [f for f in flows if f["forward"] == "web"]
    assert sorted(str(f["proto"]) for f in web) == ["tcp", "udp", "udp", "udp"]
    for f in web:
        assert f["dnat"] and f["snat"]
        assert f["reply"] == {
            "src": SERVER_IP,
            "dst": "10.0.2.40",
            "sport": 80,
            "dport": f["reply"]["dport"],
        }  # type: ignore[index]
    assert any(f["proto"] == "icmp" and not f["dnat"] for f in flows)
    human = lab.natbox("conntrack", "--forward", "web", "--proto", "tcp")
    assert human.returncode == 0 and "=> 10.0.2.40:" in human.stdout and "1 of " in human.stdout


def test_kill_one_flow_by_tuple(lab: Lab) -> None:
    make_flows(lab)
    before = oracle(lab)
    victim = next(f for f in natbox_flows(lab, "--forward", "web", "--proto", "udp"))
    o = victim["orig"]
    out = lab.natbox(
        "conntrack",
        "kill",
        "--tuple",
        "udp",
        f"{o['src']}:{o['sport']}",
        f"{o['dst']}:{o['dport']}",
        "--yes",
    )  # type: ignore[index]
    assert out.returncode == 0, out.stderr
    assert "killed 1 of 1" in out.stdout
    after = oracle(lab)
    assert before - after == {("udp", o["src"], o["dst"], o["sport"], o["dport"])}  # type: ignore[index]
    assert after <= before


def test_kill_a_forwards_flows(lab: Lab) -> None:
    make_flows(lab)
    before = oracle(lab)
    out = lab.natbox("conntrack", "kill", "--forward", "web", "--yes")
    assert out.returncode == 0, out.stderr
    after = oracle(lab)
    gone = before - after
    assert len(gone) == 4 and all(t[2] == NAT_LAN_IP and t[4] == 1234 for t in gone)
    assert any(t[0] == "icmp" for t in after), "flows of other traffic stay"


def test_kill_errors(lab: Lab) -> None:
    out = lab.natbox("conntrack", "kill", "--yes")
    assert out.returncode == 2 and "exactly one of --forward" in out.stderr
    out = lab.natbox("conntrack", "kill", "--tuple", "udp", "1.2.3.4:5", "6.7.8.9:10", "--yes")
    assert out.returncode == 2 and "no udp flow 1.2.3.4:5 → 6.7.8.9:10" in out.stderr
    out = lab.natbox("conntrack", "--forward", "nope")
    assert out.returncode == 2 and "there is no forward named nope" in out.stderr


def test_enable_accounting(lab: Lab) -> None:
    assert lab.nat_exec("sysctl", "-n", "net.netfilter.nf_conntrack_acct").stdout.strip() == "0"
    out = lab.natbox("conntrack", "--json")
    assert json.loads(out.stdout)["accounting"] is False
    out = lab.natbox("conntrack", "--enable-accounting", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["accounting"] is True
    make_flows(lab)
    web = natbox_flows(lab, "--forward", "web", "--proto", "tcp")
    assert web[0]["orig_packets"] and web[0]["reply_bytes"]


def test_json_lines_stream_the_same_flows(lab: Lab) -> None:
    make_flows(lab)
    doc = natbox_flows(lab)
    out = lab.natbox("conntrack", "--json-lines")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert as_set(lines) == as_set(doc) == oracle(lab)
    assert {f["forward"] for f in lines} >= {"web", None}
    both = lab.natbox("conntrack", "--json", "--json-lines")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    sorted_out = lab.natbox("conntrack", "--sort", "timeout", "--json-lines")
    timeouts = [json.loads(line)["timeout"] for line in sorted_out.stdout.splitlines()]
    assert timeouts == sorted(timeouts)


READERS = r"""
import json, os
from natbox.conntrack import read_flows, read_netlink
netlink = read_netlink()
os.environ["NATBOX_CONNTRACK_READER"] = "proc"
proc = read_flows()
print(json.dumps({
    "sources": [netlink.source, proc.source],
    "skipped": [netlink.skipped, proc.skipped],
    "netlink": [f.to_dict() for f in netlink.flows],
    "proc": [f.to_dict() for f in proc.flows],
}))
"""


def test_netlink_and_proc_readers_return_the_same_flows(lab: Lab) -> None:
    nat = lab.nat_exec
    nat("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
    nat("sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1")
    make_flows(lab)
    send = (
        "import socket, sys; s = socket.socket(socket.{}, socket.SOCK_DGRAM); "
        "s.sendto(b'x', (sys.argv[1], int(sys.argv[2])))"
    )
    # IPv6, a mark, a zone: next to the forwarded TCP/UDP and the ICMP of make_flows
    nat("ip6tables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
    nat(sys.executable, "-c", send.format("AF_INET6"), "::1", "5000")
    mark = ["-p", "udp", "--dport", "7777", "-j", "CONNMARK", "--set-mark", "42"]
    nat("iptables", "-t", "mangle", "-A", "OUTPUT", *mark)
    nat(sys.executable, "-c", send.format("AF_INET"), "127.0.0.1", "7777")
    nat(
        "iptables",
        "-t",
        "raw",
        "-A",
        "OUTPUT",
        "-p",
        "udp",
        "--dport",
        "7778",
        "-j",
        "CT",
        "--zone",
        "7",
    )
    nat(sys.executable, "-c", send.format("AF_INET"), "127.0.0.1", "7778")
    read = json.loads(nat(sys.executable, "-c", READERS).stdout)
    assert read["sources"] == ["ctnetlink", "/proc/net/nf_conntrack"]
    assert read["skipped"] == [0, 0]

    def keyed(flows: list[dict[str, object]]) -> dict[tuple[object, ...], dict[str, object]]:
        return {(f["proto"], *f["orig"].values(), f["zone"]): f for f in flows}  # type: ignore[attr-defined]

    netlink, proc = keyed(read["netlink"]), keyed(read["proc"])
    assert set(netlink) == set(proc) and len(netlink) >= 8
    for key, f in netlink.items():
        p = proc[key]
        # read a moment apart: the clock moved, and so may have a counter of live traffic
        assert abs(f["timeout"] - p["timeout"]) <= 1 and abs(f["age"] - p["age"]) <= 1  # type: ignore[operator]
        same = ("timeout", "age")
        assert {k: v for k, v in f.items() if k not in same} == {
            k: v for k, v in p.items() if k not in same
        }, key
    flows = list(netlink.values())
    assert {f["family"] for f in flows} == {"ipv4", "ipv6"}
    assert any(f["mark"] == 42 for f in flows) and any(f["zone"] == 7 for f in flows)
    assert all(f["orig_packets"] is not None for f in flows)


TIMEOUT = re.compile(r'"timeout":\d+|^(\w+ +\S+ +)\d+', re.MULTILINE)


def test_natbox_conntrack_prints_the_same_from_either_reader(lab: Lab) -> None:
    make_flows(lab)
    for args in (
        [],
        ["--json"],
        ["--json-lines"],
        ["--proto", "udp"],
        ["--forward", "web", "--json"],
        ["--sort", "bytes", "--limit", "3"],
    ):
        outs = []
        for reader in ("netlink", "proc"):
            out = lab.nat_exec(
                "env",
                f"NATBOX_CONNTRACK_READER={reader}",
                sys.executable,
                "-m",
                "natbox",
                "conntrack",
                *args,
            )
            outs.append(TIMEOUT.sub(lambda m: f"{m.group(1) or ''}T", out.stdout))
        assert outs[0] == outs[1], args
        assert "192.168.1.30:1234" in outs[0] or "1234" in outs[0]


FLUSH = """
import json, sys
from natbox.conntrack import dump
from natbox.model import Forward
from natbox.runner import Runner
from natbox.txn import flush_flows
fwd = Forward.from_text(sys.argv[1], "10.0.2.50:9", proto=sys.argv[2], snat="10.0.2.40")
found = [f.orig.dport for f in dump.flows_to(str(fwd.listen.ip), sys.argv[2], range(fwd.listen.port, fwd.listen.port_end + 1))]
print(json.dumps({"found": sorted(found), "notes": flush_flows(fwd, Runner())}))
"""


def test_stale_flows_are_found_by_a_filtered_dump_and_deleted_by_tuple(lab: Lab) -> None:
    """The flows to a listen address that predate its DNAT: the kernel filters the dump (ip, proto,
    port), natbox checks and deletes exactly those, and leaves every other flow alone."""
    lab.nat_exec(
        "iptables-nft-restore", stdin="*filter\n-A INPUT -m conntrack --ctstate NEW\nCOMMIT\n"
    )
    for port in (1234, 1235, 1300):
        assert lab.udp_ask(port=port, timeout=0.3) is None  # each makes a flow to the box itself
    before = {(p, dport) for p, _s, d, _sp, dport in oracle(lab) if d == NAT_LAN_IP}
    assert {("udp", 1234), ("udp", 1235), ("udp", 1300)} <= before
    run = [sys.executable, "-c", FLUSH]
    out = json.loads(lab.nat_exec(*run, f"{NAT_LAN_IP}:1234-1235", "udp").stdout)
    assert out["found"] == [1234, 1235]
    assert out["notes"] == [f"cleared 2 stale udp flows to {NAT_LAN_IP}"]
    after = {(p, dport) for p, _s, d, _sp, dport in oracle(lab) if d == NAT_LAN_IP}
    assert after == before - {("udp", 1234), ("udp", 1235)}, "only those two went"
    out = json.loads(lab.nat_exec(*run, f"{NAT_LAN_IP}:1300", "tcp").stdout)
    assert out == {"found": [], "notes": []}, "another protocol: nothing found, nothing deleted"
    assert ("udp", 1300) in {(p, dport) for p, _s, d, _sp, dport in oracle(lab) if d == NAT_LAN_IP}
