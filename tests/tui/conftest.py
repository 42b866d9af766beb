"""Pilot helpers (the same settle() the screenshots use)."""

from __future__ import annotations

from tui.screenshots import settle

__all__ = ["settle"]
