"""Provides persistence: natbox's forwards (only natbox's: saving Docker's chains is a known trap) in
forwards.json, restored at boot by a systemd unit running `natbox restore`.

Paths are overridable so tests never touch the host's /etc: NATBOX_CONFIG_DIR (/etc/natbox),
NATBOX_STATE_DIR (/var/lib/natbox), NATBOX_UNIT_DIR (/etc/systemd/system),
NATBOX_SYSCTL_DIR (/etc/sysctl.d).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from natbox.errors import NatboxError, ValidationError, shown
from natbox.model import Forward, forward_from_dict
from natbox.paths import (
    StateFileError,
    config_dir,
    read_trusted,
    sysctl_dir,
    unit_dir,
    write_json,
    write_text,
)

UNIT_NAME = "natbox-restore.service"
SYSCTL_NAME = "90-natbox.conf"
FILE_VERSION = 1


def saved_path() -> Path:
    """The saved set."""
    return config_dir() / "forwards.json"


def _line_index(text: str) -> dict[str, int]:
    """The line of each `"name": "..."` in the file, in one pass (loading stays linear)."""
    out: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        at = line.find('"name"')
        if at >= 0:
            value = line[at + 6 :].lstrip(" :").split('"')
            if len(value) > 1:
                out.setdefault(value[1], lineno)
    return out


def parse_forwards(text: str, where: str) -> list[Forward]:
    """A forwards file's text as Forwards: the whole set is checked (schema, duplicate names,
    overlapping listen ports) before anything is returned; errors name the file, line and field."""
    hint = "fix the file, or natbox save again"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NatboxError(f"{where} line {exc.lineno}: {exc.msg}", hint) from None
    except RecursionError:
        raise NatboxError(f"{where}: nested too deeply", hint) from None
    if not isinstance(data, dict):
        raise NatboxError(f'{where}: not an object with "version" and "forwards"', hint)
    unknown = sorted(set(data) - {"version", "forwards"})
    if unknown:
        raise NatboxError(f"{where}: unknown key {shown(unknown[0])}", hint)
    version = data.get("version")
    if version != FILE_VERSION or isinstance(version, bool):
        raise NatboxError(
            f"{where}: version {shown(json.dumps(version))} is not one this natbox reads "
            f"({FILE_VERSION})",
            'write "version": 1, or use the natbox that wrote it',
        )
    items = data.get("forwards")
    if not isinstance(items, list):
        raise NatboxError(f'{where}: no "forwards" list', hint)
    lines = _line_index(text)
    out: list[Forward] = []
    names: dict[str, str] = {}
    spans: dict[tuple[str, str], list[tuple[int, int, str, str, int]]] = {}
    for i, item in enumerate(items, 1):
        name = item.get("name") if isinstance(item, dict) else None
        line = lines.get(name) if isinstance(name, str) else None
        at = f"{where} line {line}" if line else f"{where} forward {i}"
        try:
            if not isinstance(item, dict):
                raise ValidationError("is not an object", "")
            fwd = forward_from_dict(item)
        except ValidationError as exc:
            raise NatboxError(f"{at}: {exc.message}", exc.hint or hint) from None
        if fwd.name in names:
            raise NatboxError(f"{at}: forward {fwd.name} is there twice", "keep one of them")
        names[fwd.name] = fwd.name
        for proto in fwd.protocols:
            spans.setdefault((str(fwd.listen.ip), proto), []).append(
                (fwd.listen.port, fwd.listen.port_end, fwd.name, at, i)
            )
        out.append(fwd)
    for (ip, proto), taken in spans.items():  # sorted spans: an overlap shows at once (n log n)
        taken.sort()
        reach: tuple[int, int, str, str, int] | None = None
        for span in taken:
            if reach is not None and span[0] <= reach[1]:
                first, second = sorted((reach, span), key=lambda s: s[4])  # in file order
                raise NatboxError(
                    f"{second[3]}: {second[2]} listens on {proto} {ip} port "
                    f"{max(first[0], second[0])}, as {first[2]} does",
                    "two forwards cannot share a listen port; keep one of them",
                )
            if reach is None or span[1] > reach[1]:
                reach = span
    return out


def load() -> list[Forward]:
    """The saved forwards; a file natbox cannot trust, or a broken one, is one error naming it."""
    path = saved_path()
    try:
        text = read_trusted(path)
    except StateFileError as exc:
        raise NatboxError(exc.message, exc.hint) from None
    if text is None:
        return []
    return parse_forwards(text, str(path))


def write(forwards: list[Forward]) -> Path:
    """Write the saved set (root-only, atomically)."""
    body = {"version": FILE_VERSION, "forwards": [f.to_dict() for f in forwards]}
    return write_json(saved_path(), body, dir_mode=0o755)


def follow(old: str, new: Forward) -> bool:
    """An edit of `old` was kept: its saved entry becomes `new`, in its place (False: not saved)."""
    saved = load()
    if old not in {f.name for f in saved}:
        return False
    write([new if f.name == old else f for f in saved])
    return True


def unit_text() -> str:
    """The systemd unit that restores the saved forwards at boot."""
    env = "".join(
        f"Environment={k}={os.environ[k]}\n"
        for k in ("NATBOX_CONFIG_DIR", "NATBOX_STATE_DIR", "NATBOX_BACKEND")
        if k in os.environ
    )
    return (
        "[Unit]\n"
        "Description=natbox: restore the saved port forwards\n"
        "Wants=network-pre.target\n"
        "After=network-pre.target\n"
        "Before=network.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"{env}"
        f"ExecStart={sys.executable} -m natbox restore\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def install_boot(enable_ip_forward: bool) -> tuple[Path | None, Path | None, list[str]]:
    """Install the unit (enabled, as `systemctl enable` would) and the sysctl drop-in."""
    notes: list[str] = []
    unit: Path | None = None
    if Path("/run/systemd/system").is_dir() or "NATBOX_UNIT_DIR" in os.environ:
        unit = unit_dir() / UNIT_NAME
        write_text(unit, unit_text(), mode=0o644, dir_mode=0o755)
        wants = unit_dir() / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / UNIT_NAME
        if not link.is_symlink():
            link.symlink_to(unit)
    else:
        notes.append(
            f"no systemd here: have your init system run `{sys.executable} -m natbox restore` at boot"
        )
    sysctl: Path | None = None
    if enable_ip_forward:
        sysctl = sysctl_dir() / SYSCTL_NAME
        write_text(
            sysctl,
            "# written by natbox save: the saved forwards need routing\nnet.ipv4.ip_forward = 1\n",
            mode=0o644,
            dir_mode=0o755,
        )
    return unit, sysctl, notes
