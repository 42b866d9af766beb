"""Provides spark(): a one-line sparkline of the last few samples, for table cells."""

from __future__ import annotations

from collections.abc import Sequence

BARS = "▁▂▃▄▅▆▇█"


def spark(values: Sequence[float], width: int = 12) -> str:
    """The last `width` values as block characters scaled to their maximum (blank when all 0)."""
    tail = list(values)[-width:]
    top = max(tail, default=0.0)
    if top <= 0:
        return " " * len(tail)
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))] for v in tail)


def rate(n: float) -> str:
    """Bytes per second as 12.3K/s."""
    for unit in ("B", "K", "M", "G"):
        if n < 1000 or unit == "G":
            return f"{n:.0f}{unit}/s" if unit == "B" else f"{n:.1f}{unit}/s"
        n /= 1000
    return f"{n:.0f}B/s"
