"""Every diagnosis check on the real kernel: build the broken setup, see the finding, fix, see it gone.

The healthy seed is clean (no warning, no error): false alarms train people to ignore the tool.
"""

from __future__ import annotations

import json
import sys

from natbox.lab import DEMO_FOREIGN, NAT_LAN_IP, SERVER_IP, Lab

SEED = [f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80"]
LISTEN = """
import socket, sys, time
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.bind((sys.argv[2], int(sys.argv[3])))
if kind == socket.SOCK_STREAM:
    s.listen()
time.sleep(60)
"""


def check(lab: Lab, *args: str) -> dict[str, str]:
    """`natbox check ... --json` as {finding id: severity}."""
    out = lab.natbox("check", *args, "--json")
    assert out.returncode in (0, 1), out.stderr
    return {f["id"]: f["severity"] for f in json.loads(out.stdout)["findings"]}


def doctor(lab: Lab) -> dict[str, str]:
    out = lab.natbox("doctor", "--json")
    assert out.returncode in (0, 1), out.stderr
    return {f["id"]: f["severity"] for fs in json.loads(out.stdout).values() for f in fs}


def add(lab: Lab, *args: str) -> None:
    out = lab.natbox("add", *args, "--yes")
    assert out.returncode == 0, out.stderr


def serious(found: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in found.items() if v != "info"}


def test_the_healthy_seed_is_clean(lab: Lab) -> None:
    out = lab.natbox("check", *SEED)
    assert out.returncode == 0 and "clean" in out.stdout, out.stdout
    add(lab, *SEED)
    out = lab.natbox("doctor")
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines[0] == "tcp-1234: clean", out.stdout
    assert all(line.strip().startswith("info") for line in lines[1:]), out.stdout


def test_ip_forward_off(lab: Lab) -> None:
    lab.nat_exec("sysctl", "-qw", "net.ipv4.ip_forward=0")
    assert check(lab, *SEED)["ip-forward-off"] == "warning"
    lab.nat_exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
    assert "ip-forward-off" not in check(lab, *SEED)


def test_drop_before_natbox_jump(lab: Lab) -> None:
    add(lab, *SEED)
    lab.nat_exec("iptables", "-I", "FORWARD", "1", "-d", SERVER_IP, "-j", "DROP")
    assert lab.fetch(timeout=1) is None, "the foreign DROP really breaks the forward"
    assert doctor(lab)["drop-before-jump"] == "error"
    lab.nat_exec("iptables", "-D", "FORWARD", "1")
    assert serious(doctor(lab)) == {}
    assert lab.fetch() is not None


def test_listen_not_local(lab: Lab) -> None:
    assert check(lab, "192.168.1.99:1234", f"{SERVER_IP}:80")["listen-not-local"] == "warning"
    lab.nat_exec("ip", "addr", "add", "192.168.1.99/24", "dev", "lan0")
    assert serious(check(lab, "192.168.1.99:1234", f"{SERVER_IP}:80")) == {}


def test_listen_port_in_use(lab: Lab) -> None:
    proc = lab.spawn(lab.nat, sys.executable, "-c", LISTEN, "tcp", "0.0.0.0", "1234")
    for _ in range(50):
        found = check(lab, *SEED)
        if "listen-port-in-use" in found:
            break
    assert found["listen-port-in-use"] == "warning"
    proc.terminate()
    proc.wait(timeout=5)
    assert "listen-port-in-use" not in check(lab, *SEED)


def test_foreign_dnat_already_matches(lab: Lab) -> None:
    rule = [
        "PREROUTING",
        "-d",
        NAT_LAN_IP,
        "-p",
        "tcp",
        "--dport",
        "1234",
        "-j",
        "DNAT",
        "--to-destination",
        f"{SERVER_IP}:8080",
    ]
    lab.nat_exec("iptables", "-t", "nat", "-A", *rule)
    assert check(lab, *SEED)["foreign-dnat"] in ("warning", "error")
    lab.nat_exec("iptables", "-t", "nat", "-D", *rule)
    assert serious(check(lab, *SEED)) == {}


def test_no_route_to_backend(lab: Lab) -> None:
    args = ["192.168.1.30:1234", "172.31.9.9:80", "--snat", "10.0.2.40"]
    assert check(lab, *args)["no-route"] == "error"
    out = lab.natbox("add", *args, "--yes")
    assert (
        out.returncode == 2 and "no route to the backend" in out.stderr and "--force" in out.stderr
    )
    lab.nat_exec("ip", "route", "add", "172.31.9.0/24", "via", SERVER_IP)
    assert "no-route" not in check(lab, *args)


def test_backend_on_the_listen_side_is_explained(lab: Lab) -> None:
    found = check(lab, f"{NAT_LAN_IP}:1234", "192.168.1.20:80", "--proto", "udp")
    assert found["hairpin"] == "info", "natbox's SNAT makes it work: an explanation, not an alarm"
    assert "hairpin" not in check(lab, f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--proto", "udp")


def test_backend_not_answering(lab: Lab) -> None:
    args = [f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:81"]
    found = check(lab, *args)
    assert found["backend-silent"] == "warning"
    lab.spawn(lab.server, sys.executable, "-c", LISTEN, "tcp", SERVER_IP, "81")
    for _ in range(50):
        found = check(lab, *args)
        if "backend-silent" not in found:
            break
    assert serious(found) == {}
    assert (
        check(lab, f"{NAT_LAN_IP}:1234", f"{SERVER_IP}:80", "--proto", "udp")["backend-udp"]
        == "info"
    )


def test_snat_source_not_local(lab: Lab) -> None:
    assert check(lab, *SEED, "--snat", "10.0.2.99")["snat-not-local"] == "error"
    assert serious(check(lab, *SEED, "--snat", "10.0.2.40")) == {}


def test_mtu_mismatch_without_clamp(lab: Lab) -> None:
    lab.nat_exec("ip", "link", "set", "dmz0", "mtu", "1400")
    assert check(lab, *SEED)["mtu-mismatch"] == "warning"
    assert serious(check(lab, *SEED, "--mss-clamp")) == {}


def test_strict_rp_filter_with_asymmetric_clients(lab: Lab) -> None:
    lab.nat_exec("ip", "route", "add", "172.16.0.0/24", "via", SERVER_IP)
    lab.nat_exec("sysctl", "-qw", "net.ipv4.conf.lan0.rp_filter=1")
    args = [*SEED, "--from", "172.16.0.0/24"]
    assert check(lab, *args)["rp-filter-strict"] == "warning"
    lab.nat_exec("sysctl", "-qw", "net.ipv4.conf.lan0.rp_filter=2")
    assert "rp-filter-strict" not in check(lab, *args)


def test_rules_in_both_iptables_flavours(lab: Lab) -> None:
    lab.nat_exec("iptables-legacy", "-A", "FORWARD", "-s", "10.9.9.9", "-j", "ACCEPT")
    assert check(lab, *SEED)["both-flavours"] == "warning"
    lab.nat_exec("iptables-legacy", "-F", "FORWARD")
    assert "both-flavours" not in check(lab, *SEED)


def test_native_nftables_forward_drop(lab: Lab) -> None:
    # What firewalld's `inet firewalld` table looks like to the forward hook.
    lab.nat_exec(
        "nft",
        "-f",
        "-",
        stdin="table inet fw {\n chain filter_fwd {\n"
        "  type filter hook forward priority 0; policy drop;\n }\n}\n",
    )
    assert check(lab, *SEED)["nft-forward-drop"] == "warning"
    lab.nat_exec("nft", "delete", "table", "inet", "fw")
    assert "nft-forward-drop" not in check(lab, *SEED)


def test_docker_is_explained(lab: Lab) -> None:
    lab.nat_exec("iptables", "-N", "DOCKER-USER")
    assert check(lab, *SEED)["docker"] == "info"
    lab.nat_exec("iptables", "-X", "DOCKER-USER")
    assert "docker" not in check(lab, *SEED)


def test_stale_flows_are_found_and_cleared(lab: Lab) -> None:
    args = [*SEED, "--proto", "udp"]
    lab.nat_exec("iptables-nft-restore", stdin=DEMO_FOREIGN)  # a box with rules tracks connections
    assert lab.udp_ask(timeout=0.5) is None  # makes a flow to the box itself, before any DNAT
    assert check(lab, *args)["stale-flows"] == "info"
    add(lab, *args)
    assert lab.udp_ask() == "echo:ping", "add cleared the stale flow, so the DNAT applies at once"
    assert "stale-flows" not in doctor(lab)
