"""Provides SampleEngine: the seed's NAT box as fixed data, for tests, snapshots, screenshots and the
viewer benchmark. Same interface as Engine; deterministic; changes only its own memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import TYPE_CHECKING

from natbox import conntrack, trace
from natbox.api import ChangePreview, Dashboard, Derived, EngineAPI, FlowSnapshot, ShownChain
from natbox.checks import ERROR, Finding, diagnose, preflight
from natbox.errors import ConflictError, NatboxError, NotFoundError
from natbox.export import export as export_forwards
from natbox.facts import Facts
from natbox.model import Forward
from natbox.plan import OWN_CHAINS, build_plan, jump_rule
from natbox.ruleset import conflicts, forward_states, parse_save
from natbox.status import display_chains
from natbox.system import InterfaceStat, Route
from natbox.txn import Outcome, apply_lines, remove_lines

SEED = Forward.from_text(
    "192.168.1.30:1234", "10.0.2.50:80", proto="both", name="web", snat="10.0.2.40", mss_clamp=True
)
DNS = Forward.from_text(
    "192.168.1.30:5353",
    "10.0.2.53:53",
    proto="udp",
    name="dns",
    snat="10.0.2.40",
    sources=["192.168.1.0/24"],
)
FOREIGN = {
    "filter": [
        "-A FORWARD -j DOCKER-USER",
        "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        '-A FORWARD -s 192.168.1.0/24 -p tcp -m tcp --dport 22 -m comment --comment "hand made: ssh to the dmz" -j ACCEPT',
        "-A DOCKER-USER -j RETURN",
    ],
    "nat": [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
        '-A POSTROUTING -s 10.0.2.0/24 -o lan0 -m comment --comment "hand made masquerade" -j MASQUERADE',
        "-A DOCKER -i docker0 -j RETURN",
        "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
    ],
}
FOREIGN_CHAINS = {"filter": ["DOCKER-USER"], "nat": ["DOCKER", "KUBE-SERVICES"]}
FOREIGN6 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [40:3200]
:OUTPUT ACCEPT [0:0]
[7:560] -A FORWARD -s 2001:db8:1::/64 -p tcp -m tcp --dport 22 -m comment --comment "hand made: v6 ssh" -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [9:720]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [9:720]
[2:160] -A PREROUTING -d 2001:db8:1::30/128 -p tcp -m tcp --dport 8443 -j DNAT --to-destination [2001:db8:2::60]:443
COMMIT
"""
"""The sample box's ip6tables: one foreign IPv6 rule per table, no natbox forward."""
POLICIES = {
    "filter": ("INPUT ACCEPT", "FORWARD DROP", "OUTPUT ACCEPT"),
    "nat": ("PREROUTING ACCEPT", "INPUT ACCEPT", "OUTPUT ACCEPT", "POSTROUTING ACCEPT"),
}


def sample_save(forwards: list[Forward]) -> str:
    """iptables-save -c text of the sample box: foreign rules plus these natbox forwards."""
    out: list[str] = []
    for table in ("filter", "nat"):
        out.append(f"*{table}")
        out.extend(f":{p} [1200:96000]" for p in POLICIES[table])
        out.extend(f":{c} - [0:0]" for c in FOREIGN_CHAINS[table])
        used = {c for f in forwards for c in build_plan(f).chains}
        jumps = [(b, o) for b, o in OWN_CHAINS[table] if o in used]
        out.extend(f":{own} - [0:0]" for _, own in jumps)
        out.extend(f"[812:65012] {jump_rule(table, b, o).save_line}" for b, o in jumps)
        out.extend(f"[3:180] {line}" for line in FOREIGN[table])
        for fwd in forwards:
            out.extend(f"[406:32506] {r.save_line}" for r in build_plan(fwd).table_rules(table))
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def sample_flows(n: int) -> str:
    """/proc/net/nf_conntrack text: n flows, most of them through the seed forward."""
    lines: list[str] = []
    kinds = ("tcp-est", "udp", "tcp-tw", "icmp", "ssh")
    for i in range(n):
        kind = kinds[i % len(kinds)] if i < 50 else ("udp" if i % 2 else "tcp-est")
        c = f"192.168.{1 + (i // 60000)}.{20 + (i // 3000) % 200}"
        sport = 10000 + i % 50000
        acct = f"packets={3 + i % 17} bytes={180 + (i * 37) % 90000}"
        back = f"packets={2 + i % 11} bytes={120 + (i * 53) % 400000}"
        if kind in ("tcp-est", "tcp-tw"):
            state, ttl = (
                ("ESTABLISHED", 431999 - i % 500)
                if kind == "tcp-est"
                else ("TIME_WAIT", 30 + i % 90)
            )
            lines.append(
                f"ipv4     2 tcp      6 {ttl} {state} src={c} dst=192.168.1.30 sport={sport} dport=1234 "
                f"{acct} src=10.0.2.50 dst=10.0.2.40 sport=80 dport={sport} {back} [ASSURED] mark=0 zone=0 use=2"
            )
        elif kind == "udp":
            lines.append(
                f"ipv4     2 udp      17 {10 + i % 20} src={c} dst=192.168.1.30 sport={sport} dport=1234 "
                f"{acct} src=10.0.2.50 dst=10.0.2.40 sport=80 dport={sport} {back} mark=0 zone=0 use=2"
            )
        elif kind == "icmp":
            lines.append(
                f"ipv4     2 icmp     1 29 src={c} dst=192.168.1.30 type=8 code=0 id={i} {acct} "
                f"src=192.168.1.30 dst={c} type=0 code=0 id={i} {back} mark=0 zone=0 use=2"
            )
        else:
            lines.append(
                f"ipv4     2 tcp      6 7200 ESTABLISHED src={c} dst=192.168.1.30 sport={sport} dport=22 "
                f"{acct} src=192.168.1.30 dst={c} sport=22 dport={sport} {back} [ASSURED] mark=0 zone=0 use=2"
            )
    return "\n".join(lines) + "\n"


@dataclass
class SampleEngine:
    """The seed's box as data. `flow_count` sets the table size (100k for the viewer benchmark)."""

    flow_count: int = 40
    forwards: list[Forward] = field(default_factory=lambda: [SEED, DNS])
    read_only: bool = False
    removed: list[str] = field(default_factory=list)
    applied: list[Forward] = field(default_factory=list)
    ip_forward: bool = True
    waiting: str | None = None
    """The forward in its confirm window (the sample has no watchdog process: rollback() is called)."""
    killed: list[conntrack.Flow] = field(default_factory=list)
    reads: int = 0
    interface_reads: int = 0
    health_reads: int = 0
    polls: int = 0
    """fingerprint() calls: what a poll that finds nothing changed costs."""
    flow_reads: int = 0
    dashboard_delay: float = 0.0
    flow_delay: float = 0.0
    """Seconds each flows() read takes (tests slow it down to see what shows before it is done)."""
    generation: int = 0
    """Bumped by every change, like the nft ruleset generation."""
    saved: set[str] = field(default_factory=lambda: {"web"})
    """Names in the sample's saved set."""
    disabled: list[Forward] = field(default_factory=list)
    """Forwards taken out by disable(), remembered whole."""
    before: tuple[list[Forward], list[Forward], set[str]] | None = None
    """Forwards, disabled and saved as they were before the edit, disable or enable waiting in its
    confirm window (rollback() puts them back)."""

    def __post_init__(self) -> None:
        self._text = sample_flows(self.flow_count)
        self._flows = conntrack.parse_text(self._text).flows

    def fingerprint(self) -> Hashable:
        """Changes with every change of the sample's forwards or flows (as the nft generation does)."""
        self.polls += 1
        return (self.generation, len(self._flows))

    def ready_dashboard(self) -> Dashboard | None:
        """None: the sample makes nothing ahead."""
        return None

    def dashboard(self) -> Dashboard:
        """The sample box's rules and facts; interface counters grow with each read."""
        self.reads += 1
        if self.dashboard_delay:
            time.sleep(self.dashboard_delay)
        rs = parse_save(sample_save(self.forwards))
        rs6 = parse_save(FOREIGN6)

        return Dashboard(
            host="natbox-lab",
            backend="restore (nft)",
            read_only=self.read_only,
            ip_forward=self.ip_forward,
            fill=conntrack.Fill(len(self._flows), 262144, True, False),
            forwards=tuple(forward_states(rs)),
            chains=tuple(
                ShownChain(family, table, chain)
                for family, r in ((4, rs), (6, rs6))
                for table, chain in display_chains(r)
            ),
            interfaces=self._interfaces(),
            taken_at=1_700_000_000.0 + 3 * self.reads,
            saved=frozenset(self.saved),
            rulesets=(rs,),
            disabled=tuple(self.disabled),
        )

    def interfaces(self) -> tuple[InterfaceStat, ...]:
        """The sample's two sides and lo, their counters moving with each read."""
        self.interface_reads += 1
        return self._interfaces()

    def _interfaces(self) -> tuple[InterfaceStat, ...]:
        def wave(step: int) -> int:
            # Traffic that rises and falls from read to read, so sparklines have a shape.
            return sum(
                step * (1 + (i * 7) % 5) // 3 for i in range(self.reads + self.interface_reads)
            )

        return (
            InterfaceStat(
                "lan0",
                ("192.168.1.30",),
                1500,
                True,
                9_000_000 + wave(48_000),
                4_000_000 + wave(31_000),
            ),
            InterfaceStat(
                "dmz0",
                ("10.0.2.40",),
                1400,
                True,
                5_100_000 + wave(30_000),
                8_800_000 + wave(47_000),
            ),
            InterfaceStat("lo", ("127.0.0.1",), 65536, True, 1000, 1000),
        )

    def health(self, data: Dashboard) -> dict[str, list[Finding]]:
        """The core's diagnosis of the forwards in `data`."""
        self.health_reads += 1
        return self.doctor()

    def flows(self, head: bool = False) -> FlowSnapshot:
        """The sample conntrack table, parsed anew on every read as the real engine does."""
        self.flow_reads += 1
        if self.flow_delay:
            time.sleep(self.flow_delay)
        killed = {f.key for f in self.killed}
        end = self._text.find("\n", conntrack.HEAD) + 1 if head else 0
        text = self._text[:end] if end > 0 else self._text
        flows = [f for f in conntrack.parse_text(text).flows if f.key not in killed]
        if text is self._text:
            self._flows = flows
        return FlowSnapshot(
            list(flows),
            conntrack.ForwardIndex(self.forwards),
            conntrack.Fill(len(self._flows), 262144, True, False),
        )

    def local_addresses(self) -> list[tuple[str, str]]:
        """The sample box's addresses, the default route's interface (lan0) first."""
        return [("192.168.1.30", "lan0"), ("10.0.2.40", "dmz0"), ("127.0.0.1", "lo")]

    def listening_ports(self) -> frozenset[tuple[str, int]]:
        """The sample box listens on ssh and a local web UI."""
        return frozenset({("tcp", 22), ("tcp", 8080)})

    def apply_preview(self, fwd: Forward) -> dict[str, list[str]]:
        """What apply(fwd) would commit on the sample box."""
        return apply_lines(parse_save(sample_save(self.forwards)), build_plan(fwd))

    def derive(self, listen_ip: str, backend_ip: str) -> Derived:
        """Routes of the sample box: 192.168.1.0/24 on lan0 (MTU 1500), 10.0.2.0/24 on dmz0 (1400)."""
        mtus = {"lan0": 1500, "dmz0": 1400}
        listen_dev = {"192.168.1.30": "lan0", "10.0.2.40": "dmz0"}.get(listen_ip)
        if backend_ip.startswith("10.0.2."):
            snat, dev = "10.0.2.40", "dmz0"
        elif backend_ip.startswith("192.168.1."):
            snat, dev = "192.168.1.30", "lan0"
        else:
            return Derived(
                None,
                None,
                listen_dev,
                mtus.get(listen_dev or ""),
                None,
                self.ip_forward,
                f"no route to {backend_ip}: Network is unreachable",
            )
        return Derived(
            snat, dev, listen_dev, mtus.get(listen_dev or ""), mtus[dev], self.ip_forward
        )

    def _facts(self, fwd: Forward) -> Facts:
        d = self.derive(str(fwd.listen.ip), str(fwd.backend.ip))
        route = (
            Route(fwd.backend.ip, d.backend_dev, ip_address(d.snat), None)
            if d.backend_dev and d.snat
            else None
        )
        return Facts(
            self.ip_forward,
            {ip_address(a): dev for a, dev in self.local_addresses()},
            route,
            d.route_error,
            {"lan0": 1500, "dmz0": 1400, "lo": 65536},
        )

    def preflight(self, fwd: Forward) -> list[Finding]:
        """The core's preflight over the sample box's facts."""
        return preflight(fwd, parse_save(sample_save(self.forwards)), self._facts(fwd))

    def doctor(self, name: str | None = None, probe: bool = True) -> dict[str, list[Finding]]:
        """The core's diagnosis of the sample box's forwards."""
        rs = parse_save(sample_save(self.forwards))
        return {
            f.name: diagnose(f, rs, self._facts(f), existing=True)
            for f in self.forwards
            if name is None or f.name == name
        }

    def apply(
        self, fwd: Forward, *, confirm_seconds: float | None = None, enable_forwarding: bool = False
    ) -> Outcome:
        """Add the forward to the sample box (same conflict rules as the real one)."""
        conflicts(parse_save(sample_save(self.forwards)), fwd)
        if not self.ip_forward and not enable_forwarding:
            raise NatboxError("IPv4 forwarding is off on this box", "pass --enable-forwarding")
        self.ip_forward = True
        self.forwards.append(fwd)
        self.applied.append(fwd)
        self.generation += 1
        if confirm_seconds is not None:
            self.waiting = fwd.name
        lines = apply_lines(parse_save(sample_save(self.forwards[:-1])), build_plan(fwd))
        return Outcome("apply", fwd.name, "restore (nft)", lines, seconds=0.05)

    def confirm(self) -> str:
        """Keep the waiting forward."""
        if self.waiting is None:
            raise NatboxError("no change waits for confirmation", "")
        name, self.waiting, self.before = self.waiting, None, None
        return name

    def rollback(self) -> str:
        """Remove the waiting forward (or put back what the waiting edit, disable or enable changed)."""
        if self.waiting is None:
            raise NatboxError("no change waits for confirmation", "")
        name, self.waiting = self.waiting, None
        if self.before is not None:
            self.forwards, self.disabled, self.saved = self.before
            self.before = None
        else:
            self.forwards = [f for f in self.forwards if f.name != name]
        self.generation += 1
        return name

    def preview_remove(self, name: str) -> dict[str, list[str]]:
        """What removing `name` would commit on the sample box (nothing for a disabled one)."""
        lines = remove_lines(parse_save(sample_save(self.forwards)), name)
        if not lines and all(f.name != name for f in self.disabled):
            raise NotFoundError(f"there is no forward named {name}", "natbox list shows them")
        return lines

    def remove(self, name: str, *, expect: Forward | None = None) -> Outcome:
        """Drop the forward from the sample box (a disabled one is forgotten); refused if it is
        no longer `expect`."""
        lines = self.preview_remove(name)
        if expect is not None:
            now = next((f for f in [*self.forwards, *self.disabled] if f.name == name), None)
            if now != expect:
                raise ConflictError(f"{name} changed since it was shown", "r reads it again")
        self.forwards = [f for f in self.forwards if f.name != name]
        self.disabled = [f for f in self.disabled if f.name != name]
        self.removed.append(name)
        self.generation += 1
        return Outcome("remove", name, "restore (nft)", lines, seconds=0.05)

    def _lines(self, name: str | None, fwd: Forward | None) -> dict[str, list[str]]:
        """The old forward's rules out, then the new one's in, per table."""
        out: dict[str, list[str]] = {}
        if name is not None:
            for table, lines in remove_lines(parse_save(sample_save(self.forwards)), name).items():
                out.setdefault(table, []).extend(lines)
        if fwd is not None:
            others = parse_save(sample_save([f for f in self.forwards if f.name != name]))
            for table, lines in apply_lines(others, build_plan(fwd)).items():
                out.setdefault(table, []).extend(lines)
        return out

    def _preview(self, action: str, name: str, old: Forward, new: Forward | None) -> ChangePreview:
        others = [f for f in self.forwards if f.name != name]
        findings: tuple[Finding, ...] = ()
        if new is not None:
            rs = parse_save(sample_save(others))
            conflicts(rs, new)
            findings = tuple(preflight(new, rs, self._facts(new)))
        live = name if action != "enable" else None
        return ChangePreview(action, name, old, new, self._lines(live, new), findings)

    def _change(self, preview: ChangePreview, confirm_seconds: float | None) -> Outcome:
        if preview.blocked:
            first = next(f for f in preview.findings if f.severity == ERROR)
            raise NatboxError(first.message, first.fix)
        if confirm_seconds is not None:
            self.before = (list(self.forwards), list(self.disabled), set(self.saved))
            self.waiting = f"{preview.action}:{preview.name}"
        old, new = preview.before, preview.after
        live = [f for f in self.forwards if f.name != preview.name]
        if preview.action == "edit" and new is not None:
            at = [f.name for f in self.forwards].index(preview.name)
            self.forwards = [*live[:at], new, *live[at:]]
            if preview.name in self.saved:  # the saved entry follows the edit
                self.saved = (self.saved - {preview.name}) | {new.name}
        elif preview.action == "disable" and old is not None:
            self.forwards = live
            self.disabled.append(old)
        elif new is not None:
            self.forwards = [*live, new]
            self.disabled = [f for f in self.disabled if f.name != preview.name]
        self.generation += 1
        return Outcome(preview.action, preview.name, "restore (nft)", preview.lines, seconds=0.05)

    def preview_edit(self, name: str, fwd: Forward) -> ChangePreview:
        """What replacing `name` by `fwd` would commit on the sample box."""
        return self._preview("edit", name, self._named(name), fwd)

    def edit(
        self,
        name: str,
        fwd: Forward,
        *,
        confirm_seconds: float | None = None,
        enable_forwarding: bool = False,
        expect: Forward | None = None,
    ) -> Outcome:
        """Replace `name` by `fwd` on the sample box, in its place."""
        self._as_shown(name, expect)
        return self._change(self.preview_edit(name, fwd), confirm_seconds)

    def preview_disable(self, name: str) -> ChangePreview:
        """What disabling `name` would commit on the sample box."""
        return self._preview("disable", name, self._named(name), None)

    def disable(
        self, name: str, *, confirm_seconds: float | None = None, expect: Forward | None = None
    ) -> Outcome:
        """Take `name` out of the sample box and remember it."""
        self._as_shown(name, expect)
        return self._change(self.preview_disable(name), confirm_seconds)

    def _as_shown(self, name: str, expect: Forward | None) -> None:
        if expect is not None and self._named(name) != expect:
            raise ConflictError(f"{name} changed since it was shown", "r reads it again")

    def preview_enable(self, name: str) -> ChangePreview:
        """What enabling the disabled `name` would commit on the sample box."""
        fwd = next((f for f in self.disabled if f.name == name), None)
        if fwd is None:
            raise NotFoundError(f"there is no disabled forward named {name}", "natbox list")
        return self._preview("enable", name, fwd, fwd)

    def enable(
        self, name: str, *, confirm_seconds: float | None = None, enable_forwarding: bool = False
    ) -> Outcome:
        """Put the disabled `name` back on the sample box."""
        return self._change(self.preview_enable(name), confirm_seconds)

    def kill_forward_flows(self, name: str) -> int:
        """Forget every flow of forward `name`."""
        index = conntrack.ForwardIndex(self.forwards)
        return self.kill([f for f in self._flows if index(f) == name])

    def trace(
        self,
        fwd: Forward,
        *,
        timeout: float = 30.0,
        on_packet: Callable[[trace.TracedPacket], None] | None = None,
        stop: threading.Event | None = None,
    ) -> trace.Result:
        """The sample box has no kernel to ask: no packet comes (never touches this host)."""
        return trace.Result([], timed_out=True)

    def save(self, name: str) -> str:
        """Add `name` to the sample's saved set."""
        self._named(name)
        self.saved.add(name)
        return f"saved {name}: restored at boot"

    def forget(self, name: str) -> str:
        """Drop `name` from the sample's saved set."""
        if name not in self.saved:
            raise NatboxError(f"{name} is not saved", "w saves the marked forward")
        self.saved.discard(name)
        return f"forgot {name}: its rules stay until removed, it is not restored at boot"

    def export(self, name: str, fmt: str) -> str:
        """The forward as restore, commands or ansible text."""
        return export_forwards([self._named(name)], fmt)

    def _named(self, name: str) -> Forward:
        for fwd in self.forwards:
            if fwd.name == name:
                return fwd
        raise NotFoundError(f"there is no forward named {name}", "natbox list shows them")

    def kill(self, flows: list[conntrack.Flow]) -> int:
        """Forget these flows."""
        keys = {f.key for f in flows}
        before = len(self._flows)
        self._flows = [f for f in self._flows if f.key not in keys]
        self.killed.extend(flows)
        return before - len(self._flows)


def scaled_forwards(n: int) -> list[Forward]:
    """`n` forwards like a hosting box's (one per customer), for the 1,000-row dashboard tests."""
    return [
        Forward.from_text(
            f"192.168.1.30:{20000 + i}",
            f"10.0.{2 + i // 250}.{(i % 250) + 2}:80",
            name=f"cust-{i:04d}",
            snat="10.0.2.40",
        )
        for i in range(n)
    ]


if TYPE_CHECKING:  # mypy checks that the sample keeps the contract the TUI sees
    _contract: EngineAPI = SampleEngine()
