"""Provides how a rule reads on a narrow screen: without its natbox comment, target first."""

from __future__ import annotations

import re

_COMMENT = re.compile(r' ?-m comment --comment (?:"(?:[^"\\]|\\.)*"|\S+)')
_TARGET = re.compile(r"(?:^| )(-j|-g) (\S+)(.*)$")


def shown_rule(spec: str) -> str:
    """A rule as iptables prints it, less its comment (the owner column already says it)."""
    return _COMMENT.sub("", spec).strip()


def split_target(spec: str) -> tuple[str, str]:
    """(target with its options, matches): `-j DNAT --to-destination 10.0.2.50:80` first, where
    80 columns still show it; the matches after it."""
    text = shown_rule(spec)
    found = _TARGET.search(text)
    if found is None:
        return "", text
    target = f"{found.group(2)}{found.group(3)}".strip()
    target = target.replace("--to-destination ", "→ ").replace("--to-source ", "→ ")
    return target, text[: found.start()].strip()


__all__ = ["shown_rule", "split_target"]
