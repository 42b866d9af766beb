"""Provides the `lab` fixture: the seed topology in fresh namespaces, removed afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from natbox.lab import Lab


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces and iptables): run as root"
    for tool in ("ip", "iptables-nft-restore", "iptables-legacy-restore"):
        if shutil.which(tool) is None:
            return f"lab tests need {tool}: apt-get install iproute2 iptables"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"network namespaces are unavailable: {probe.stderr.strip()}"
    return None


REASON = _lab_unavailable()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
            if REASON:
                item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab().up()
    try:
        yield lab
    finally:
        lab.close()
