"""Drift (#15 item 5, the dashboard half): saved forwards whose kernel copy changed, saved forwards
gone from the kernel, natbox jumps no longer first; shown as DRIFT in SAVED, and warnings."""

from __future__ import annotations

from rich.text import Text

from natbox.checks import Finding, Severity
from natbox.engine import drift
from natbox.model import Forward
from natbox.plan import build_plan
from natbox.ruleset import forward_states, parse_save
from tui.screens.dashboard import health_cell, saved_cell

WEB = Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", name="web", snat="10.0.2.40")
DNS = Forward.from_text(
    "192.168.1.30:5353", "10.0.2.53:53", name="dns", proto="udp", snat="10.0.2.40"
)


def kernel(*forwards: Forward, before_jump: str = "") -> str:
    text = "".join(build_plan(f).restore_text() for f in forwards[:1])
    text += "".join(build_plan(f).restore_text(setup_tables=()) for f in forwards[1:])
    if before_jump:
        text = text.replace("-I FORWARD 1 ", f"{before_jump}\n-I FORWARD 1 ", 1)
    return text


def save_of(restore_text: str) -> str:
    """The restore text as iptables-save would print it back (jumps appended in order)."""
    out: list[str] = []
    for line in restore_text.splitlines():
        if line.startswith("-N "):
            out.append(f":{line[3:]} - [0:0]")
        elif line.startswith("-I "):
            _, chain, _pos, spec = line.split(" ", 3)
            out.append(f"-A {chain} {spec}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def states_and_rs(text: str) -> tuple[tuple[object, ...], list[object]]:
    rs = parse_save(save_of(text))
    return tuple(forward_states(rs)), [rs]


def test_changed_saved_forward_is_drifted_and_missing_one_warned() -> None:
    moved = Forward.from_text("192.168.1.30:1234", "10.0.2.51:80", name="web", snat="10.0.2.40")
    states, rulesets = states_and_rs(kernel(moved))
    drifted, warnings = drift([WEB, DNS], states, rulesets)  # type: ignore[arg-type]
    assert drifted == frozenset({"web"})
    assert any("saved forward dns is not in the kernel" in w for w in warnings)


def test_same_forward_is_not_drifted() -> None:
    states, rulesets = states_and_rs(kernel(WEB))
    assert drift([WEB], states, rulesets) == (frozenset(), [])  # type: ignore[arg-type]


def test_jump_no_longer_first_is_warned() -> None:
    states, rulesets = states_and_rs(
        kernel(WEB, before_jump="-A FORWARD -s 192.0.2.1/32 -j ACCEPT")
    )
    _, warnings = drift([WEB], states, rulesets)  # type: ignore[arg-type]
    assert any("no longer first in filter FORWARD" in w for w in warnings), warnings


def test_saved_cell_and_health_cell_show_one_word() -> None:
    cell = saved_cell("web", frozenset({"web"}), frozenset({"web"}))
    assert isinstance(cell, Text) and cell.plain == "DRIFT"
    assert saved_cell("web", frozenset({"web"}), frozenset()) == "yes"
    assert saved_cell("x", frozenset({"web"}), frozenset()) == "no"
    assert saved_cell("x", None, frozenset()) == "?"
    many = [Finding(f"c{i}", Severity.WARNING, "m", "f") for i in range(2000)]
    assert health_cell(many, True).plain == "warn", "the worst severity, never a count"
    assert health_cell([*many, Finding("e", Severity.ERROR, "m", "f")], True).plain == "error"
