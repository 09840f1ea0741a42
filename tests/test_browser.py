"""The demo chat in real headless Chromium, served by ``asok serve --gevent``.

Two browser contexts log in as alice and bob through the demo's own login
buttons. Everything each page learns from the server is read the way Asok
documents it, through ``document.addEventListener("asok:ws-broadcast", ...)``:
each user sees the other come online and go offline, start and stop typing, and
read a message. A screenshot of the demo page is saved to artifacts/demo.png.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright; no browser is
downloaded. Without it the tests skip, or fail when CI=true.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sqlite3
import time

import pytest

from tests.asok_project import DEMO, run_python
from tests.conftest import asok_serve, ws_connect
from tests.link_proxy import LinkProxy

pytestmark = pytest.mark.timeout(180)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = pathlib.Path(__file__).resolve().parent.parent / "artifacts" / "demo.png"
ROOM = "general"

#: Runs in every page before its own scripts: keeps every asok:ws-broadcast event.
RECORDER = """
window.__asokEvents = [];
document.addEventListener("asok:ws-broadcast", (event) => window.__asokEvents.push(event.detail));
"""


def unavailable(reason: str) -> None:
    """Skip, or fail when CI=true: CI must run the browser tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true needs the browser tests; scripts/test installs chromium as root)", False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium; Playwright gives it a fresh, empty profile directory."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed: pip install -e '.[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> pathlib.Path:
    """A copy of the demo app with a fresh database, made by its own seed_db.py."""
    root = tmp_path_factory.mktemp("demo") / "demo"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("db.sqlite3*", ".asok", "__pycache__"))
    done = run_python(["seed_db.py"], root)
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    """The demo served by ``asok serve --gevent``."""
    proc = asok_serve(demo, tmp_path_factory.mktemp("browser-logs"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def ids(demo) -> dict[str, int]:
    """User ids by name, from the demo's database."""
    with sqlite3.connect(demo / "db.sqlite3") as db:
        return dict(db.execute("SELECT name, id FROM users"))


class Tab:
    """One page of the demo, with the WebSockets it opened and the events it saw."""

    def __init__(self, context, server):
        self.context = context
        self.server = server
        self.page = context.new_page()
        self.sent: list[tuple] = []
        self.page.on("websocket", self._opened)
        self.page.on("framenavigated", self._navigated)

    def _navigated(self, frame) -> None:
        # A new document: the old one's sockets are gone, whatever Playwright says of them.
        if frame == self.page.main_frame:
            self.sent.clear()

    def _opened(self, socket) -> None:
        frames: list = []
        socket.on("framesent", lambda payload: frames.append(payload))
        self.sent.append((socket, frames))

    def open_room(self) -> Tab:
        """Load the room page and wait until both /asok/live sockets have asked to join the room."""
        self.page.goto(f"{self.server.url}/?room={ROOM}")
        return self.ready()

    def log_in(self, name: str) -> Tab:
        """Log in with the demo page's one-click button, as a person would."""
        self.page.get_by_role("button", name=f"Log in as {name}").click()
        self.page.wait_for_url(f"**/?room={ROOM}")
        return self.ready()

    def ready(self, timeout: float = 10) -> Tab:
        # Asok's own socket (data-subscribe) and the page's socket both join the
        # room; the server handles a join before anything sent after it.
        self.page.wait_for_selector("#status.ok")
        join = json.dumps({"op": "join_room", "room": f"chat:{ROOM}"}, separators=(",", ":"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [frames for socket, frames in self.sent if socket.url.endswith("/asok/live")]
            if len(live) == 2 and all(join in frames for frames in live):
                return self
            self.page.wait_for_timeout(50)
        raise AssertionError(f"the page's /asok/live sockets did not join the room: {self.sent}")

    def mark(self) -> int:
        """How many events the page has seen so far (for ``saw(after=...)``)."""
        return self.page.evaluate("window.__asokEvents.length")

    def saw(self, after: int = 0, timeout: float = 10, **fields) -> dict:
        """Wait for an asok:ws-broadcast event (after the first ``after``) that has ``fields``."""
        script = """([after, fields]) => window.__asokEvents.slice(after).find(
            (event) => Object.entries(fields).every(([key, value]) => event[key] === value))"""
        try:
            handle = self.page.wait_for_function(script, arg=[after, fields], timeout=timeout * 1000)
        except Exception as error:
            events = self.page.evaluate("window.__asokEvents")
            raise AssertionError(f"no asok:ws-broadcast event with {fields}; the page saw {events}") from error
        return handle.json_value()

    def type(self, text: str) -> None:
        """Type into the composer, key by key."""
        self.page.locator("#message").press_sequentially(text, delay=15)

    def send(self, text: str) -> None:
        """Type a message and press Enter."""
        self.type(text)
        self.page.locator("#message").press("Enter")


def user_tab(browser, server, name: str) -> Tab:
    """A new browser context (its own cookies) logged in as ``name``, in the room."""
    context = browser.new_context(viewport={"width": 1200, "height": 780})
    context.add_init_script(RECORDER)
    return Tab(context, server).open_room().log_in(name)


def presence(user_id: int, status: str) -> dict:
    return {"type": "presence", "user_id": user_id, "status": status}


def test_two_users_see_presence_typing_and_receipts(browser, server, ids):
    alice_id, bob_id = ids["alice"], ids["bob"]
    alice = user_tab(browser, server, "alice")
    bob = user_tab(browser, server, "bob")

    alice.saw(**presence(bob_id, "online"))
    alice.saw(type="room_presence", room=f"chat:{ROOM}", user_id=bob_id, status="joined")
    alice.page.wait_for_selector(f'#people li.online.here[data-user-id="{bob_id}"]')

    # alice writes: bob sees her typing, then not, then her message; alice sees it read.
    alice.type("Hi bob! Is the gevent server up?")
    assert bob.saw(type="typing", user_id=alice_id, typing=True)["room"] == f"chat:{ROOM}"
    bob.page.wait_for_selector("#typing:has-text('alice is typing')")
    alice.page.locator("#message").press("Enter")
    bob.saw(type="typing", user_id=alice_id, typing=False)
    bob.page.wait_for_selector(".message:has-text('Is the gevent server up?')")
    receipt = alice.saw(type="receipt", user_id=bob_id)
    assert receipt["status"] == "read" and isinstance(receipt["message_id"], int)
    alice.page.wait_for_selector(".mine .receipt.seen:has-text('Seen by bob')")

    # bob answers: the same, the other way round.
    mark = alice.mark()
    bob.type("Up and running: pages and sockets on one port.")
    alice.saw(after=mark, type="typing", user_id=bob_id, typing=True)
    bob.page.locator("#message").press("Enter")
    alice.saw(after=mark, type="typing", user_id=bob_id, typing=False)
    bob.saw(type="receipt", user_id=alice_id, status="read")
    bob.page.wait_for_selector(".mine .receipt.seen:has-text('Seen by alice')")

    # bob starts another line: the moment the screenshot shows.
    mark = alice.mark()
    bob.type("Typing indicators and read receipts work too")
    alice.saw(after=mark, type="typing", user_id=bob_id, typing=True)
    alice.page.wait_for_selector("#typing:has-text('bob is typing')")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    alice.page.screenshot(path=str(SCREENSHOT))

    # alice leaves (bob sees her offline) and comes back (online again).
    mark = bob.mark()
    alice.page.close()
    bob.saw(after=mark, **presence(alice_id, "offline"))
    bob.page.wait_for_selector(f'#people li[data-user-id="{alice_id}"]:not(.online)')
    alice = Tab(alice.context, server).open_room()
    bob.saw(after=mark, **presence(alice_id, "online"))

    # bob closes his browser: alice sees him leave the room and go offline.
    mark = alice.mark()
    bob.context.close()
    alice.saw(after=mark, type="room_presence", room=f"chat:{ROOM}", user_id=bob_id, status="left")
    alice.saw(after=mark, **presence(bob_id, "offline"))
    alice.context.close()


def test_asokws_connects_to_the_serving_port_and_exchanges_a_message(browser, server):
    context = browser.new_context()
    context.add_init_script(RECORDER)
    tab = Tab(context, server).open_room()
    exchange = tab.page.evaluate(
        """(path) => new Promise((resolve, reject) => {
            const socket = window.asokWS(path);
            socket.onopen = () => socket.send("ping over asokWS");
            socket.onmessage = (event) => {
                const line = JSON.parse(event.data);
                if (line.text === "ping over asokWS") {
                    socket.close();
                    resolve({ url: socket.url, line });
                }
            };
            socket.onerror = () => reject(new Error("WebSocket error"));
        })""",
        f"/chat/{ROOM}",
    )
    assert exchange["url"] == f"ws://127.0.0.1:{server.port}/chat/{ROOM}"
    assert exchange["line"]["name"] == "Guest" and exchange["line"]["type"] == "message"
    tab.page.wait_for_selector(".message:has-text('ping over asokWS')")
    context.close()


def test_the_chat_loses_nothing_over_a_dropped_link_and_says_when_it_must(browser, server):
    """The demo's chat socket is the resume client: what was said while its link was down is shown after.

    Lines are sent by a plain client of the room, which gets each one back once the
    server has broadcast it (and kept it in the path's history). Past the history's
    200 lines the page says continuity was lost. A reload shows the room's recent
    lines again, each once.
    """
    room = "resume-demo"
    proxy = LinkProxy(server.port)
    sender = ws_connect(server, f"/chat/{room}", timeout=30)
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"http://127.0.0.1:{proxy.port}/?room={room}")
        page.wait_for_selector("#status.ok")
        assert page.evaluate("window.AsokResume !== undefined")

        def say(*texts: str) -> None:
            for text in texts:
                sender.send(text)
            for text in texts:  # broadcast, and so in the history
                while json.loads(sender.recv())["text"] != text:
                    pass

        def away(*texts: str) -> None:
            proxy.hold()
            page.wait_for_selector("#status:not(.ok)")
            say(*texts)
            proxy.release()
            page.wait_for_selector("#status.ok")

        say("before the drop")
        page.wait_for_selector(".message:has-text('before the drop')")
        away("while away 1", "while away 2", "while away 3")
        for text in ("while away 1", "while away 2", "while away 3", "before the drop"):
            page.wait_for_selector(f".message:has-text('{text}')")
        texts = page.eval_on_selector_all("#messages .message .text", "(items) => items.map((i) => i.textContent)")
        assert texts == ["before the drop", "while away 1", "while away 2", "while away 3"]
        assert page.locator(".continuity-lost").count() == 0

        page.reload()  # a reload shows the room's recent lines again, each once
        page.wait_for_selector("#status.ok")
        say("after the reload")
        page.wait_for_selector(".message:has-text('after the reload')")
        texts = page.eval_on_selector_all("#messages .message .text", "(items) => items.map((i) => i.textContent)")
        assert texts == ["before the drop", "while away 1", "while away 2", "while away 3", "after the reload"]

        away(*(f"flood {n}" for n in range(1, 211)))  # more than the 200 lines the path keeps
        page.wait_for_selector(".continuity-lost:has-text('Continuity lost')")
    finally:
        context.close()
        sender.close()
        proxy.close()
