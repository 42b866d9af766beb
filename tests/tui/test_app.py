"""The app starts headless, shows where the dashboard will be, and quits on q."""

from __future__ import annotations

from textual.widgets import Static

from tui.app import make_app


async def test_placeholder_and_quit() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        text = str(app.query_one("#placeholder", Static).render())
        assert "natbox plan" in text
        await pilot.press("q")
    assert app.return_code == 0
