"""``asok_green.publish`` from a script or an ``asok worker`` task reaches a browser resume client that was away.

``asok serve --gevent`` serves the project, whose ``/progress/[user]`` paths
keep history, and a chat page on the resume client (``window.asokWS(path,
{resume: true})``) in Debian's headless Chromium, through a TCP proxy the test
holds down. Another process publishes into the stream with
``asok_green.publish`` while the page's link is down: a plain ``python`` script
on one node with the SQLite store, or a real ``asok worker`` task (Asok's queue
on Debian's redis-server) on two nodes with the Redis store, the page on one
node and the task queued through the other. When the link comes back the
server replays those messages, once and in order, after the ones the page
already showed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

from tests.asok_project import make_project, project_env
from tests.conftest import asok_serve
from tests.link_proxy import LinkProxy
from tests.test_browser import browser  # noqa: F401 - Debian's headless Chromium, as a fixture
from tests.test_publish import REPORT_PAGE, ROUTES, SCRIPT, TASKS, Worker, queue_report, run_script, serving_redis_nodes
from tests.test_resume_browser import (
    RESUME_HTML,
    RESUME_PY,
    SHOWN,
    WAIT_MS,
    open_chat,
    resume_log,
    settle,
    wait_reopened,
    wait_shown,
)

pytestmark = pytest.mark.timeout(180)

T = TypeVar("T")

STREAM = "/progress/browser"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The publish project (``/progress/[user]`` keeps history, a publishing script) with the chat page."""
    root = make_project(tmp_path_factory.mktemp("publish-browser"), extra_wsgi=ROUTES)
    (root / "publish_script.py").write_text(SCRIPT)
    (root / "tasks.py").write_text(TASKS)
    (root / "src/pages/report").mkdir(parents=True, exist_ok=True)
    (root / "src/pages/report/page.py").write_text(REPORT_PAGE)
    (root / "src/pages/resume").mkdir(parents=True, exist_ok=True)
    (root / "src/pages/resume/page.py").write_text(RESUME_PY)
    (root / "src/pages/resume/page.html").write_text(RESUME_HTML)
    return root


@pytest.fixture
def server(project, tmp_path):
    """One node with the default store (SQLite beside the app's database)."""
    proc = asok_serve(project, tmp_path, env=project_env())
    yield proc
    proc.stop()


@pytest.fixture
def proxy(server):
    """A TCP proxy between Chromium and the server, for the test to hold down."""
    link = LinkProxy(server.port)
    yield link
    link.close()


def published_while_away(page, link: LinkProxy, stream: str, publish: Callable[[], T], shown: list[str]) -> T:
    """Hold the page's link down, ``publish``, let it back: the page shows ``shown``, the new ones replayed.

    What was published while away is replayed on the reconnect, once and in
    order, with no continuity lost; returns what ``publish`` returned.
    """
    before = len(page.evaluate(SHOWN))
    opens = resume_log(page)["opens"]
    link.hold()
    page.wait_for_selector("#chat[data-state=reconnecting]", state="attached", timeout=WAIT_MS)
    published = publish()
    assert page.evaluate("window.resumeLog.opens") == opens, "the page came back while the proxy held"

    link.release()
    wait_reopened(page, opens)
    assert settle(page, shown) == shown
    log = resume_log(page)
    replays = [resumed["replayed"] for resumed in log["resumed"] if resumed["stream"] == stream]
    assert replays and replays[-1] == len(shown) - before, log
    assert log["lost"] == [] and page.text_content("#notice") == "", log
    return published


def test_a_script_publish_while_the_page_is_away_is_replayed_in_chromium(browser, project, server, proxy):  # noqa: F811 - the fixture
    page = open_chat(browser, f"http://127.0.0.1:{proxy.port}", STREAM)
    try:
        first = run_script(project, STREAM, "s1", "s2")
        assert wait_shown(page, 2) == ["s1", "s2"]  # live: the server follows the file

        away = published_while_away(
            page, proxy, STREAM, lambda: run_script(project, STREAM, "s3", "s4", "s5"), ["s1", "s2", "s3", "s4", "s5"]
        )
        assert [offset for _, offset in away] == [first[-1][1] + 1, first[-1][1] + 2, first[-1][1] + 3]
    finally:
        page.context.close()


@pytest.fixture
def redis_nodes(project, redis_server, tmp_path):
    """Two nodes of a Redis cluster (history in Redis Streams); Asok's task queue on the same Redis."""
    with serving_redis_nodes(project, redis_server, tmp_path) as nodes:
        yield nodes


def test_an_asok_worker_task_while_the_page_is_away_is_replayed_in_chromium_redis(
    browser,  # noqa: F811 - the fixture
    project,
    redis_nodes,
    redis_server,
    tmp_path,
):
    first, second = redis_nodes
    link = LinkProxy(first.port)
    worker = Worker(project, redis_server.url, tmp_path / "worker.log", WS_REDIS_URL=redis_server.url)
    stream = "/progress/11"
    page = open_chat(browser, f"http://127.0.0.1:{link.port}", stream)
    try:
        queue_report(second.port, "11", 2)
        worker.wait_for("completed")
        assert wait_shown(page, 2) == ["1/2", "2/2"]  # live, published on the other node's Redis

        def run_the_task() -> None:
            queue_report(second.port, "11", 3)
            worker.wait_for("completed", count=2)

        published_while_away(page, link, stream, run_the_task, ["1/2", "2/2", "1/3", "2/3", "3/3"])
    finally:
        page.context.close()
        worker.stop()
        link.close()
