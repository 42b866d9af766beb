"""Provides StatusBar: host, backend, ip_forward, conntrack fill gauge, read-only banner, warnings."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from natbox.conntrack import Fill


def gauge(count: int | None, maximum: int | None, width: int = 6) -> Text:
    """`conntrack ██░░░░ 1234/262144`, coloured by how full the table is."""
    if count is None or not maximum:
        return Text("conntrack ?", style="dim")
    share = count / maximum
    filled = min(width, round(share * width))
    style = "red" if share > 0.8 else "yellow" if share > 0.5 else "green"
    return Text.assemble(
        "conntrack ",
        ("█" * filled, style),
        ("░" * (width - filled), "dim"),
        f" {count}/{maximum}",
    )


class StatusBar(Static):
    """One line of facts at the top of the dashboard."""

    DEFAULT_CSS = """
    StatusBar {
        height: 1;
        background: $panel;
        padding: 0 1;
    }
    StatusBar.-read-only {
        background: $warning 30%;
    }
    """

    def show(
        self,
        *,
        host: str,
        backend: str,
        ip_forward: bool,
        fill: Fill,
        read_only: bool,
        warnings: int,
        partial: bool = False,
    ) -> None:
        """Redraw with these facts; `partial`: only some chains are read yet (the first screen),
        so the warnings are counted so far, not all."""
        parts = Text.assemble(
            (host, "bold"),
            "  backend ",
            backend,
            "  ip_forward ",
            ("on", "green") if ip_forward else ("OFF", "bold red"),
            "  ",
            gauge(fill.count, fill.max),
        )
        if warnings:
            parts.append(
                f"  ⚠ {warnings} warning{'s' if warnings > 1 else ''}", style="bold yellow"
            )
        if partial:
            parts.append(" so far, checking the rest…" if warnings else "  checking…", style="dim")
        if read_only:
            parts.append("  READ-ONLY: run with sudo to change anything", style="bold")
        self.set_class(read_only, "-read-only")
        self.update(parts)
