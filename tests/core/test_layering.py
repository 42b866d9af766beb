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
        allowed = {"tui"} if path.name == "cli.py" else set()  # `natbox` with no command: the TUI
        assert not _imports(path) & ({"textual", "rich", "tui", "widgets"} - allowed), path
    for path in (ROOT / "widgets").rglob("*.py"):
        assert "tui" not in _imports(path), path


LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tree,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
    )


def _copy(tmp_path: Path) -> Path:
    import shutil

    tree = tmp_path / "tree"
    for name in ("natbox", "tui", "widgets"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_import_linter_contracts_hold_and_catch_a_breach(tmp_path: Path) -> None:
    """The contracts pass on this tree, and fail on a copy with a layer breach or a cycle."""
    tree = _copy(tmp_path)
    ok = _lint(tree)
    assert ok.returncode == 0, ok.stdout[-2000:]
    txn = tree / "natbox" / "txn.py"
    original = txn.read_text()
    txn.write_text(original + "\n\ndef _breach() -> None:\n    from natbox import engine  # noqa\n")
    broken = _lint(tree)
    assert broken.returncode != 0 and "BROKEN" in broken.stdout
    txn.write_text(original)
    widget = next((tree / "widgets").glob("[a-z]*.py"))
    widget.write_text(widget.read_text() + "\nimport tui.app  # noqa\n")
    assert _lint(tree).returncode != 0
