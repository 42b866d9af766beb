"""State files are not trusted blindly: owner, mode, symlinks, FIFOs, devices, size, exact types,
unknown keys, versions, duplicate names and ports; the journal refuses what it does not understand.

Plus a fuzz pass (hypothesis) over the CLI's parsers and both state files: a failure is always one
NatboxError line (exit 2), never a traceback, and nothing else escapes."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natbox import journal, persist, watchdog
from natbox.cli import main
from natbox.errors import NatboxError
from natbox.paths import StateFileError, read_trusted, write_json

GOOD = {
    "version": 1,
    "forwards": [
        {
            "name": "web",
            "proto": "tcp",
            "listen": "192.168.1.30:1234",
            "backend": "10.0.2.50:80",
            "snat": "10.0.2.40",
            "masquerade": False,
            "mss_clamp": False,
            "local": False,
            "sources": [],
        }
    ],
}


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    conf = tmp_path / "etc"
    state = tmp_path / "state"
    conf.mkdir(mode=0o755)
    state.mkdir(mode=0o700)
    monkeypatch.setenv("NATBOX_CONFIG_DIR", str(conf))
    monkeypatch.setenv("NATBOX_STATE_DIR", str(state))
    yield tmp_path


def _saved(dirs: Path, body: object) -> Path:
    path = dirs / "etc" / "forwards.json"
    path.write_text(json.dumps(body, indent=2))
    path.chmod(0o600)
    return path


def test_good_file_loads(dirs: Path) -> None:
    _saved(dirs, GOOD)
    assert [f.name for f in persist.load()] == ["web"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_file_owned_by_another_user_is_refused(dirs: Path) -> None:
    path = _saved(dirs, GOOD)
    os.chown(path, 65534, 65534)
    with pytest.raises(NatboxError, match="not owned by root"):
        persist.load()


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_group_or_world_writable_file_is_refused(dirs: Path, mode: int) -> None:
    path = _saved(dirs, GOOD)
    path.chmod(mode)
    with pytest.raises(NatboxError, match="writable by other users"):
        persist.load()


def test_file_in_world_writable_directory_is_refused(dirs: Path) -> None:
    _saved(dirs, GOOD)
    (dirs / "etc").chmod(0o777)
    with pytest.raises(NatboxError, match="directory is writable"):
        persist.load()


def test_symlink_is_refused_even_to_a_good_file(dirs: Path) -> None:
    target = dirs / "elsewhere.json"
    target.write_text(json.dumps(GOOD))
    target.chmod(0o600)
    (dirs / "etc" / "forwards.json").symlink_to(target)
    with pytest.raises(NatboxError, match="symbolic link"):
        persist.load()


def test_fifo_is_refused_without_hanging(dirs: Path) -> None:
    os.mkfifo(dirs / "etc" / "forwards.json", 0o600)
    with pytest.raises(NatboxError, match="not a regular file"):
        persist.load()


def test_device_and_oversized_file_are_refused(dirs: Path) -> None:
    with pytest.raises(StateFileError, match="not a regular file"):
        read_trusted(Path("/dev/zero"))
    big = dirs / "etc" / "big.json"
    big.write_bytes(b" " * 2048)
    big.chmod(0o600)
    with pytest.raises(StateFileError, match="more than natbox reads"):
        read_trusted(big, limit=1024)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"masquerade": "false"}, '"masquerade" must be true or false'),
        ({"mss_clamp": "no"}, '"mss_clamp" must be true or false'),
        ({"local": "false"}, '"local" must be true or false'),
        ({"name": 123}, '"name" must be a string'),
        ({"listen": True}, '"listen" must be a string'),
        ({"sources": "192.168.1.0/24"}, '"sources" must be a list'),
        ({"colour": "red"}, "unknown key colour"),
        ({"listen": "192.168.1.30:²"}, "not a number"),
    ],
)
def test_exact_types_and_no_unknown_keys(dirs: Path, change: dict[str, object], words: str) -> None:
    body = json.loads(json.dumps(GOOD))
    body["forwards"][0].update(change)
    _saved(dirs, body)
    with pytest.raises(NatboxError) as info:
        persist.load()
    assert words in info.value.message
    assert "forwards.json line" in info.value.message or "forwards.json forward 1" in (
        info.value.message
    )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"version": 99, "forwards": []}, "version 99"),
        ({"forwards": []}, "version null"),
        ({"version": True, "forwards": []}, "version true"),
        ({"version": 1, "forwards": [], "extra": 1}, "unknown key extra"),
        ([1, 2], "not an object"),
    ],
)
def test_version_and_shape(dirs: Path, body: object, words: str) -> None:
    _saved(dirs, body)
    with pytest.raises(NatboxError, match=words):
        persist.load()


def test_duplicate_names_and_ports_are_refused_before_anything(dirs: Path) -> None:
    body = json.loads(json.dumps(GOOD))
    other = dict(body["forwards"][0], name="web2", listen="192.168.1.30:1230-1240")
    body["forwards"].append(other)
    _saved(dirs, body)
    with pytest.raises(
        NatboxError, match=r"web2 listens on tcp 192\.168\.1\.30 port 1234, as web does"
    ):
        persist.load()
    body["forwards"][1] = dict(body["forwards"][0])
    _saved(dirs, body)
    with pytest.raises(NatboxError, match="web is there twice"):
        persist.load()


def test_loading_is_linear(dirs: Path) -> None:
    """10,000 saved forwards (42 s before): one pass over the text, sorted spans for ports."""
    import time

    base = GOOD["forwards"][0]  # type: ignore[index]
    items = [
        dict(base, name=f"f{i}", listen=f"192.168.{i // 250}.{i % 250 + 1}:1234")
        for i in range(10_000)
    ]
    _saved(dirs, {"version": 1, "forwards": items})
    start = time.process_time()
    assert len(persist.load()) == 10_000
    assert time.process_time() - start < 20  # a bound, not a benchmark: quadratic took 42 s


def _journal(dirs: Path, body: object) -> None:
    path = dirs / "state" / "journal.json"
    path.write_text(json.dumps(body) if not isinstance(body, bytes) else "")
    if isinstance(body, bytes):
        path.write_bytes(body)
    path.chmod(0o600)


@pytest.mark.parametrize(
    "body",
    [
        {"op": "bogus", "name": "web", "forward": None, "started": 1.0},
        [1, 2, 3],
        b"\x00\xff\xfe binary",
        b'{"version": 2, "op": "apply", "names": ["web"]',
        {
            "version": 2,
            "op": "remove",
            "names": ["web"],
            "family": 4,
            "lines": {"nat": ["-F PREROUTING"]},
            "forwards": [],
            "started": 1.0,
        },
    ],
)
def test_journal_that_natbox_does_not_understand_is_refused(dirs: Path, body: object) -> None:
    _journal(dirs, body)
    with pytest.raises(StateFileError) as info:
        journal.pending()
    assert "journal.json" in info.value.message


def test_journal_round_trip(dirs: Path) -> None:
    line = '-A NATBOX-PREROUTING -d 192.168.1.30/32 -m comment --comment "natbox:web" -j ACCEPT'
    entry = journal.begin("apply", ["web"], 4, {"nat": [line]}, [])
    assert journal.pending() == entry
    journal.end()
    assert journal.pending() is None


@pytest.mark.parametrize(
    "line",
    [
        '-A NATBOX-FORWARD -m comment --comment "natbox:dns" -j ACCEPT',  # another forward's
        "-A NATBOX-FORWARD -j ACCEPT",  # untagged
        '-A FORWARD -m comment --comment "natbox:web" -j DROP',  # outside natbox's chains
        "-D FORWARD -i lo -m comment --comment natbox -j NATBOX-FORWARD",  # not the jump
        "-X DOCKER-USER",  # not natbox's chain
    ],
)
def test_journal_lines_must_be_the_named_forwards_own(dirs: Path, line: str) -> None:
    """A journal can never make recovery touch a rule of another forward, or anyone else's."""
    journal.begin("remove", ["web"], 4, {"filter": [line]}, [])
    with pytest.raises(StateFileError, match="not a journal natbox understands"):
        journal.pending()


def test_state_dir_that_is_a_file_is_one_error(dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = dirs / "afile"
    blocker.write_text("x")
    monkeypatch.setenv("NATBOX_STATE_DIR", str(blocker))
    with pytest.raises(NatboxError, match="not a directory"):
        journal.begin("apply", ["web"], 4, {}, [])
    with pytest.raises(NatboxError):
        write_json(blocker / "x.json", {})


def test_journal_that_is_a_directory_is_refused(dirs: Path) -> None:
    (dirs / "state" / "journal.json").mkdir()
    with pytest.raises(StateFileError, match="not a regular file"):
        journal.pending()


def test_pending_with_wrong_types_is_refused(dirs: Path) -> None:
    path = dirs / "state" / "pending.json"
    path.write_text(json.dumps({"token": "ab", "name": "web", "deadline": "soon"}))
    path.chmod(0o600)
    with pytest.raises(StateFileError):
        watchdog.pending()


@pytest.mark.parametrize("text", ["nan", "inf", "1e308", "-1", "4", "3601", "٣٠", "", "1" * 500])
def test_confirm_window_parser(text: str) -> None:
    with pytest.raises(NatboxError, match="5 to 3600"):
        watchdog.parse_window(text)


def test_confirm_window_parser_accepts_range() -> None:
    assert watchdog.parse_window("5") == 5 and watchdog.parse_window("3600") == 3600


# ------------------------------------------------------------------------ fuzz


def run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


FUZZ = settings(
    max_examples=int(os.environ.get("NATBOX_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CASES: dict[str, int] = {}


@FUZZ
@given(
    listen=st.text(max_size=80),
    backend=st.text(max_size=80),
    extra=st.lists(
        st.sampled_from(
            ["--proto", "udp", "both", "--name", "x", "--snat", "--masquerade", "--from", "--local"]
        )
        | st.text(max_size=12),
        max_size=4,
    ),
)
def test_fuzz_plan_parser(listen: str, backend: str, extra: list[str]) -> None:
    CASES["plan"] = CASES.get("plan", 0) + 1
    if "\x00" in listen + backend + "".join(extra):
        return  # argv cannot carry NUL
    code, err = (
        run_cli("plan", "--", listen, backend)
        if not extra
        else run_cli("plan", listen, backend, *extra)
    )
    assert code in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and len(err) < 1500, err


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
forward_like = st.fixed_dictionaries(
    {},
    optional={
        k: json_values | st.just(v)
        for k, v in GOOD["forwards"][0].items()  # type: ignore[index]
    },
)


@FUZZ
@given(
    body=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"version": st.just(1) | json_values, "forwards": st.lists(forward_like, max_size=4)}
        ),
    )
)
def test_fuzz_saved_file(dirs: Path, body: object) -> None:
    CASES["saved"] = CASES.get("saved", 0) + 1
    try:
        text = json.dumps(body)
    except ValueError:
        return
    try:
        persist.parse_forwards(text, "forwards.json")
    except NatboxError as exc:
        assert "\n" not in exc.one_line()


@FUZZ
@given(body=json_values | st.binary(max_size=200))
def test_fuzz_journal(dirs: Path, body: object) -> None:
    CASES["journal"] = CASES.get("journal", 0) + 1
    path = dirs / "state" / "journal.json"
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        try:
            path.write_text(json.dumps(body))
        except ValueError:
            return
    path.chmod(0o600)
    try:
        journal.pending()
    except NatboxError as exc:
        assert "\n" not in exc.one_line()


def test_fuzz_case_count_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """Shows how many cases the fuzz tests above generated (run with -s to see it)."""
    with capsys.disabled():
        print(f"\nfuzz cases: {CASES}")


def test_a_write_that_fails_on_a_full_disk_names_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC comes from a write or an fsync, which name no file: the error names the state file
    (not its temporary copy), and `writes` makes it one line that says what is true then."""
    import errno

    from natbox import paths

    target = tmp_path / "state" / "journal.json"
    target.parent.mkdir(mode=0o700)
    target.write_text("before\n")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(paths.os, "fsync", full)
    with pytest.raises(paths.StateWriteError) as info:
        with paths.writes("nothing was changed: the journal could not be written", "free space"):
            write_json(target, {"a": 1})
    assert info.value.message == (
        f"nothing was changed: the journal could not be written ({target}: No space left on device)"
    )
    assert target.read_text() == "before\n" and list(target.parent.iterdir()) == [target]


def test_a_directory_sync_that_fails_after_the_file_is_in_place_is_not_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is whole, synced and renamed into place: saying the write failed would be false
    (a journal called "not written" would still be found and acted on by the next command)."""
    import errno
    import os

    from natbox import paths

    real_open = os.open

    def no_dir_sync(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECTORY:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(paths.os, "open", no_dir_sync)
    target = tmp_path / "journal.json"
    assert paths.write_text(target, "{}\n") == target
    assert target.read_text() == "{}\n"
