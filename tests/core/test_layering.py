"""The engine never imports the UI: natbox/ stays free of textual and rich; widgets/ never imports tui/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_natbox_pulls_in_no_ui() -> None:
    code = (
        "import sys, pkgutil, importlib, natbox\n"
        "for m in pkgutil.walk_packages(natbox.__path__, 'natbox.'):\n"
        "    if m.name != 'natbox.__main__': importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'tui', 'widgets'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_forbidden_import_statements() -> None:
    for path in (ROOT / "natbox").rglob("*.py"):
        assert not _imports(path) & {"textual", "rich", "tui", "widgets"}, path
    for path in (ROOT / "widgets").rglob("*.py"):
        assert "tui" not in _imports(path), path
