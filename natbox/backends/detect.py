"""Provides backend detection without side effects: which iptables is active, what each side holds.

Never opens a python-iptables table here: that alone would create a legacy table.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from natbox import prefetch
from natbox.backends import Backend
from natbox.errors import ToolMissingError, ValidationError
from natbox.runner import Runner

BACKEND_CHOICES = ("auto", "iptc", "restore")
LEGACY_NAMES = Path("/proc/net/ip_tables_names")


@dataclass
class Detection:
    """What the host's iptables looks like."""

    active: str
    """`nft` or `legacy`: the flavour the `iptables` command uses."""
    legacy_tables: list[str] = field(default_factory=list)
    nft_rules: int = 0
    """Rules in the nft tables (counted only on legacy hosts)."""
    legacy_rules: int = 0
    """Rules in the legacy tables (counted only when legacy tables exist)."""
    warnings: list[str] = field(default_factory=list)


def _count_rules(runner: Runner, flavour: str) -> int:
    if shutil.which(f"iptables-{flavour}-save") is None:
        return 0
    res = runner.run([f"iptables-{flavour}-save"])
    return sum(1 for line in res.stdout.splitlines() if line.startswith("-A ")) if res.ok else 0


def detect(runner: Runner | None = None, names_file: Path = LEGACY_NAMES) -> Detection:
    """Find the active flavour and whether the other side holds rules too (reads only)."""
    runner = runner or Runner()
    active = "nft"
    if shutil.which("iptables") is not None:
        seen = prefetch.iptables_version() if type(runner) is Runner else None
        if seen is None or runner.prefix:
            seen = runner.run(["iptables", "-V"]).stdout
        active = "legacy" if "legacy" in seen else "nft"
    elif shutil.which("iptables-nft") is None and shutil.which("iptables-legacy") is None:
        raise ToolMissingError("iptables is not installed", "apt-get install iptables")
    elif shutil.which("iptables-nft") is None:
        active = "legacy"
    try:
        legacy_tables = names_file.read_text().split()
    except OSError:
        legacy_tables = []
    det = Detection(active, legacy_tables)
    # Only the side natbox does not write needs counting (for the warning), and the legacy side
    # only when the kernel has legacy tables at all: detection stays cheap on big rulesets.
    if legacy_tables:
        det.legacy_rules = _count_rules(runner, "legacy")
    if active == "legacy":
        det.nft_rules = _count_rules(runner, "nft")
    return det


def choose_backend(
    choice: str | None = None, runner: Runner | None = None
) -> tuple[Backend, Detection]:
    """The backend to use: `choice` or $NATBOX_BACKEND, else iptc on legacy hosts, restore on nft."""
    from natbox.backends.restore import RestoreBackend

    choice = choice or os.environ.get("NATBOX_BACKEND") or "auto"
    if choice not in BACKEND_CHOICES:
        raise ValidationError(
            f"backend {choice!r} is not one of {', '.join(BACKEND_CHOICES)}",
            "use --backend auto|iptc|restore (or unset NATBOX_BACKEND)",
        )
    runner = runner or Runner()
    det = detect(runner)
    backend: Backend
    if choice == "iptc" or (choice == "auto" and det.active == "legacy"):
        from natbox.backends.iptc import IptcBackend  # only when it is the one

        backend = IptcBackend(runner)
        if det.active == "nft":
            det.warnings.append(
                "--backend iptc writes legacy tables, which this host's `iptables` (nft) does not show"
            )
    else:
        backend = RestoreBackend(det.active, runner)
    other = "nft" if backend.flavour == "legacy" else "legacy"
    other_rules = det.nft_rules if other == "nft" else det.legacy_rules
    if other == "nft" and det.active == "nft":
        other_rules = _count_rules(runner, "nft")  # iptc forced on an nft host: say what it hides
    if other_rules:
        det.warnings.append(
            f"{other_rules} rules also sit in the {other} tables, which natbox does not write "
            f"({backend.flavour}); both apply to packets"
        )
    return backend, det
