"""A chat page using the resume client, in real headless Chromium, against ``asok serve --gevent``.

The page (``/resume?path=...``) opens ``window.asokWS(path, {resume: true})`` and
lists every message it is given, in order; it shows "continuity lost" when the
socket says so. Messages are broadcast by the server (``/publish``, a page that
calls ``ws.broadcast``) from a thread of the test, at a steady pace, while the
test breaks the page's link:

- a TCP proxy (tests/link_proxy.py) between Chromium and the server cuts every
  link, and holds it down for a while: the page gets every message once, in order;
- the server restarts on SIGHUP, twice (the process asok started, then the parent it
  becomes): the same, each old process closing the page's socket with 1012;
- the link stays down while more messages are broadcast than the history keeps:
  the page shows "continuity lost", then goes on with live messages.

The routes keep history in the server's default store (SQLite beside the app's
database). Chromium is Debian's, as in tests/test_browser.py.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.parse

import pytest

from tests.asok_project import fetch, make_project, project_env
from tests.conftest import asok_serve
from tests.link_proxy import LinkProxy
from tests.test_browser import browser  # noqa: F401 - Debian's headless Chromium, as a fixture

pytestmark = pytest.mark.timeout(120)

WAIT_MS = 30_000
#: Messages the short history keeps (the "continuity lost" case broadcasts more while the page is away).
SHORT_HISTORY = 5

ROUTES = f"""
@ws.on("/feed/[room]", history=500)
def on_feed(conn, message):
    ws.broadcast(conn.path, message)


@ws.on("/brief/[room]", history={SHORT_HISTORY})
def on_brief(conn, message):
    ws.broadcast(conn.path, message)


ws.keep_history("room:*", size=500)


@ws.room_authorizer
def any_room(conn, room):
    return True
"""

PUBLISH_PY = '''\
"""/publish?path=/feed/x&text=...: broadcast `text` to a path; ?room=r&text=...: to a room."""


def render(request):
    ws = request.app.ws
    text = request.args.get("text", "")
    if request.args.get("room"):
        ws.broadcast_to(request.args["room"], text)
    else:
        ws.broadcast(request.args["path"], text)
    return request.text("sent")
'''

RESUME_PY = '''\
"""/resume?path=/feed/x[&room=r][&persist=1]: a chat page on the resume client."""


def render(request):
    return request.html("page.html")
'''

# Lists every text message that is not JSON (the /asok/live socket also gets presence frames).
RESUME_HTML = """\
{% extends "html/base.html" %}
{% block main %}
<section id="chat" data-state="connecting">
    <p id="notice"></p>
    <ol id="messages"></ol>
</section>
<script type="module">
const query = new URLSearchParams(location.search);
const box = document.getElementById("chat");
const log = window.resumeLog = { opens: 0, reconnecting: 0, codes: [], resumed: [], lost: [] };
const socket = window.asokWS(query.get("path"), {
    resume: true, persist: query.has("persist"), backoffBase: 200, backoffCap: 1000,
});
window.chatSocket = socket;
if (query.get("room")) {
    socket.send(JSON.stringify({ op: "join_room", room: query.get("room") }));
}
socket.onopen = () => { log.opens += 1; box.dataset.state = "open"; };
socket.addEventListener("reconnecting", (event) => {
    log.reconnecting += 1;
    log.codes.push(event.detail.code);
    box.dataset.state = "reconnecting";
});
socket.onresumed = (event) => { log.resumed.push(event.detail); };
socket.oncontinuitylost = (event) => {
    log.lost.push(event.detail);
    document.getElementById("notice").textContent = "continuity lost: some messages were missed";
};
socket.onmessage = (event) => {
    if (typeof event.data !== "string" || event.data.startsWith("{")) return;
    const item = document.createElement("li");
    item.textContent = event.data;
    document.getElementById("messages").append(item);
};
</script>
{% endblock %}
"""

SHOWN = "() => [...document.querySelectorAll('#messages li')].map((li) => li.textContent)"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The test project with routes and rooms that keep history, a publish page and the chat page."""
    root = make_project(tmp_path_factory.mktemp("resume-browser"), extra_wsgi=ROUTES)
    for name, source in (("publish/page.py", PUBLISH_PY), ("resume/page.py", RESUME_PY)):
        (root / "src/pages" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "src/pages" / name).write_text(source)
    (root / "src/pages/resume/page.html").write_text(RESUME_HTML)
    return root


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    """The project served by ``asok serve --gevent``; a restart drains its sockets within a second."""
    proc = asok_serve(project, tmp_path_factory.mktemp("resume-logs"), env=project_env(WS_DRAIN_SECONDS="1"))
    yield proc
    proc.stop()


@pytest.fixture
def proxy(server):
    """A TCP proxy in front of the server, for the test to cut."""
    link = LinkProxy(server.port)
    yield link
    link.close()


class Publisher:
    """Broadcasts ``prefix1``, ``prefix2``... through the server at a steady pace, from a thread."""

    def __init__(self, server, prefix: str, *, path: str | None = None, room: str | None = None, pause=0.04):
        self.url = f"{server.url}/publish"
        self.target = {"room": room} if room else {"path": path}
        self.prefix = prefix
        self.pause = pause
        self.sent: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, count: int) -> list[str]:
        """Broadcast ``count`` messages now, one after the other; the texts sent."""
        return [self._one() for _ in range(count)]

    def _one(self) -> str:
        text = f"{self.prefix}{len(self.sent) + 1}"
        query = urllib.parse.urlencode({**self.target, "text": text})
        try:
            answer = fetch(f"{self.url}?{query}", timeout=10)
        except OSError as error:
            self.failures.append(f"{text}: {error}")
            return text
        if answer.status == 200:
            self.sent.append(text)
        else:
            self.failures.append(f"{text}: HTTP {answer.status}")
        return text

    def start(self) -> Publisher:
        """Keep broadcasting from a thread until ``stop``."""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.pause):
            self._one()

    def stop(self) -> list[str]:
        """Stop the thread; every text the server accepted, in order."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(20)
        return list(self.sent)


def open_chat(browser, base_url: str, path: str, **query: str):  # noqa: F811 - the fixture
    """A new tab on the chat page for ``path``, its resume socket open."""
    page = browser.new_context().new_page()
    page.goto(f"{base_url}/resume?" + urllib.parse.urlencode({"path": path, **query}))
    wait_open(page)
    return page


def wait_open(page) -> None:
    """Wait until the page's resume socket is open."""
    page.wait_for_selector("#chat[data-state=open]", state="attached", timeout=WAIT_MS)


def wait_shown(page, count: int) -> list[str]:
    """Wait until the page lists at least ``count`` messages; the list."""
    try:
        page.wait_for_function(f"(n) => ({SHOWN})().length >= n", arg=count, timeout=WAIT_MS)
    except Exception as error:
        raise AssertionError(f"the page shows {page.evaluate(SHOWN)}, expected {count} messages") from error
    return page.evaluate(SHOWN)


def settle(page, expected: list[str]) -> list[str]:
    """Wait for every expected message, then a little more (a duplicate would show up); the list."""
    wait_shown(page, len(expected))
    page.wait_for_timeout(300)
    return page.evaluate(SHOWN)


def wait_reopened(page, opens: int) -> None:
    """Wait until the page's socket has opened more than ``opens`` times."""
    page.wait_for_function("(n) => window.resumeLog.opens > n", arg=opens, timeout=WAIT_MS)


def wait_until(condition, what: str, timeout: float = 20) -> None:
    """Wait until ``condition()`` holds; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(0.05)


def restarting_parent(pid: int) -> bool:
    """True once process ``pid`` (the one ``asok serve`` started) has become the parent that restarts servers."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return b"asok_green.process.restarter" in cmdline.read()


def resume_log(page) -> dict:
    return page.evaluate("window.resumeLog")


def test_the_page_speaks_the_resume_protocol_and_plain_asokws_is_unchanged(browser, server):  # noqa: F811 - the fixture
    page = open_chat(browser, server.url, "/feed/protocol")
    assert page.evaluate("window.chatSocket.protocol") == "asok-green.v1"
    plain = page.evaluate(
        """() => new Promise((resolve, reject) => {
            const socket = window.asokWS("/echo");
            socket.onopen = () => socket.send("plain ping");
            socket.onmessage = (event) => {
                resolve({ data: event.data, protocol: socket.protocol, native: socket instanceof WebSocket });
                socket.close();
            };
            socket.onerror = () => reject(new Error("WebSocket error"));
        })"""
    )
    assert plain == {"data": "plain ping", "protocol": "", "native": True}
    Publisher(server, "p", path="/feed/protocol").publish(2)
    assert wait_shown(page, 2) == ["p1", "p2"]
    page.context.close()


def test_every_message_survives_dropped_links(browser, server, proxy):  # noqa: F811 - the fixture
    page = open_chat(browser, f"http://127.0.0.1:{proxy.port}", "/feed/drop")
    publisher = Publisher(server, "d", path="/feed/drop")
    publisher.publish(3)
    wait_shown(page, 3)

    publisher.start()
    for _ in range(2):  # quick drops: the page reconnects at once
        opens = resume_log(page)["opens"]
        page.wait_for_timeout(300)
        proxy.cut()
        wait_reopened(page, opens)
    opens = resume_log(page)["opens"]
    proxy.hold()  # away for a while: messages go on without the page
    held_from = len(publisher.sent)
    wait_until(lambda: len(publisher.sent) >= held_from + 10, "10 broadcasts while the page is away")
    proxy.release()
    wait_reopened(page, opens)
    page.wait_for_timeout(300)
    sent = publisher.stop()

    assert not publisher.failures, publisher.failures
    assert settle(page, sent) == sent
    log = resume_log(page)
    assert log["opens"] == 4, log
    assert sum(resumed["replayed"] for resumed in log["resumed"]) >= 10, log
    assert log["lost"] == [] and page.text_content("#notice") == ""
    print(f"dropped links: {len(sent)} broadcasts, {proxy.refused} links refused while held, {log}")
    page.context.close()


def test_every_room_message_survives_a_dropped_link(browser, server, proxy):  # noqa: F811 - the fixture
    page = open_chat(browser, f"http://127.0.0.1:{proxy.port}", "/asok/live", room="resume-lobby")
    publisher = Publisher(server, "r", room="resume-lobby")
    # The join goes out once the socket opens: wait for the room's first message to come through.
    deadline = time.monotonic() + 10
    while not page.evaluate(SHOWN) and time.monotonic() < deadline:
        publisher.publish(1)
        page.wait_for_timeout(100)
    first = page.evaluate(SHOWN)
    assert first, "the page never received a message of the room it joined"

    publisher.start()
    page.wait_for_timeout(300)
    opens = resume_log(page)["opens"]
    proxy.hold()
    held_from = len(publisher.sent)
    wait_until(lambda: len(publisher.sent) >= held_from + 10, "10 broadcasts while the page is away")
    proxy.release()
    wait_reopened(page, opens)
    page.wait_for_timeout(300)
    sent = publisher.stop()

    assert not publisher.failures, publisher.failures
    expected = sent[sent.index(first[0]) :]
    assert settle(page, expected) == expected
    log = resume_log(page)
    replayed = [resumed["replayed"] for resumed in log["resumed"] if resumed["stream"] == "room:resume-lobby"]
    assert replayed and replayed[-1] >= 10, log
    assert log["lost"] == []
    page.context.close()


def test_a_reload_resumes_from_session_storage(browser, server):  # noqa: F811 - the fixture
    context = browser.new_context()
    page = context.new_page()
    url = f"{server.url}/resume?path=/feed/reload&persist=1"
    page.goto(url)
    wait_open(page)
    publisher = Publisher(server, "n", path="/feed/reload")
    publisher.publish(3)
    wait_shown(page, 3)
    page.goto(f"{server.url}/whoami")  # the page and its socket are gone
    publisher.publish(4)
    page.goto(url)
    assert settle(page, ["n4", "n5", "n6", "n7"]) == ["n4", "n5", "n6", "n7"]
    assert resume_log(page)["resumed"][0]["replayed"] == 4
    context.close()


def test_continuity_lost_is_shown_when_the_history_no_longer_reaches_back(browser, server, proxy):  # noqa: F811 - the fixture
    page = open_chat(browser, f"http://127.0.0.1:{proxy.port}", "/brief/lost")
    publisher = Publisher(server, "b", path="/brief/lost")
    publisher.publish(2)
    assert wait_shown(page, 2) == ["b1", "b2"]

    proxy.hold()
    publisher.publish(SHORT_HISTORY + 5)  # b3..b12: the history keeps only the last five
    assert page.text_content("#notice") == ""
    proxy.release()
    page.wait_for_selector("#notice:has-text('continuity lost')", timeout=WAIT_MS)
    log = resume_log(page)
    assert [lost["reason"] for lost in log["lost"]] == ["history_exceeded"], log

    publisher.publish(1)  # live messages go on after the notice and what the history still held
    shown = wait_shown(page, 8)
    assert shown == ["b1", "b2"] + [f"b{n}" for n in range(SHORT_HISTORY + 3, SHORT_HISTORY + 9)]
    page.context.close()


def test_every_message_survives_sighup_restarts(browser, server):  # noqa: F811 - the fixture
    page = open_chat(browser, server.url, "/feed/restart")
    publisher = Publisher(server, "h", path="/feed/restart")
    publisher.publish(3)
    wait_shown(page, 3)

    publisher.start()
    # The first SIGHUP reaches the serving process itself; the second, the parent it left behind.
    for restart in (1, 2):
        page.wait_for_timeout(500)
        server.proc.send_signal(signal.SIGHUP)
        try:
            wait_reopened(page, restart)
        except Exception:
            publisher.stop()
            if server.proc.poll() is not None:
                pytest.fail(f"the server exited on SIGHUP (status {server.proc.returncode}): it does not restart")
            raise AssertionError(f"restart {restart} did not move the page: {resume_log(page)}") from None
        # The first restart ends when the process asok started has drained and become the restarting parent.
        wait_until(lambda: restarting_parent(server.proc.pid), "the first process turned restarting parent")
    page.wait_for_timeout(1000)
    sent = publisher.stop()

    assert server.proc.poll() is None, "the server is gone after the restarts"
    assert not publisher.failures, f"broadcasts refused during the restarts: {publisher.failures}"
    assert settle(page, sent) == sent
    log = resume_log(page)
    assert log["codes"] == [1012, 1012], f"each old process closes the page's socket with 1012: {log}"
    assert log["lost"] == [] and page.text_content("#notice") == "", log
    print(f"restarts: {len(sent)} broadcasts, {log}")
    page.context.close()
