"""Real headless Chromium (Debian's) driven by Playwright, set up as TESTING.md says."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import Browser, ConsoleMessage, Page, Playwright

CHROMIUM = os.environ.get("RTCPROCTOR_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}


async def launch(playwright: Playwright, audio: Path | None = None) -> Browser:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium")
    args = list(FLAGS)
    if audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={audio}")
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=args)


@dataclass
class Tab:
    """A page plus everything its console said, to catch CSP violations and script errors."""

    page: Page
    console: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return [
            m
            for m in self.console
            if m.startswith(("error:", "pageerror:")) or "Content Security Policy" in m
        ]


async def open_tab(
    browser: Browser,
    url: str,
    viewport: dict | None = None,
    prepare: Callable[[Page], Awaitable[None]] | None = None,
) -> Tab:
    """`prepare` runs before the page loads (to route its WebSocket, say)."""
    context = await browser.new_context(viewport=viewport or DESKTOP)
    page = await context.new_page()
    if prepare is not None:
        await prepare(page)
    tab = Tab(page)

    def on_console(msg: ConsoleMessage) -> None:
        tab.console.append(f"{msg.type}: {msg.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: tab.console.append(f"pageerror: {exc}"))
    await page.goto(url)
    return tab
