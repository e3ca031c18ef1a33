"""Browser fixtures: Debian's Chromium, driven by Playwright, against the app over real HTTP.

The app is served by werkzeug's threaded server on a free port of 127.0.0.1, with
``BASE_URL`` set to it, so every link in an email points at the server the browser talks
to. Jobs run in this process through a real RQ worker (``run_jobs``) between steps, and
mail goes to the outbox backend: the tests read the ``.eml`` files a person would get.

Every page a test calls :meth:`Site.check` on passes the same checks: an accessibility
smoke test, WCAG contrast of its text, no sideways scrolling at phone width, no console
error (a CSP violation is one), no request to any host but ours. Each is screenshotted at
desktop and phone width into ``test-artifacts/screenshots/`` for people to look at.

Chromium is the system's (``/usr/bin/chromium``; ``.ci/run`` installs Debian's package):
Playwright never downloads a browser here. ``launch`` gives every run a fresh, temporary
user data directory, so no profile state leaks between runs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import run_jobs
from flask import Flask
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, Route, sync_playwright
from werkzeug.serving import BaseWSGIServer, make_server

from tests.outside import need_file

from .pagecheck import (
    A11Y_JS,
    FITS_WIDTH_JS,
    TEXT_COLOURS_JS,
    labels_running_into_values,
    low_contrast,
)

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# As root in a container: no sandbox, no GPU, and no traffic of Chromium's own.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
LOCAL_HOSTS = ("127.0.0.1", "localhost")


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    need_file(Path(CHROMIUM), "Chromium (apt-get install chromium, as .ci/run does)")
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                         headless=True)
    yield browser
    browser.close()


class Screenshots:
    """Saves each page once per run (the first database's), at desktop and phone width."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.taken: set[str] = set()
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)

    def take(self, page: Page, name: str, width: str) -> None:
        key = f"{name}-{width}"
        if key not in self.taken:
            self.taken.add(key)
            page.screenshot(path=str(self.directory / f"{key}.png"), full_page=True)


@pytest.fixture(scope="package")
def screenshots() -> Screenshots:
    return Screenshots(SCREENSHOTS)


class Mailbox:
    """The outbox folder as a person's inbox: new messages, oldest first, and their links."""

    def __init__(self, directory: Path, base_url: str):
        self.directory = directory
        self.base_url = base_url
        self.seen: set[str] = set()

    def new(self) -> list[EmailMessage]:
        if not self.directory.exists():
            return []
        paths = [p for p in self.directory.glob("*.eml") if p.name not in self.seen]
        paths.sort(key=lambda p: p.stat().st_mtime_ns)
        self.seen.update(p.name for p in paths)
        parser = BytesParser(policy=policy.default)
        return [parser.parsebytes(p.read_bytes()) for p in paths]  # type: ignore[misc]

    def one_new(self, to: str) -> EmailMessage:
        messages = self.new()
        assert len(messages) == 1, f"expected one new message, got {len(messages)}"
        [message] = messages
        assert message["To"].addresses[0].addr_spec == to
        return message

    def link(self, message: EmailMessage, kind: str) -> str:
        """The one ``/kind/...`` link in the plain-text part, as a full URL."""
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        found = set(re.findall(re.escape(self.base_url) + rf"/{kind}/[^\s>)]+", text))
        assert len(found) == 1, f"expected one /{kind}/ link, found {sorted(found)}"
        return found.pop()


@dataclass
class Site:
    """The app over HTTP, its outbox, and a browser with every page check wired in."""

    app: Flask
    url: str
    mailbox: Mailbox
    browser: Browser
    screenshots: Screenshots
    console_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    contexts: list[BrowserContext] = field(default_factory=list)

    def context(self, **options: Any) -> BrowserContext:
        """A fresh browser context (no cookies) whose pages may only talk to our server."""
        options.setdefault("viewport", DESKTOP)
        context = self.browser.new_context(base_url=self.url, **options)
        context.route("**/*", self._only_local)
        context.on("console", lambda m: self.console_errors.append(m.text)
                   if m.type == "error" else None)
        context.on("weberror", lambda e: self.console_errors.append(str(e.error)))
        self.contexts.append(context)
        return context

    def page(self, **options: Any) -> Page:
        return self.context(**options).new_page()

    def _only_local(self, route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            self.external_requests.append(route.request.url)
            route.abort()

    def jobs(self) -> None:
        """What the worker would do now: run every queued job."""
        run_jobs(self.app)

    def check(self, page: Page, name: str) -> None:
        """Every check a public page must pass, and its screenshots at both widths."""
        page.wait_for_load_state("load")
        assert page.evaluate(A11Y_JS) == [], f"{name}: accessibility problems"
        poor = low_contrast(page.evaluate(TEXT_COLOURS_JS))
        assert not poor, f"{name}: " + "; ".join(str(p) for p in poor)
        self.screenshots.take(page, name, "desktop")
        page.set_viewport_size(PHONE)
        try:
            assert page.evaluate(FITS_WIDTH_JS), f"{name}: scrolls sideways at phone width"
            crowded = labels_running_into_values(page)
            assert not crowded, f"{name}, phone width: " + "; ".join(crowded)
            self.screenshots.take(page, name, "phone")
        finally:
            page.set_viewport_size(DESKTOP)
        self.assert_clean(name)

    def assert_clean(self, where: str = "") -> None:
        assert self.console_errors == [], f"{where}: console errors"
        assert self.external_requests == [], f"{where}: requests to other hosts"


class _AppSlot:
    """A WSGI app that forwards to the Flask app, set once it exists (it needs the port)."""

    def __init__(self) -> None:
        self.app: Flask | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        assert self.app is not None
        return self.app(environ, start_response)


@pytest.fixture
def site(make_app: Any, browser: Browser, screenshots: Screenshots,
         tmp_path: Path) -> Iterator[Site]:
    """The app on a real port, on this test's database, mail to a fresh outbox folder."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    slot = _AppSlot()
    server: BaseWSGIServer = make_server("127.0.0.1", 0, slot, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    outbox = tmp_path / "browser-outbox"
    slot.app = make_app(BASE_URL=url, MAIL_BACKEND="outbox", OUTBOX_DIR=str(outbox))
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    found = Site(slot.app, url, Mailbox(outbox, url), browser, screenshots)
    try:
        yield found
    finally:
        for context in found.contexts:
            context.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    found.assert_clean("after the test")
