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
from dataclasses import dataclass, field
from pathlib import Path

from natbox.errors import NatboxError, ValidationError
from natbox.model import Forward

UNIT_NAME = "natbox-restore.service"
SYSCTL_NAME = "90-natbox.conf"


def config_dir() -> Path:
    """Where forwards.json lives."""
    return Path(os.environ.get("NATBOX_CONFIG_DIR", "/etc/natbox"))


def unit_dir() -> Path:
    """Where the systemd unit goes."""
    return Path(os.environ.get("NATBOX_UNIT_DIR", "/etc/systemd/system"))


def sysctl_dir() -> Path:
    """Where the ip_forward drop-in goes."""
    return Path(os.environ.get("NATBOX_SYSCTL_DIR", "/etc/sysctl.d"))


def saved_path() -> Path:
    """The saved set."""
    return config_dir() / "forwards.json"


def forward_from_dict(data: dict[str, object]) -> Forward:
    """The inverse of Forward.to_dict(), validated like user input."""
    sources = data.get("sources") or []
    if not isinstance(sources, list):
        raise ValidationError("sources must be a list", 'like ["192.168.1.0/24"]')
    snat = data.get("snat")
    return Forward.from_text(
        str(data["listen"]),
        str(data["backend"]),
        proto=str(data.get("proto", "tcp")),
        name=str(data["name"]),
        snat=str(snat) if snat else None,
        masquerade=bool(data.get("masquerade", False)),
        mss_clamp=bool(data.get("mss_clamp", False)),
        local=bool(data.get("local", False)),
        sources=[str(s) for s in sources],
    )


def load() -> list[Forward]:
    """The saved forwards; a corrupt or hand-broken file is one error naming the line."""
    path = saved_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except PermissionError:
        raise NatboxError(f"cannot read {path}", "run natbox with sudo") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NatboxError(
            f"{path} line {exc.lineno}: {exc.msg}", "fix the file, or natbox save again"
        ) from None
    items = data.get("forwards") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise NatboxError(f'{path}: no "forwards" list', "fix the file, or natbox save again")
    out: list[Forward] = []
    for i, item in enumerate(items, 1):
        line = _line_of(text, item.get("name") if isinstance(item, dict) else None)
        where = f"{path} line {line}" if line else f"{path} forward {i}"
        try:
            if not isinstance(item, dict):
                raise ValidationError("is not an object", "")
            out.append(forward_from_dict(item))
        except (KeyError, ValidationError) as exc:
            message = exc.message if isinstance(exc, ValidationError) else f"missing {exc}"
            raise NatboxError(f"{where}: {message}", "fix the file, or natbox save again") from None
    names = [f.name for f in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise NatboxError(f"{path}: forward {dupes[0]} is there twice", "keep one of them")
    return out


def _line_of(text: str, name: object) -> int | None:
    if not isinstance(name, str):
        return None
    needle = f'"name": "{name}"'
    at = text.find(needle)
    return text.count("\n", 0, at) + 1 if at >= 0 else None


def write(forwards: list[Forward]) -> Path:
    """Write the saved set (root-only, atomically)."""
    path = saved_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = path.with_suffix(".tmp")
    body = {"version": 1, "forwards": [f.to_dict() for f in forwards]}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, path)
    return path


@dataclass
class Saved:
    """What `save` wrote, for the CLI to report."""

    path: Path
    names: list[str]
    unit: Path | None = None
    sysctl: Path | None = None
    notes: list[str] = field(default_factory=list)


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
        unit.parent.mkdir(parents=True, exist_ok=True)
        unit.write_text(unit_text())
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
        sysctl.parent.mkdir(parents=True, exist_ok=True)
        sysctl.write_text(
            "# written by natbox save: the saved forwards need routing\nnet.ipv4.ip_forward = 1\n"
        )
    return unit, sysctl, notes
