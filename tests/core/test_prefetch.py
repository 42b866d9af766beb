"""`natbox list`'s early save (natbox.prefetch): started only for a listing, taken only by the
listing read, once, and thrown away when supervise() did anything. Fake iptables tools on PATH."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from natbox import cli, prefetch, watchdog
from natbox.backends.detect import detect
from natbox.backends.restore import RestoreBackend
from natbox.plan import OWN_CHAINS
from natbox.ruleset import WATCHED
from natbox.status import listing_read

SAVE = r"*nat\n:PREROUTING ACCEPT [0:0]\n[1:60] -A PREROUTING -m comment --comment %s -j ACCEPT\nCOMMIT\n"


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """iptables (nft) whose saves print the comment in tmp_path/said, read when they start."""
    said = tmp_path / "said"
    said.write_text("before")
    scripts = {
        "iptables": f"echo ran >> {tmp_path}/ran; echo 'iptables v1.8.9 (nf_tables)'",
        "iptables-nft-save": f"printf '{SAVE}' \"$(cat {said})\"",
        "ip6tables-nft-save": "printf '*nat\\n:PREROUTING ACCEPT [0:0]\\nCOMMIT\\n'",
    }
    for name, body in scripts.items():
        (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.delenv("NATBOX_BACKEND", raising=False)
    monkeypatch.setattr(prefetch, "_version", None)
    yield said
    prefetch.discard()


def _comment(backend: RestoreBackend, early: bool) -> str:
    chain = backend.read(natbox_only=False, early=early).chain("nat", "PREROUTING")
    assert chain is not None
    return chain.rules[0].text.split("--comment ")[1].split()[0]


def _listed(backend: RestoreBackend) -> str:
    chain = listing_read(backend).chain("nat", "PREROUTING")
    assert chain is not None
    return chain.rules[0].text.split("--comment ")[1].split()[0]


def test_listing_takes_the_save_started_early_once(tools: Path) -> None:
    prefetch.start(["list", "--json"])
    assert set(prefetch._started) == {("iptables-nft-save", "-c"), ("ip6tables-nft-save", "-c")}
    prefetch._started[("iptables-nft-save", "-c")].proc.wait()  # it has read `before`
    tools.write_text("after")
    backend = RestoreBackend("nft")
    assert _comment(backend, early=False) == "after"  # an ordinary read never takes it
    # nor a full read that asks for it: a listing's early save holds only what a listing shows
    assert _comment(backend, early=True) == "after"
    assert ("iptables-nft-save", "-c") not in prefetch._started  # (it was dropped)
    prefetch.start(["list"])
    prefetch._started[("iptables-nft-save", "-c")].proc.wait()
    tools.write_text("later")
    assert _listed(backend) == "after"  # the listing read takes it
    assert _listed(backend) == "later"  # once only
    rs = listing_read(backend.for_family(6))
    assert "nat" in rs.tables and not prefetch._started
    assert detect().active == "nft"  # from what start() saw: `iptables -V` ran once per start
    assert (tools.parent / "ran").read_text() == "ran\nran\n"


@pytest.mark.parametrize(
    ("args", "env"),
    [(["list", "--yes"], None), (["add", "x"], None), ([], "iptc"), (["list"], "iptc")],
)
def test_only_a_listing_or_the_dashboard_with_the_automatic_backend_starts_one(
    tools: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], env: str | None
) -> None:
    if env:
        monkeypatch.setenv("NATBOX_BACKEND", env)
    prefetch.start(args)
    assert not prefetch._started


def test_the_dashboard_lists_its_chains_early_and_notes_the_generation_first(
    tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`natbox` alone (the dashboard) lists the chains it shows (both families), only those that
    netlink says exist; the nft generation is noted before they start, so the dashboard can tell
    whether the rules moved since (Engine.prefetch)."""
    listing = (
        "-P PREROUTING ACCEPT -c 5 300\n-A PREROUTING -m comment --comment x -c 1 60 -j ACCEPT"
    )
    (tools.parent / "iptables-nft").write_text(f"#!/bin/sh\ncat <<'EOF'\n{listing}\nEOF\n")
    (tools.parent / "iptables-nft").chmod(0o755)
    noted: list[int] = []
    asked: list[int] = []
    monkeypatch.setattr(
        prefetch, "nft_generation", lambda: noted.append(len(prefetch._started)) or 41
    )

    def present(family: int, wanted: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
        asked.append(family)
        assert wanted == prefetch.SHOWN_CHAINS
        return {"nat": ["PREROUTING"]} if family == 4 else {}

    monkeypatch.setattr(prefetch, "chains_present", present)
    prefetch.start([])
    assert set(prefetch._started) == {("-S", "iptables-nft"), ("-S", "ip6tables-nft")}
    assert noted == [0] and prefetch.generation() == 41 and asked == [4, 6]
    # The built-ins not there are declared as iptables-nft-save declares them.
    assert prefetch.shown(4, 5.0) == (
        "*nat\n:PREROUTING ACCEPT [5:300]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
        "[1:60] -A PREROUTING -m comment --comment x -j ACCEPT\nCOMMIT\n",
        "",
    )
    assert prefetch.shown(6, 5.0) == ("", "")  # no table of IPv6: an empty save
    assert not prefetch._started  # taken once each
    # A save (a listing's read) never takes them: only read_shown() does.
    prefetch.start([])
    assert prefetch.take(["iptables-nft-save", "-c"], 5.0, WATCHED) is None
    prefetch.discard()
    assert prefetch.generation() is None and not prefetch._started
    # Without a generation the dashboard could not tell a stale early read: none is started.
    monkeypatch.setattr(prefetch, "nft_generation", lambda: None)
    prefetch.start([])
    assert not prefetch._started


def test_a_failed_listing_gives_nothing_so_the_read_saves_instead(
    tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain iptables cannot list (a native nft chain, `incompatible`) fails the whole shown
    read: the backend then saves the whole ruleset (read_shown falls back to read)."""
    (tools.parent / "iptables-nft").write_text("#!/bin/sh\necho incompatible >&2; exit 1\n")
    (tools.parent / "iptables-nft").chmod(0o755)
    monkeypatch.setattr(prefetch, "chains_present", lambda f, w: {"nat": ["PREROUTING"]})
    assert prefetch.shown(4, 5.0) is None
    backend = RestoreBackend("nft")
    monkeypatch.setattr(RestoreBackend, "read", lambda self, *a, **k: "saved")
    assert backend.read_shown() == "saved"


@pytest.mark.parametrize(
    ("listed", "saved"),
    [
        ("-P FORWARD DROP -c 7 420", ":FORWARD DROP [7:420]"),
        ("-N NATBOX-FORWARD", ":NATBOX-FORWARD - [0:0]"),
        ("-A FORWARD -s 1.2.3.4/32 -c 0 0", "[0:0] -A FORWARD -s 1.2.3.4/32"),
        ("-A FORWARD -c 3 9 -g FOO", "[3:9] -A FORWARD -g FOO"),
        (
            '-A FORWARD -m comment --comment "a -c 1 2 -j X" -c 4 5 -j ACCEPT',
            '[4:5] -A FORWARD -m comment --comment "a -c 1 2 -j X" -j ACCEPT',
        ),
        (
            '-A FORWARD -c 6 7 -j LOG --log-prefix " -c 3 4 -j Z"',
            '[6:7] -A FORWARD -j LOG --log-prefix " -c 3 4 -j Z"',
        ),
        (
            '-A FORWARD -m comment --comment "say \\" -c 1 2" -c 8 9 -j ACCEPT',
            '[8:9] -A FORWARD -m comment --comment "say \\" -c 1 2" -j ACCEPT',
        ),
        (  # a comment that ends in a backslash (printed `\\`), then a quoted log prefix
            '-A FORWARD -m comment --comment "x\\\\" -c 11 1100 -j LOG --log-prefix " -c 66 77 "',
            '[11:1100] -A FORWARD -m comment --comment "x\\\\" -j LOG --log-prefix " -c 66 77 "',
        ),
    ],
)
def test_listed_lines_become_the_saves(listed: str, saved: str) -> None:
    """`iptables -S -v` prints counters as ` -c PKTS BYTES` before the target; the save prints
    them as `[PKTS:BYTES]` first. A `-c` inside a quoted comment or log prefix is text."""
    chain = "NATBOX-FORWARD" if "NATBOX" in listed else "FORWARD"
    lines = prefetch.as_save({"filter": [chain]}, {("filter", chain): listed + "\n"})
    assert lines[0] == "*filter\n" and saved + "\n" in lines and lines[-1] == "COMMIT\n"


def test_the_shown_chains_are_the_watched_ones_and_natboxs_own() -> None:
    for table in ("nat", "filter"):
        own = sorted(chain for _, chain in OWN_CHAINS[table])
        shown = prefetch.SHOWN_CHAINS[table]
        assert set(shown) == {*WATCHED[table], *own}
        assert shown[-len(own) :] == tuple(own)  # natbox's last, by name, as the save has them


def test_supervise_that_did_something_discards_it(
    tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setattr(watchdog, "supervise", lambda: None)
    prefetch.start(["list"])
    cli._supervise()
    assert prefetch._started  # nothing happened: the early save stands
    monkeypatch.setattr(watchdog, "supervise", lambda: "web rolled back: not confirmed")
    cli._supervise()
    assert not prefetch._started
    tools.write_text("after")
    assert _comment(RestoreBackend("nft"), early=True) == "after"


def test_a_first_dashboard_whose_recovery_moved_the_rules_still_says_what_natbox_did(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first Dashboard (made while Textual loads) ran the start-up recovery, which changed the
    rules, so its generation is stale and the dashboard reads again; that read does not recover
    twice, so what the first one did (a rollback, an undone change) must be carried over."""
    from natbox import engine as engine_module
    from natbox.api import Dashboard
    from natbox.conntrack import Fill

    def board(recovered: str | None) -> Dashboard:
        return Dashboard(
            "box", "restore (nft)", False, True, Fill(0, 0, False, False), recovered=recovered
        )

    engine = engine_module.Engine()
    engine._first = lambda: (board("rolled back web: not confirmed within 30 s"), 7)
    monkeypatch.setattr(engine_module, "nft_generation", lambda: 8)  # the rollback moved it
    monkeypatch.setattr(engine, "_read_dashboard", lambda: board(None))
    assert engine.dashboard().recovered == "rolled back web: not confirmed within 30 s"
    assert engine.dashboard().recovered is None  # once: later reads are the dashboard's own


def test_the_screen_takes_the_first_dashboard_only_when_it_is_ready_and_current(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ready_dashboard() never waits: the screen shows the Dashboard made while the UI loaded in
    its first frame when it is done and its generation is current, and reads as usual otherwise."""
    import threading
    import time

    from natbox import engine as engine_module
    from natbox.api import Dashboard
    from natbox.conntrack import Fill
    from natbox.overlap import in_background

    board = Dashboard("box", "restore (nft)", False, True, Fill(0, 0, False, False))
    engine = engine_module.Engine()
    generation = [7]
    monkeypatch.setattr(engine_module, "nft_generation", lambda: generation[0])
    release = threading.Event()
    engine._first = in_background(lambda: (release.wait(5), (board, 7))[1])
    started = time.monotonic()
    assert engine.ready_dashboard() is None  # not made yet: no waiting for it
    assert time.monotonic() - started < 1.0
    release.set()
    engine._first()  # made now
    generation[0] = 8
    assert engine.ready_dashboard() is None  # stale: left for dashboard(), which reads again
    assert engine._first is not None
    generation[0] = 7
    assert engine.ready_dashboard() is board
    assert engine.ready_dashboard() is None  # once


@pytest.mark.parametrize(
    "listed",
    [
        "-A FORWARD -j ACCEPT",  # an iptables whose -S -v prints no counters
        "-A FORWARD -i a -c 1 2 -c 5 600 -j ACCEPT",  # an interface `a -c 1 2`, printed unquoted
    ],
)
def test_a_rule_whose_counters_are_not_certain_is_not_taken(listed: str) -> None:
    """No counters, or two candidates: the listing is not taken (the save is read instead), never
    shown with made-up or misread counters."""
    with pytest.raises(ValueError):
        prefetch.as_save({"filter": ["FORWARD"]}, {("filter", "FORWARD"): listed + "\n"})


def test_where_netlink_cannot_tell_the_dashboards_saves_start_early(
    tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A built-in's name on a chain iptables did not make (or no netlink): the shown read will be
    the save, so the save starts with the process, as it did before the listings."""
    monkeypatch.setattr(prefetch, "nft_generation", lambda: 41)
    monkeypatch.setattr(prefetch, "chains_present", lambda family, wanted: None)
    prefetch.start([])
    assert set(prefetch._started) == {("iptables-nft-save", "-c"), ("ip6tables-nft-save", "-c")}
    assert prefetch.shown(4, 5.0) is None
    backend = RestoreBackend("nft")
    rs = backend.read_shown()  # the early save, taken as a listing's read
    assert ("iptables-nft-save", "-c") not in prefetch._started
    assert rs.chain("nat", "PREROUTING") is not None
