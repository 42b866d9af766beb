"""`natbox trace` on the real kernel (iptables-nft + xtables-monitor inside the nat box's namespace):
the path of a working forward, the REJECT or the native nftables chain that drops it, and no TRACE
rule left behind after a normal exit, Ctrl-C, or SIGKILL + natbox recover."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from natbox.lab import NAT_LAN_IP, SERVER_IP, Lab
from tests.lab.test_diagnosis import SEED, add


def armed(lab: Lab) -> bool:
    return "natbox-trace" in lab.nat_exec("iptables-nft-save", "-t", "raw").stdout


def start(lab: Lab, *args: str) -> subprocess.Popen[str]:
    proc = lab.spawn_capture(lab.nat, sys.executable, "-m", "natbox", "trace", *args)
    deadline = time.monotonic() + 15
    while not armed(lab):
        assert proc.poll() is None, "natbox trace ended before arming"
        assert time.monotonic() < deadline, "the TRACE rules never appeared"
        time.sleep(0.05)
    return proc


def traced(lab: Lab, *args: str) -> tuple[int, dict[str, object]]:
    proc = start(lab, "tcp-1234", "--timeout", "15", "--json", *args)
    lab.fetch(timeout=1)
    out, _ = proc.communicate(timeout=30)
    assert not armed(lab), "no TRACE rule after a normal exit"
    return proc.returncode, json.loads(out)


def test_working_forward_shows_dnat_and_snat(lab: Lab) -> None:
    add(lab, *SEED)
    rc, data = traced(lab)
    packets = data["packets"]
    assert rc == 0 and isinstance(packets, list) and packets
    whats = [s["what"] for p in packets for s in p["steps"]]
    assert f"DNAT to {SERVER_IP}:80  [natbox]" in whats and "SNAT to 10.0.2.40  [natbox]" in whats
    assert packets[0]["outcome"] == "forwarded out dmz0"
    assert any(p["direction"] == "reply" and p["outcome"] == "forwarded out lan0" for p in packets)


def test_a_reject_before_natbox_is_named(lab: Lab) -> None:
    add(lab, *SEED)
    lab.nat_exec("iptables", "-I", "FORWARD", "1", "-d", SERVER_IP, "-j", "REJECT")
    rc, data = traced(lab)
    last = data["packets"][-1]  # type: ignore[index]
    assert rc == 1 and last["dropped"]
    assert last["outcome"].startswith(
        f"dropped by filter:FORWARD rule: -A FORWARD -d {SERVER_IP}/32 -j REJECT"
    )


def test_a_native_nftables_drop_is_named(lab: Lab) -> None:
    add(lab, *SEED)
    lab.nat_exec(
        "nft",
        "-f",
        "-",
        stdin="table inet fw {\n chain filter_fwd {\n  type filter hook forward priority 0; policy drop;\n }\n}\n",
    )
    rc, data = traced(lab)
    assert (
        rc == 1
        and data["packets"][-1]["outcome"] == "dropped by nftables inet fw/filter_fwd (policy DROP)"
    )  # type: ignore[index]


def test_human_output_and_ctrl_c_leave_no_trace_rule(lab: Lab) -> None:
    add(lab, *SEED)
    proc = start(lab, f"{NAT_LAN_IP}:1234", "--timeout", "30")
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 130 and out.startswith("tracing tcp-1234"), out
    assert not armed(lab)


def test_sigkill_then_recover_removes_the_trace_rules(lab: Lab) -> None:
    add(lab, *SEED)
    proc = start(lab, "tcp-1234", "--timeout", "30")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert armed(lab), "a SIGKILL leaves them (that is what recover is for)"
    out = lab.natbox("recover")
    assert out.returncode == 0 and "TRACE rule(s)" in out.stdout, out.stdout + out.stderr
    assert not armed(lab)
    assert lab.fetch() is not None, "the forward itself is untouched"
