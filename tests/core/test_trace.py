"""The trace parser and assembler on real xtables-monitor output; arming and cleanup with a fake runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from natbox import trace
from natbox.model import Forward
from natbox.runner import RecordingRunner, Result

FIX = Path(__file__).parent / "fixtures"
FWD = Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", snat="10.0.2.40")


def packets(name: str) -> list[trace.TracedPacket]:
    return trace.Assembler().feed_all((FIX / f"trace-{name}.txt").read_text().splitlines())


def test_parse_step_forms() -> None:
    jump = trace.parse_step(
        " TRACE: 2 649a3e33 nat:PREROUTING:rule:0x3:JUMP:NATBOX-PREROUTING  -4 -t nat -A "
        "PREROUTING -m comment --comment natbox -j NATBOX-PREROUTING"
    )
    assert jump is not None and (jump.table, jump.chain, jump.kind, jump.verdict, jump.target) == (
        "nat",
        "PREROUTING",
        "rule",
        "JUMP",
        "NATBOX-PREROUTING",
    )
    assert jump.rule == "-A PREROUTING -m comment --comment natbox -j NATBOX-PREROUTING"
    assert jump.owner == "natbox" and not jump.native
    policy = trace.parse_step(" TRACE: 1 93f46828 fw:filter_fwd:policy:DROP ")
    assert policy is not None and policy.native and policy.place == "nftables inet fw/filter_fwd"
    assert trace.parse_step("PACKET: 2 x IN=lan0") is None


def test_a_working_forward_shows_dnat_snat_and_the_reply() -> None:
    pkts = packets("working")
    first, reply = pkts[0], pkts[1]
    text = "\n".join(first.lines(FWD))
    assert "DNAT to 10.0.2.50:80  [natbox]" in text and "SNAT to 10.0.2.40  [natbox]" in text
    assert first.lines(FWD)[0].startswith("request: tcp 192.168.1.20:") and "in lan0" in text
    assert first.lines(FWD)[-1] == "  ✓ forwarded out dmz0"
    assert reply.direction(FWD) == "reply" and reply.lines(FWD)[-1] == "  ✓ forwarded out lan0"
    assert not any(p.dropped_by for p in pkts)
    assert "natbox-trace" not in text, "natbox's own TRACE rule is not part of the path"
    d = first.to_dict(FWD)
    assert d["dropped"] is False and any(s["what"].startswith("DNAT") for s in d["steps"])  # type: ignore[attr-defined, index]


def test_a_reject_before_natbox_is_named_with_its_owner() -> None:
    (pkt,) = packets("reject")
    assert pkt.lines(FWD)[-1] == (
        "  ✗ dropped by filter:FORWARD rule: -A FORWARD -d 10.0.2.50/32 -j REJECT --reject-with "
        "icmp-port-unreachable  [other]"
    )


def test_a_native_nftables_drop_names_the_chain() -> None:
    (pkt,) = packets("nft-drop")
    assert pkt.outcome() == "dropped by nftables inet fw/filter_fwd (policy DROP)"


def test_trace_rules_are_scoped_to_the_forward() -> None:
    specs = trace.trace_specs(
        Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", proto="both", snat="10.0.2.40")
    )
    text = [" ".join(s) for s in specs]
    assert text[0].startswith("-d 192.168.1.30/32 -p tcp -m tcp --dport 1234 -m comment")
    assert text[1].startswith("-s 10.0.2.50/32 -p tcp -m tcp --sport 80 -m comment")
    assert len(specs) == 4 and all(s[-2:] == ["-j", "TRACE"] for s in specs)


def test_arm_records_first_and_cleanup_removes_after_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATBOX_STATE_DIR", str(tmp_path / "state"))
    runner = RecordingRunner()
    trace.arm(FWD, runner)
    assert (tmp_path / "state" / "trace.json").exists()
    assert [c[0][:5] for c in runner.calls] == [
        ["iptables-nft", "-t", "raw", "-I", "PREROUTING"]
    ] * 2
    # A live trace (this process) is left alone; a dead one's rules are deleted until none is left.
    assert trace.cleanup_stale(runner) is None
    import json

    (tmp_path / "state" / "trace.json").write_text(
        json.dumps({"pid": 2**22 + 7, "family": 4, "rules": trace.trace_specs(FWD)})
    )
    gone = RecordingRunner(answers={"iptables-nft -t raw -D": Result((), 1, "", "no such rule")})
    assert trace.cleanup_stale(gone) == "removed 0 TRACE rule(s) a killed natbox trace left behind"
    assert not (tmp_path / "state" / "trace.json").exists()


def test_legacy_hosts_say_why_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    legacy = RecordingRunner(
        answers={"iptables -V": Result((), 0, "iptables v1.8.9 (legacy)\n", "")}
    )
    why = trace.unavailable(legacy)
    assert why is not None and "legacy" in why and "\n" not in why
    nft = RecordingRunner(
        answers={"iptables -V": Result((), 0, "iptables v1.8.9 (nf_tables)\n", "")}
    )
    assert trace.unavailable(nft) is None


def test_numeric_verdicts_get_their_names() -> None:
    step = trace.parse_step(
        " TRACE: 2 1 filter:DOCKER-USER:rule:0x9:0xfffffffb  -4 -t filter -A DOCKER-USER -j RETURN"
    )
    assert step is not None and step.verdict == "RETURN" and step.describe() == "RETURN  [docker]"
