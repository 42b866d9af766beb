"""The diagnosis on the firewalls people really run, on the real kernel: a kube-proxy node, a Docker
host, ufw with FORWARD policy DROP, a router whose OUTPUT policy is DROP, a backend that does not
answer, and no route. No false alarm where the forward works; the real conflict found where it is.
"""

from __future__ import annotations

import json

from natbox import hostshapes
from natbox.lab import NAT_LAN_IP, SERVER_IP, Lab
from tests.lab.test_diagnosis import SEED, add, check, doctor, serious


def load(lab: Lab, text: str) -> None:
    lab.nat_exec("iptables-nft-restore", "--noflush", stdin=text)


def findings(lab: Lab, *args: str) -> list[dict[str, object]]:
    out = lab.natbox(*args, "--json")
    assert out.returncode in (0, 1), out.stderr
    data = json.loads(out.stdout)
    return data["findings"] if "findings" in data else [f for fs in data.values() for f in fs]


def test_kube_node_no_false_conflicts_and_the_nodeport_is_found(lab: Lab) -> None:
    load(lab, hostshapes.kube_node(2000, nodeports={7: 31234}))
    out = lab.natbox("check", *SEED)
    assert out.returncode == 0 and "clean" in out.stdout, out.stdout
    assert len(out.stdout.splitlines()) < 10, "no line per kube service"
    nodeport = [f for f in findings(lab, "check", f"{NAT_LAN_IP}:31234", f"{SERVER_IP}:80")]
    dnat = [f for f in nodeport if f["id"] == "foreign-dnat"]
    assert len(dnat) == 1 and dnat[0]["severity"] == "warning", nodeport
    assert "KUBE-NODEPORTS" in str(dnat[0]["examples"]), dnat
    add(lab, *SEED)
    assert lab.fetch() is not None, "the forward works on the kube node"
    assert serious(doctor(lab)) == {}


def test_docker_published_port_found_unpublished_clean(lab: Lab) -> None:
    load(lab, hostshapes.docker_host(published=1234))
    assert check(lab, *SEED)["foreign-dnat"] == "warning"
    lab.nat_exec("iptables", "-t", "nat", "-F", "DOCKER")
    lab.nat_exec("iptables", "-t", "nat", "-A", "DOCKER", "-i", "docker0", "-j", "RETURN")
    found = check(lab, *SEED)
    assert serious(found) == {} and found["docker"] == "info"
    add(lab, *SEED)
    assert lab.fetch() is not None, "FORWARD policy DROP, natbox's accept comes first"
    assert serious(doctor(lab)) == {}


def test_ufw_forward_policy_drop(lab: Lab) -> None:
    load(lab, hostshapes.ufw_host())
    assert lab.fetch(timeout=1) is None
    add(lab, *SEED)
    assert lab.fetch() is not None, "the forward works behind ufw's deny-routed policy"
    out = lab.natbox("doctor")
    assert out.returncode == 0 and out.stdout.startswith("tcp-1234: clean"), out.stdout
    # `ufw reload` puts its jumps before natbox's: still clean, its chains drop nothing of ours.
    lab.nat_exec(
        "iptables", "-D", "FORWARD", "-m", "comment", "--comment", "natbox", "-j", "NATBOX-FORWARD"
    )
    lab.nat_exec(
        "iptables", "-A", "FORWARD", "-m", "comment", "--comment", "natbox", "-j", "NATBOX-FORWARD"
    )
    assert lab.fetch() is not None and serious(doctor(lab)) == {}
    # ... until `ufw route reject` writes a REJECT for the backend into ufw-user-forward.
    lab.nat_exec(
        "iptables",
        "-I",
        "ufw-user-forward",
        "-d",
        SERVER_IP,
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "REJECT",
    )
    assert lab.fetch(timeout=1) is None
    drop = [f for f in findings(lab, "doctor") if f["id"] == "drop-before-jump"]
    assert (
        drop and drop[0]["severity"] == "error" and "ufw-user-forward" in str(drop[0]["examples"])
    )


def test_output_policy_drop_is_a_probe_limit_not_a_dead_backend(lab: Lab) -> None:
    load(lab, hostshapes.restrictive_output())
    out = lab.natbox("check", *SEED, "--json")
    assert out.returncode == 0, out.stdout
    found = {f["id"]: f for f in json.loads(out.stdout)["findings"]}
    assert (
        found["probe-blocked"]["severity"] == "info"
        and "OUTPUT" in found["probe-blocked"]["message"]
    )
    add(lab, *SEED)
    assert serious(doctor(lab)) == {}
    assert lab.fetch() is not None, "forwarded traffic never passes OUTPUT"
    after = doctor(lab)
    assert serious(after) == {} and "probe-blocked" not in after, "replied flows are the witness"


def test_backend_that_does_not_answer_is_named_from_conntrack(lab: Lab) -> None:
    add(lab, *SEED)
    lab.exec(lab.server, "iptables", "-I", "INPUT", "-p", "tcp", "--dport", "80", "-j", "DROP")
    assert lab.fetch(timeout=1) is None
    silent = [f for f in findings(lab, "doctor") if f["id"] == "backend-silent"]
    assert len(silent) == 1 and silent[0]["severity"] == "warning", silent
    assert "got no reply" in str(silent[0]["message"]) and silent[0]["examples"], silent


def test_no_route_is_a_finding(lab: Lab) -> None:
    for extra in ((), ("--snat", "10.0.2.40")):
        out = lab.natbox("check", f"{NAT_LAN_IP}:1234", "172.16.9.9:80", *extra, "--json")
        assert out.returncode == 1, (out.stdout, out.stderr)
        route = [f for f in json.loads(out.stdout)["findings"] if f["id"] == "no-route"]
        assert route and route[0]["severity"] == "error" and "ip route add" in route[0]["fix"]
        assert "--snat ADDR" not in route[0]["fix"]
    out = lab.natbox("check", f"{NAT_LAN_IP}:1234", "172.16.9.9:80")
    assert out.returncode == 1 and "no route" in out.stdout
