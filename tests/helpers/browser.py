"""Helpers for the page tests: where Chromium is, and opening chat pages in it.

The browser is the one installed on the machine (`chromium` on PATH, or $CHROMIUM);
Playwright only drives it. Every page gets its own browser context, so two pages are
two independent users with their own localStorage, and every context is closed when
the test ends, whatever happened.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Error, Page, expect

from tests.helpers.paths import ROOT

VIEWPORT = {"width": 1200, "height": 720}
TIMEOUT_MS = 10_000
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Every wait has a deadline; a page under a loaded CI machine may need more than the default 5 s.
expect.set_options(timeout=TIMEOUT_MS)


def screenshot_dir() -> Path:
    """Where the screenshot tests save: `test-results/` so that `make test` leaves the
    tree clean, `docs/img/` when `make screenshots` sets SCREENSHOT_DIR to renew the docs."""
    folder = ROOT / os.environ.get("SCREENSHOT_DIR", "test-results")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def chromium_path() -> str | None:
    """The browser to drive; without one, the `browser` requirement of conftest.py skips."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


class ChatPages:
    """Opens chat pages, one browser context each, and remembers every error they report."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []

    def open(
        self, url: str, user: str, *, remembered: bool = False, before_load: Callable[[Page], None] | None = None
    ) -> Page:
        """A page joined to the lobby as `user`: typed into @username once the page asks
        for a name, or already stored in localStorage when `remembered` (a returning visitor)."""
        page = self.visit(url, user if remembered else None, label=user, before_load=before_load)
        if not remembered:
            expect(page.locator("#connection")).to_have_attribute("data-state", "nameless")
            set_username(page, user)
        expect(page.locator("#connection")).to_have_attribute("data-state", "online")
        return page

    def visit(
        self,
        url: str,
        remembered: str | None = None,
        *,
        label: str = "visitor",
        before_load: Callable[[Page], None] | None = None,
    ) -> Page:
        """A page loaded in a context of its own, as a new browser profile or a private
        window has it; `remembered` is a name already stored in its localStorage;
        `before_load` is called with the page before it loads (to route its socket)."""
        context = self.browser.new_context(viewport=VIEWPORT, locale="en-US", timezone_id="UTC")
        self.contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        if remembered is not None:
            context.add_init_script(f"localStorage.setItem('chatlab.username', {json.dumps(remembered)})")
        page = context.new_page()
        page.on("console", lambda message: self._console(label, message))
        page.on("pageerror", lambda error: self.errors.append(f"{label}: page error: {error}"))
        if before_load is not None:
            before_load(page)
        page.goto(url)
        return page

    def _console(self, label: str, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{label}: console: {message.text}")

    def close(self) -> None:
        for context in self.contexts:
            try:
                context.close()
            except Error:
                pass  # the browser may already be gone; closing the rest still matters


def set_username(page: Page, user: str) -> None:
    """Type the name and press Enter, as a person would; the page then rejoins under it."""
    page.fill("#username", user)
    page.press("#username", "Enter")
    expect(page.locator("#presence li.me .name")).to_have_text(user)  # a count follows when in twice


def send(page: Page, body: str) -> None:
    """Type a message and press Enter; returns once the sender's own page shows it
    (bodies should differ from earlier ones, so that it is this one that is seen)."""
    page.fill("#message-input", body)
    page.press("#message-input", "Enter")
    expect(page.locator("#message-input")).to_have_value("")
    expect(page.locator("#messages .body").filter(has_text=body).last).to_be_visible()
