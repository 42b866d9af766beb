"""Provides the firewalls of real hosts as iptables-restore text: a kube-proxy node, Docker, ufw, a
restrictive OUTPUT chain. The lab loads them into its namespaces, the unit tests parse them, the
benchmark builds a 10,000-rule host from them. Pure text; nothing here touches a kernel.
"""

from __future__ import annotations


def _svc_ip(i: int) -> str:
    return f"10.96.{i // 250}.{i % 250 + 1}"


def _pod_ip(i: int, side: int) -> str:
    return f"10.{244 + side}.{i // 250}.{i % 250 + 1}"


def kube_node(services: int = 2000, nodeports: dict[int, int] | None = None) -> str:
    """kube-proxy in iptables mode with `services` ClusterIP services (two endpoints each).

    `nodeports` maps a service number to a NodePort (reached through KUBE-NODEPORTS with
    `-m addrtype --dst-type LOCAL`, as kube-proxy writes it). About 8 rules per service.
    """
    nodeports = nodeports or {}
    chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    rules: list[str] = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]
    for i in range(1, services + 1):
        svc, name = f"KUBE-SVC-{i:016d}", f"default/svc-{i}:http"
        sep_a, sep_b = f"KUBE-SEP-{i:015d}A", f"KUBE-SEP-{i:015d}B"
        chains += [svc, sep_a, sep_b]
        rules += [
            f'-A KUBE-SERVICES -d {_svc_ip(i)}/32 -p tcp -m comment --comment "{name} cluster IP" '
            f"-m tcp --dport 80 -j {svc}",
            f'-A {svc} ! -s 10.244.0.0/15 -d {_svc_ip(i)}/32 -p tcp -m comment --comment "{name} '
            f'cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ',
            f'-A {svc} -m comment --comment "{name} -> {_pod_ip(i, 0)}:8080" -m statistic --mode '
            f"random --probability 0.50000000000 -j {sep_a}",
            f'-A {svc} -m comment --comment "{name} -> {_pod_ip(i, 1)}:8080" -j {sep_b}',
        ]
        for sep, side in ((sep_a, 0), (sep_b, 1)):
            rules += [
                f'-A {sep} -s {_pod_ip(i, side)}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ',
                f'-A {sep} -p tcp -m comment --comment "{name}" -m tcp -j DNAT --to-destination '
                f"{_pod_ip(i, side)}:8080",
            ]
        if i in nodeports:
            ext = f"KUBE-EXT-{i:016d}"
            chains.append(ext)
            rules += [
                f'-A KUBE-NODEPORTS -p tcp -m comment --comment "{name}" -m tcp --dport '
                f"{nodeports[i]} -j {ext}",
                f'-A {ext} -m comment --comment "masquerade traffic for {name} external '
                'destinations" -j KUBE-MARK-MASQ',
                f"-A {ext} -j {svc}",
            ]
    rules.append(
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the '
        'last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
    )
    nat = ["*nat", *(f":{c} - [0:0]" for c in chains), *rules, "COMMIT"]
    filt = [
        "*filter",
        ":KUBE-FORWARD - [0:0]",
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-FIREWALL - [0:0]",
        "-A INPUT -j KUBE-FIREWALL",
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" '
        "-j KUBE-SERVICES",
        "-A OUTPUT -j KUBE-FIREWALL",
        '-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming '
        'localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP',
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark '
        "0x4000/0x4000 -j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
        "--ctstate RELATED,ESTABLISHED -j ACCEPT",
        '-A KUBE-SERVICES -d 10.96.250.250/32 -p tcp -m comment --comment "default/gone:http has no '
        'endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable',
        "COMMIT",
    ]
    return "\n".join([*filt, *nat]) + "\n"


def docker_host(published: int | None = None) -> str:
    """Docker's rules (FORWARD policy DROP); with `published`, a container port published there."""
    dnat = (
        [
            f"-A DOCKER ! -i docker0 -p tcp -m tcp --dport {published} -j DNAT --to-destination "
            "172.17.0.2:80"
        ]
        if published
        else []
    )
    accept = (
        ["-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT"]
        if published
        else []
    )
    return (
        "\n".join(
            [
                "*filter",
                ":FORWARD DROP [0:0]",
                ":DOCKER - [0:0]",
                ":DOCKER-ISOLATION-STAGE-1 - [0:0]",
                ":DOCKER-ISOLATION-STAGE-2 - [0:0]",
                ":DOCKER-USER - [0:0]",
                "-A FORWARD -j DOCKER-USER",
                "-A FORWARD -j DOCKER-ISOLATION-STAGE-1",
                "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A FORWARD -o docker0 -j DOCKER",
                "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT",
                "-A FORWARD -i docker0 -o docker0 -j ACCEPT",
                *accept,
                "-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2",
                "-A DOCKER-ISOLATION-STAGE-1 -j RETURN",
                "-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP",
                "-A DOCKER-ISOLATION-STAGE-2 -j RETURN",
                "-A DOCKER-USER -j RETURN",
                "COMMIT",
                "*nat",
                ":DOCKER - [0:0]",
                "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
                "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
                "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
                "-A DOCKER -i docker0 -j RETURN",
                *dnat,
                "COMMIT",
            ]
        )
        + "\n"
    )


UFW_CHAINS = (
    "ufw-before-logging-forward",
    "ufw-before-forward",
    "ufw-user-forward",
    "ufw-after-forward",
    "ufw-after-logging-forward",
    "ufw-reject-forward",
    "ufw-track-forward",
)


def ufw_host(user_forward: tuple[str, ...] = ()) -> str:
    """ufw with `default deny routed` (FORWARD and INPUT policy DROP) and its forward chains.

    `user_forward` are rule specs for ufw-user-forward (what `ufw route ...` writes).
    """
    return (
        "\n".join(
            [
                "*filter",
                ":INPUT DROP [0:0]",
                ":FORWARD DROP [0:0]",
                ":OUTPUT ACCEPT [0:0]",
                *(f":{c} - [0:0]" for c in UFW_CHAINS),
                "-A INPUT -i lo -j ACCEPT",
                "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                *(f"-A FORWARD -j {c}" for c in UFW_CHAINS if c != "ufw-user-forward"),
                "-A ufw-before-forward -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A ufw-before-forward -p icmp -m icmp --icmp-type 3 -j ACCEPT",
                "-A ufw-before-forward -p icmp -m icmp --icmp-type 11 -j ACCEPT",
                "-A ufw-before-forward -j ufw-user-forward",
                *(f"-A ufw-user-forward {spec}" for spec in user_forward),
                "-A ufw-after-logging-forward -m limit --limit 3/min --limit-burst 10 -j LOG "
                '--log-prefix "[UFW BLOCK] "',
                "COMMIT",
            ]
        )
        + "\n"
    )


def restrictive_output() -> str:
    """A home/university router's filter: OUTPUT policy DROP, only DNS, loopback and replies out."""
    return (
        "\n".join(
            [
                "*filter",
                ":OUTPUT DROP [0:0]",
                "-A OUTPUT -o lo -j ACCEPT",
                "-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A OUTPUT -p udp -m udp --dport 53 -j ACCEPT",
                "-A OUTPUT -p icmp -j ACCEPT",
                "COMMIT",
            ]
        )
        + "\n"
    )
