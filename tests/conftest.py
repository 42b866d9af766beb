"""Shared fixtures: a private xtables lock for every test run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Never share the host's /run/xtables.lock: tests only ever touch their own namespaces.
os.environ.setdefault(
    "XTABLES_LOCKFILE", str(Path(tempfile.gettempdir()) / f"nbt-xtables-{os.getpid()}.lock")
)
