"""Provides the seed's lab: client, nat box and server in network namespaces this process creates.

    client 192.168.1.20 (eth0) -- (lan0) 192.168.1.30 [nat] 10.0.2.40 (dmz0) -- (eth0) 10.0.2.50 server

Neither client nor server has a route to the other subnet, exactly as in the article. The server
runs an HTTP server and a UDP echo, both on port 80. Everything is torn down by `close()`: the
processes started here (by pid), then the namespaces. No traffic ever leaves these namespaces.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENT_IP, NAT_LAN_IP, NAT_DMZ_IP, SERVER_IP = (
    "192.168.1.20",
    "192.168.1.30",
    "10.0.2.40",
    "10.0.2.50",
)
# The same topology in IPv6 (documentation prefix, inside the lab only).
CLIENT_IP6, NAT_LAN_IP6, NAT_DMZ_IP6, SERVER_IP6 = (
    "2001:db8:1::20",
    "2001:db8:1::30",
    "2001:db8:2::40",
    "2001:db8:2::50",
)
PAGE_TOKEN = "natbox-lab-server-page"

_UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(4096)
    s.sendto(b"echo:" + data, peer)
"""

_HTTP_GET = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
        sys.stdout.write(r.read().decode())
except Exception as exc:
    sys.stdout.write(f"FAILED: {exc}")
    sys.exit(1)
"""

_UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
try:
    sys.stdout.write(s.recvfrom(4096)[0].decode())
except Exception as exc:
    sys.stdout.write(f"FAILED: {exc}")
    sys.exit(1)
"""


_TRAFFIC = """
import socket, sys, time, urllib.request
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        urllib.request.urlopen("http://192.168.1.30:1234/", timeout=1).read()
    except Exception:
        pass
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    try:
        s.sendto(b"ping", ("192.168.1.30", 1234))
        s.recvfrom(100)
    except Exception:
        pass
    s.close()
    time.sleep(0.4)
"""

_FLOOD = """
import socket, struct, sys
n, sent = int(sys.argv[1]), 0
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
dst = socket.inet_aton("192.168.1.30")
for host in range(20, 40):
    src = socket.inet_aton(f"192.168.1.{host}")
    for sport in range(10000, 60000):
        if sent == n:
            break
        udp = struct.pack("!HHHH", sport, int(sys.argv[2]) + sent % int(sys.argv[3]), 9, 0) + b"x"
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 29, 0, 0, 64, 17, 0, src, dst)
        s.sendto(ip + udp, ("192.168.1.30", 0))
        sent += 1
print(sent)
"""

# A few rules natbox does not own, so the dashboard has foreign rules to show (Docker-like, hand-made).
DEMO_FOREIGN = """*filter
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -s 192.168.1.0/24 -p tcp -m tcp --dport 22 -m comment --comment "hand made: ssh to the dmz" -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
*nat
-A POSTROUTING -s 10.0.2.0/24 -o lan0 -m comment --comment "hand made masquerade" -j MASQUERADE
COMMIT
"""


def sh(
    *argv: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command (argv, no shell), raising with its stderr when check fails."""
    proc = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, check=False, timeout=60
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class Lab:
    """The seed topology in three fresh namespaces named <tag>-{c,n,s} (tag nbt-<unique> by default)."""

    def __init__(self, tag: str | None = None) -> None:
        # NATBOX_LAB_PREFIX: a private prefix per person running labs on a shared machine.
        prefix = os.environ.get("NATBOX_LAB_PREFIX", "nbt-")
        tag = tag or f"{prefix}{os.getpid()}-{secrets.token_hex(3)}"
        self.client, self.nat, self.server = (f"{tag}-c", f"{tag}-n", f"{tag}-s")
        self.procs: list[subprocess.Popen[str]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="nbt-lab-"))
        self.lockfile = str(self.workdir / "xtables.lock")
        self.state_dir = str(self.workdir / "state")
        self.env = {
            **os.environ,
            "XTABLES_LOCKFILE": self.lockfile,
            "NATBOX_STATE_DIR": self.state_dir,
        }

    # -- building -------------------------------------------------------------------------
    def up(self) -> Lab:
        """Create namespaces, links, addresses and the servers."""
        try:
            for ns in (self.client, self.nat, self.server):
                sh("ip", "netns", "add", ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            # veth pairs are created inside the namespaces: no name ever lands in the host's.
            sh(
                "ip",
                "-n",
                self.client,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "lan0",
                "netns",
                self.nat,
            )
            sh(
                "ip",
                "-n",
                self.server,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "dmz0",
                "netns",
                self.nat,
            )
            for ns, dev, addr in (
                (self.client, "eth0", f"{CLIENT_IP}/24"),
                (self.nat, "lan0", f"{NAT_LAN_IP}/24"),
                (self.nat, "dmz0", f"{NAT_DMZ_IP}/24"),
                (self.server, "eth0", f"{SERVER_IP}/24"),
            ):
                sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
                sh("ip", "-n", ns, "link", "set", dev, "up")
            for ns, dev, addr in (
                (self.client, "eth0", f"{CLIENT_IP6}/64"),
                (self.nat, "lan0", f"{NAT_LAN_IP6}/64"),
                (self.nat, "dmz0", f"{NAT_DMZ_IP6}/64"),
                (self.server, "eth0", f"{SERVER_IP6}/64"),
            ):
                # nodad: usable at once, no duplicate-address-detection wait.
                sh("ip", "-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad")
            self.nat_exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
            self.nat_exec("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            www = self.workdir / "www"
            www.mkdir()
            (www / "index.html").write_text(PAGE_TOKEN + "\n")
            self.spawn(
                self.server,
                sys.executable,
                "-m",
                "http.server",
                "80",
                "--bind",
                SERVER_IP,
                "--directory",
                str(www),
            )
            self.spawn(self.server, sys.executable, "-c", _UDP_ECHO, SERVER_IP, "80")
            self.spawn(
                self.server,
                sys.executable,
                "-m",
                "http.server",
                "80",
                "--bind",
                SERVER_IP6,
                "--directory",
                str(www),
            )
            self.spawn(self.server, sys.executable, "-c", _UDP_ECHO, SERVER_IP6, "80")
            self._wait_for_http()
        except BaseException:
            self.close()
            raise
        return self

    def spawn(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        """Start a long-running process inside `ns`; close() ends it by pid."""
        return self._start(ns, argv, subprocess.DEVNULL)

    def spawn_capture(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        """Start a process inside `ns` whose stdout the caller reads; close() ends it if still running."""
        return self._start(ns, argv, subprocess.PIPE)

    def _start(self, ns: str, argv: tuple[str, ...], stdout: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            env=self.env,
        )
        self.procs.append(proc)
        return proc

    def _wait_for_http(self, url: str = f"http://{SERVER_IP}/") -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (
                self.exec(
                    self.server, sys.executable, "-c", _HTTP_GET, url, "1", check=False
                ).returncode
                == 0
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("the lab's HTTP server did not come up")

    def add_backend(self, ip: str, token: str, port: int = 80) -> None:
        """Another backend on the server's side: `ip` (10.0.2.0/24) on the server, with an HTTP
        server on ip:port whose page is `token` (to tell which backend a client reached)."""
        self.exec(self.server, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        www = self.workdir / f"www-{ip}-{port}"
        www.mkdir()
        (www / "index.html").write_text(token + "\n")
        self.spawn(
            self.server,
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            ip,
            "--directory",
            str(www),
        )
        self._wait_for_http(f"http://{ip}:{port}/")

    # -- using ----------------------------------------------------------------------------
    def exec(
        self, ns: str, *argv: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside `ns` with the lab's private xtables lock."""
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env=self.env,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {ns} failed: {proc.stderr.strip()}")
        return proc

    def nat_exec(
        self, *argv: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the nat box."""
        return self.exec(self.nat, *argv, check=check, stdin=stdin)

    def natbox_argv(self, *args: str) -> list[str]:
        """The command line that runs the natbox CLI on the nat box (for callers that start it
        themselves: several at once, with a fault injected)."""
        return ["ip", "netns", "exec", self.nat, sys.executable, "-m", "natbox", *args]

    def natbox(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the natbox CLI on the nat box (never checked: tests look at rc and output)."""
        return self.exec(self.nat, sys.executable, "-m", "natbox", *args, check=False, stdin=stdin)

    def fetch(self, host: str = NAT_LAN_IP, port: int = 1234, timeout: float = 2.0) -> str | None:
        """GET http://host:port/ from the client; the body, or None when it fails."""
        p = self.exec(
            self.client,
            sys.executable,
            "-c",
            _HTTP_GET,
            f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/",
            str(timeout),
            check=False,
        )
        return p.stdout if p.returncode == 0 else None

    def udp_ask(self, host: str = NAT_LAN_IP, port: int = 1234, timeout: float = 2.0) -> str | None:
        """Send one UDP datagram from the client; the answer, or None."""
        p = self.exec(
            self.client, sys.executable, "-c", _UDP_ASK, host, str(port), str(timeout), check=False
        )
        return p.stdout if p.returncode == 0 else None

    def save(self, flavour: str = "nft", counters: bool = False) -> str:
        """The nat box's iptables-save output without timestamps (and without policy counters,
        which iptables-save prints even without -c, unless `counters`)."""
        argv = [f"iptables-{flavour}-save", *(["-c"] if counters else [])]
        out = self.nat_exec(*argv).stdout
        lines = [line for line in out.splitlines() if not line.startswith("#")]
        if not counters:
            lines = [
                re.sub(r" \[\d+:\d+\]$", " [0:0]", line) if line.startswith(":") else line
                for line in lines
            ]
        return "".join(line + "\n" for line in lines)

    def traffic(self, seconds: float = 86400.0) -> None:
        """Start a gentle client: one HTTP request and one UDP echo every ~0.4 s, through the forward."""
        self.spawn(self.client, sys.executable, "-c", _TRAFFIC, str(seconds))

    def flood(self, flows: int, first_port: int = 1234, ports: int = 1) -> int:
        """Create `flows` UDP flows from the client (one datagram per source address and port)."""
        self.nat_exec("sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600")
        out = self.exec(
            self.client, sys.executable, "-c", _FLOOD, str(flows), str(first_port), str(ports)
        )
        return int(out.stdout.strip() or 0)

    # -- tearing down ---------------------------------------------------------------------
    def close(self) -> None:
        """End the processes started here, delete the namespaces and the work dir."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # Processes natbox itself started in the lab (a confirm watchdog, a trace) end with it:
        # they live in the lab's namespaces, and `ip netns pids` names exactly those.
        for ns in (self.client, self.nat, self.server):
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in (self.client, self.nat, self.server):
            sh("ip", "netns", "del", ns, check=False)
        sh("rm", "-rf", str(self.workdir), check=False)


def teardown(tag: str) -> list[str]:
    """Delete the namespaces <tag>-{c,n,s} left by a crashed run, ending the processes inside them."""
    gone: list[str] = []
    listed = sh("ip", "netns", "list", check=False).stdout.split()
    for ns in (f"{tag}-c", f"{tag}-n", f"{tag}-s"):
        if ns not in listed:
            continue
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
        sh("ip", "netns", "del", ns, check=False)
        gone.append(ns)
    return gone
