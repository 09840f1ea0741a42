"""``asok dev --gevent`` in real Chromium: Asok's live reload and the page's chat socket.

The page of a real Asok project (DEBUG on, so Asok injects its live-reload
script, which polls ``/__reload``) opens a chat socket with
``window.asokWS('/chat/general')``. Editing the page's template restarts the
server; the browser reloads by itself, and the reloaded page's chat socket
reaches the new server and has its message broadcast back by the doc's handler.
"""

from __future__ import annotations

import pytest

from tests.asok_project import make_project
from tests.test_browser import browser  # noqa: F401 - Debian's headless Chromium, as a fixture
from tests.test_dev_mode import READY, asok_dev

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    """A fresh project under ``asok dev --gevent``."""
    project = make_project(tmp_path_factory.mktemp("devbrowser"))
    proc = asok_dev(project, tmp_path_factory.mktemp("devbrowser-logs"), "--gevent")
    proc.wait_for_log(READY, timeout=30)
    proc.project = project
    yield proc
    assert proc.stop() == 0


def chat(page, text: str) -> None:
    """Send ``text`` from the page's composer and wait for the room's broadcast of it."""
    page.locator("#message").fill(text)
    page.locator("#message").press("Enter")
    page.wait_for_selector(f"#messages li:has-text('Guest: {text}')", timeout=20_000)


def test_editing_the_page_reloads_the_browser_and_the_chat_reconnects(browser, dev):  # noqa: F811 - the fixture
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(dev.url + "/")
        page.wait_for_selector('#chat[data-state="open"]', timeout=20_000)
        chat(page, "before the edit")
        page.evaluate("window.__sameDocument = true")
        # Asok's script reloads when /__reload's answer changes: let it learn the first one.
        with page.expect_response(lambda response: response.url.endswith("/__reload"), timeout=20_000):
            pass

        template = dev.project / "src/pages/page.html"
        with page.expect_event("load", timeout=60_000):
            template.write_text(template.read_text().replace("Test chat", "Reloaded chat"))

        page.wait_for_selector('#chat[data-state="open"]', timeout=20_000)
        assert page.evaluate("window.__sameDocument") is None, "the page did not reload"
        assert "Reloaded chat" in page.title()
        chat(page, "after the reload")
    finally:
        context.close()
    assert "restarting: closing" in dev.log()
