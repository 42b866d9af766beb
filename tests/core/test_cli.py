"""The CLI: one line and exit 2 for every user error, never a traceback."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from natbox.cli import COMMANDS, UsageError, build_parser, command_of, main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natbox", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


SEED = ["192.168.1.30:1234", "10.0.2.50:80", "--snat", "10.0.2.40"]


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("natbox ")


GC_PROBE = """
import gc, sys
import natbox.cli as cli
from natbox.__main__ import run
seen = []
build = cli.build_parser
cli.build_parser = lambda *a: (seen.append(gc.isenabled()), build(*a))[1]
sys.argv = ["natbox", "plan", "192.168.1.30:1234", "10.0.2.50:80", "--snat", "10.0.2.40"]
code = run()
print(code, seen, gc.isenabled(), file=sys.stderr)
"""


def test_the_cycle_collector_is_off_for_the_start_up_only() -> None:
    """natbox.__main__ turns Python's cycle collector off for the start-up (#13); a command turns it
    back on once its command line is parsed (the dashboard after its first frame: test_dashboard)."""
    out = subprocess.run(
        [sys.executable, "-c", GC_PROBE], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.stderr.strip().splitlines()[-1] == "0 [False] True", out.stderr


def test_no_arguments_open_the_dashboard_as_the_parser_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`natbox` alone skips building the parser (#13): what it opens the dashboard with is what the
    parser makes of no arguments."""
    import natbox.cli as cli

    opened: list[tuple[str | None, float]] = []
    monkeypatch.setattr(cli, "_run_tui", lambda *a: opened.append(a) or 0)
    assert main([]) == 0
    parsed = build_parser().parse_args([])
    assert parsed.command is None
    assert opened == [(parsed.backend_choice, parsed.confirm_window)]


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *SEED, "--name", "web", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["forward"]["name"] == "web"
    assert [r["kind"] for r in data["rules"]] == ["dnat", "snat", "accept", "return"]
    assert data["restore"].startswith("*filter\n")


def test_plan_text_and_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *SEED]) == 0
    text = capsys.readouterr().out
    assert "DNAT" in text and "*nat" in text
    assert main(["plan", *SEED, "--format", "commands"]) == 0
    assert capsys.readouterr().out.startswith("iptables -w -t filter -N NATBOX-FORWARD\n")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["plan", "192.168.1.30:70000", "10.0.2.50:80", "--snat", "10.0.2.40"],
            "port 70000 is out of range",
        ),
        (
            ["plan", "192.168.1.300:1", "10.0.2.50:80", "--snat", "10.0.2.40"],
            "192.168.1.300 is not an IPv4",
        ),
        (["plan", "192.168.1.30:1", "10.0.2.50:80", "--snat", "x"], "x is not an IPv4 address"),
        (
            ["plan", "192.168.1.30:1", "10.0.2.50:80", "--snat", "10.0.2.40", "--name", "A!"],
            "name 'A!'",
        ),
        (["plan", "192.168.1.30:1", "10.0.2.50:80", "--proto", "sctp"], "invalid choice"),
        (
            ["plan", "192.168.1.30:1", "10.0.2.50:80", "--snat", "10.0.2.40", "--masquerade"],
            "not allowed",
        ),
        (
            [
                "plan",
                "192.168.1.30:1",
                "10.0.2.50:80",
                "--snat",
                "10.0.2.40",
                "--from",
                "1.2.3.4/33",
            ],
            "not an IP network",
        ),
        (["plan", "192.168.1.30:1234"], "required"),
        (
            ["plan", "192.168.1.30:1234", "192.168.1.30:1234", "--snat", "10.0.2.40"],
            "is the listen address itself",
        ),
        (["frobnicate"], "invalid choice"),
        (["edit", "web"], "the edit changes nothing"),
        (["edit", "web", "--listen", "192.168.1.30"], "has no port"),
        (["edit", "web", "--backend", "10.0.2.50:0"], "out of range"),
        (["edit", "web", "--snat", "10.0.2.40", "--masquerade"], "not allowed"),
        (["edit", "web", "--from", "any", "--from", "10.0.0.0/8"], "--from any"),
        (["edit", "web", "--name", "Web!"], "name 'Web!'"),
        (["edit", "web", "--confirm", "2"], "5 to 3600"),
        (["disable"], "required"),
        (["enable", "web", "--confirm", "nan"], "5 to 3600"),
    ],
)
def test_user_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    out = run_cli(*args)
    assert out.returncode == 2, out
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("natbox: ") and needle in out.stderr and "hint:" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_not_root_refuses_writes_before_touching_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import natbox.system

    monkeypatch.setattr(natbox.system.os, "geteuid", lambda: 1000)
    called: list[object] = []
    monkeypatch.setattr("natbox.cli.choose_backend", lambda *a: called.append(a))
    assert main(["add", *SEED, "--yes"]) == 2
    assert main(["remove", "web", "--yes"]) == 2
    assert main(["edit", "web", "--backend", "10.0.2.51:80", "--yes"]) == 2
    assert main(["disable", "web", "--yes"]) == 2
    assert main(["enable", "web", "--yes"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert (
        err
        == ["natbox: natbox must run as root to change the firewall (hint: run it again with sudo)"]
        * 5
    )
    assert called == [], "nothing may be read or touched without root"


def test_parser_choices_agree_with_their_modules() -> None:
    """The parser spells out export's formats and conntrack's sort keys (so building it imports
    neither module): they must stay the same lists."""
    from natbox import cli, conntrack, export

    assert cli.EXPORT_FORMATS == export.FORMATS
    assert cli.FLOW_SORT_KEYS == conntrack.SORT_KEYS


def test_list_imports_only_what_it_runs() -> None:
    """`natbox list` (whose save runs while Python imports) imports neither the conntrack reader,
    the apply machinery (txn, converge, journal), the diagnosis nor typing."""
    code = (
        "import sys; from natbox import cli; p = cli.build_parser(); p.parse_args(['list']); "
        "import natbox.status; "
        "print(' '.join(m for m in ('natbox.conntrack', 'natbox.txn', 'natbox.converge', "
        "'natbox.journal', 'natbox.checks', 'natbox.export', 'typing') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_dashboards_first_frame_imports_no_diagnosis() -> None:
    """What `natbox` imports before its first frame (the CLI, the engine, the app) leaves out the
    diagnosis, the path walk, the box's facts and the trace: they load when first used (#13)."""
    code = (
        "import sys; import natbox.cli, natbox.engine, tui.app; "
        "print(' '.join(m for m in ('natbox.checks', 'natbox.facts', 'natbox.pathmatch', "
        "'natbox.trace', 'natbox.export', 'natbox.modify') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def test_the_one_command_parser_parses_as_the_whole_one() -> None:
    """main() builds only the running subcommand's parser: the same names, the same Namespace,
    the same one-line errors."""
    whole = build_parser()
    assert tuple(_subcommands(whole)) == COMMANDS
    assert _subcommands(build_parser("list")) == ["list"]
    for argv in (
        ["list"],
        ["list", "--json"],
        ["--backend", "restore", "list"],
        ["--backend=iptc", "--confirm-window", "12", "add", *SEED, "--name", "web", "--yes"],
        ["edit", "web", "--listen", "192.168.1.30:80", "--no-mss-clamp"],
        ["conntrack", "--sort", "bytes", "--limit", "5"],
        ["export", "--format", "toml"],
    ):
        command = command_of(argv)
        assert command is not None and command in argv
        assert build_parser(command).parse_args(argv) == whole.parse_args(argv), argv
    for bad in (["list", "--bogus"], ["add", "192.168.1.30:1234"], ["export", "--format", "x"]):
        errors = []
        for parser in (build_parser(command_of(bad)), build_parser()):
            with pytest.raises(UsageError) as info:
                parser.parse_args(bad)
            errors.append(info.value.one_line())
        assert errors[0] == errors[1], errors
    for unclear in ([], ["--help"], ["--back", "iptc", "list"], ["lst"], ["--version", "list"]):
        assert command_of(unclear) is None
