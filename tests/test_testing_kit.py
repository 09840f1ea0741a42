"""asok_green.testing, used as an app author uses it: pytest run in an Asok project, with the plugin's fixtures.

Nothing here imports the kit into this process. Each project is a real Asok
project on disk (one made by ``asok create``, one by ``tests/asok_project``),
given a test file that uses the ``ws_client`` and ``asok_green_server``
fixtures; ``python -m pytest`` runs in it, the plugin being found by its entry
point, and its JUnit report says how each test went. The test files have no
sleeps: every wait in them is the kit's, for an event.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest

from tests.asok_project import DEMO, SHARED, asok_create, make_project, run_python
from tests.readme import code_blocks
from tests.test_one_port import DOC_HANDLER

pytestmark = pytest.mark.timeout(300)


@dataclass
class Outcome:
    """How one test of the inner run went."""

    outcome: str  # "passed", "failed", "error" or "skipped"
    message: str
    seconds: float


def run_pytest(project: pathlib.Path, *args: str) -> tuple[dict[str, Outcome], str]:
    """``python -m pytest`` in ``project``: each test's outcome by name, and the output."""
    report = project / "report.xml"
    done = run_python(["-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={report}", *args], project, 240)
    output = done.stdout + done.stderr
    assert report.exists(), f"pytest wrote no report (exit {done.returncode}):\n{output}"
    outcomes = {}  # by name, and by "module.name" where two files have a test of one name
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome = "failed" if kind == "failure" else kind
                message = (found.get("message") or "") + "\n" + (found.text or "")
        result = Outcome(outcome, message, float(case.get("time") or 0))
        outcomes[case.get("name")] = outcomes[f"{case.get('classname')}.{case.get('name')}"] = result
    return outcomes, output


def passed(results: dict[str, Outcome], name: str, output: str) -> None:
    """Fail unless the inner test ``name`` passed, showing why it did not."""
    assert name in results, f"{name} did not run:\n{output}"
    result = results[name]
    assert result.outcome == "passed", f"{name} {result.outcome}:\n{result.message}"


# -- a project made by `asok create`, its chat handler tested ----------------------------------

CREATED_TESTS = '''\
"""The chat handler of wsgi.py, tested with asok_green's fixtures."""

import pytest


@pytest.fixture
def alice(asok_green_server):
    return asok_green_server.find_user(email="alice@example.com")


def test_guests_chat_in_their_room(ws_client):
    with ws_client.websocket("/chat/general") as first, ws_client.websocket("/chat/general") as second:
        with ws_client.websocket("/chat/random") as elsewhere:
            first.send("hi")
            assert first.receive() == "Guest: hi"
            assert second.receive() == "Guest: hi"
            elsewhere.assert_nothing_received()


def test_a_logged_in_user_speaks_by_name(ws_client, alice):
    with ws_client.websocket("/chat/general", user=alice) as ws:
        ws.send("hi")
        assert ws.receive() == "alice: hi"


def test_who_is_online(ws_client, alice):
    with ws_client.websocket("/chat/general", user=alice) as ws, ws_client.websocket("/chat/general") as guest:
        assert ws.presence() == [alice.id]
        assert guest.presence_events == []  # the guest came after alice: nobody came online since


def test_the_server_can_be_driven_from_the_test(ws_client, asok_green_server):
    with ws_client.websocket("/chat/news") as ws:
        asok_green_server.call(asok_green_server.ws.broadcast, "/chat/news", "from the test")
        assert ws.receive() == "from the test"
'''


#: The README's examples of "Testing your handlers": a test file, and the plain API without pytest.
README_TESTS, README_PLAIN_API = code_blocks("Testing your handlers")


@pytest.fixture(scope="module")
def created_run(tmp_path_factory) -> tuple[dict[str, Outcome], str, pathlib.Path]:
    """``asok create demo``, the doc's chat handler in wsgi.py, a user table, our test file and the README's: run."""
    project = asok_create(tmp_path_factory.mktemp("created-kit"), "demo", wsgi_tail=DOC_HANDLER)
    for rel in SHARED[:3]:  # the user model, its migration and the seed users, as the demo has them
        source, target = DEMO / rel, project / rel
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    seeded = run_python([str(DEMO / "seed_db.py"), str(project)], project)
    assert seeded.returncode == 0, seeded.stderr
    (project / "tests").mkdir()
    (project / "tests" / "test_chat.py").write_text(CREATED_TESTS)
    (project / "tests" / "test_readme.py").write_text(README_TESTS)
    results, output = run_pytest(project, "tests", "--durations=0")
    return results, output, project


def inner_tests(source: str, module: str) -> list[str]:
    """``module.test_name`` of each test function defined in ``source``."""
    return [f"{module}.{name}" for name in re.findall(r"^def (test_\w+)\(", source, flags=re.M)]


def all_passed(created_run, source: str, module: str, count: int) -> None:
    """The ``count`` tests ``source`` defines, run as ``module`` in the created project, each passed."""
    results, output, _ = created_run
    names = inner_tests(source, module)
    assert len(names) == count
    for name in names:
        passed(results, name, output)
    # The figures, for the record (no assertion on time: the machine is shared).
    print("\n".join(f"{name}: {results[name].seconds:.3f}s (setup, call and teardown)" for name in names))


def test_a_created_project_tests_its_handler_with_the_plugin(created_run):
    all_passed(created_run, CREATED_TESTS, "tests.test_chat", 4)
    _, output, project = created_run
    assert "sleep" not in (project / "tests" / "test_chat.py").read_text()
    print(output[-1500:])


def test_the_readmes_test_file_passes_in_a_created_project(created_run):
    all_passed(created_run, README_TESTS, "tests.test_readme", 3)
    assert "sleep" not in README_TESTS


def run_code(code: str, cwd: pathlib.Path) -> str:
    """Run ``code`` in a fresh ``python -c`` in ``cwd`` (no pytest); what it printed, once it exited 0."""
    done = run_python(["-c", code], cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_readmes_plain_api_example_runs_in_a_created_project(created_run):
    _, _, project = created_run
    assert run_code(README_PLAIN_API, project) == "Guest: hi"


# -- every feature of the kit, on the test project -----------------------------------------------

KIT_ROUTES = """
@ws.on_connect("/private")
def private_connect(conn):
    if conn.user is None:
        conn.close(4001, "log in first")


@ws.on("/private")
def private_message(conn, message):
    conn.send(f"{conn.user.name} says {message}")


import gevent as _gevent

app.departed = []


@ws.on_disconnect("/slowbye")
def slow_goodbye(conn):
    _gevent.sleep(0.3)  # a slow clean-up: a database write, a call to another service
    app.departed.append(conn.close_code)
    ws.broadcast("/watch", f"closed {conn.close_code}")


@ws.on("/watch")
def watch(conn, message):
    pass


@ws.room_authorizer
def rooms_for(conn, room):
    return not room.startswith("admin:") or bool(conn.user and conn.user.is_admin)


@ws.on("/feed", history=50)
def feed(conn, message):
    ws.broadcast(conn.path, message)
"""

KIT_TESTS = '''\
"""Every helper of asok_green.testing, on a project with alice (admin) and bob."""

import json

import pytest

from asok_green.testing import ConnectionClosed, HandshakeRefused, RoomRefused


@pytest.fixture
def alice(asok_green_server):
    return asok_green_server.find_user(name="alice")


@pytest.fixture
def bob(asok_green_server):
    return asok_green_server.find_user(name="bob")


def test_text_bytes_and_json(ws_client):
    with ws_client.websocket("/echo") as ws:
        ws.send("text")
        assert ws.receive() == "text"
        ws.send(b"\\x00\\xff")
        assert ws.receive_bytes() == b"\\x00\\xff"
        ws.send_json({"n": 1})
        assert ws.receive_json() == {"n": 1}


def test_the_socket_is_registered_when_it_is_handed_over(ws_client, asok_green_server):
    with ws_client.websocket("/notifications") as ws:
        hub = asok_green_server.ws
        assert len(asok_green_server.call(hub.connections, "/notifications")) == 1
        assert ws.receive() == "Connected to notification stream"
    assert asok_green_server.call(hub.connections, "/notifications") == []


def test_a_page_that_broadcasts_reaches_the_socket(ws_client):
    with ws_client.websocket("/notifications") as ws:
        assert ws.receive() == "Connected to notification stream"
        assert ws_client.get("/notify?msg=from-a-page").status == 200
        assert ws.receive() == "from-a-page"


def test_logged_in_as_each_user(ws_client, alice, bob):
    with ws_client.websocket("/chat/general", user=alice) as a, ws_client.websocket("/chat/general", user=bob) as b:
        b.send("hello")
        assert a.receive() == "bob: hello"
        assert b.receive() == "bob: hello"
        assert a.presence() == sorted([alice.id, bob.id])
        assert {"op": "broadcast", "type": "presence", "user_id": bob.id, "status": "online"} in a.presence_events
    assert ws_client.get("/whoami", user=bob).text == "bob"


def test_a_logout_closes_the_users_socket_and_the_next_login_is_a_new_session(ws_client, alice):
    cookies = ws_client.login(alice)
    with ws_client.websocket("/chat/general", cookies=cookies) as ws:
        cookie_header = "; ".join(f"{name}={value}" for name, value in cookies.items())
        ws_client.request("GET", "/logout", headers={"Cookie": cookie_header})
        assert ws.wait_closed() == 1008
    with ws_client.websocket("/chat/general", user=alice) as again:
        again.send("back")
        assert again.receive() == "alice: back"


def test_presence_frames_can_be_kept(ws_client, alice):
    with ws_client.websocket("/chat/general", user=alice, presence_frames=True) as ws:
        announced = ws.receive_json()
        assert announced == {"op": "broadcast", "type": "presence", "user_id": alice.id, "status": "online"}


def test_sockets_left_open_are_closed_before_the_next_test_1(ws_client):
    for _ in range(3):
        ws_client.websocket("/slowbye")  # closed by the fixture, after the test


def test_sockets_left_open_are_closed_before_the_next_test_2(asok_green_server):
    assert asok_green_server.app.departed[-3:] == [1000, 1000, 1000]


def test_close_returns_once_on_disconnect_has_run(ws_client, asok_green_server):
    with ws_client.websocket("/watch") as watcher:
        ws_client.websocket("/slowbye").close(4000)
        assert asok_green_server.app.departed[-1] == 4000
        watcher.sync()
        assert watcher.received == ["closed 4000"]


def test_server_close_code(ws_client, alice):
    with ws_client.websocket("/private") as guest:
        assert guest.wait_closed() == 4001
        assert guest.close_reason == "log in first"
        with pytest.raises(ConnectionClosed) as closed:
            guest.receive()
        assert closed.value.code == 4001
    with ws_client.websocket("/private", user=alice) as ws:
        ws.send("hi")
        assert ws.receive() == "alice says hi"


def test_refused_handshakes(ws_client):
    with pytest.raises(HandshakeRefused) as missing:
        ws_client.websocket("/no/such/route")
    assert missing.value.status == 404
    with pytest.raises(HandshakeRefused) as foreign:
        ws_client.websocket("/echo", origin="https://evil.example")
    assert foreign.value.status == 403


def test_rooms_and_room_presence(ws_client, asok_green_server, alice, bob):
    with ws_client.websocket("/asok/live", user=alice) as a, ws_client.websocket("/asok/live", user=bob) as b:
        a.join("general")
        b.join("general")
        assert a.presence("general") == sorted([alice.id, bob.id])
        joined = {"op": "broadcast", "type": "room_presence", "room": "general", "user_id": bob.id, "status": "joined"}
        assert joined in a.presence_events
        asok_green_server.call(asok_green_server.ws.broadcast_to, "general", "to the room")
        assert a.receive() == "to the room"
        assert b.receive() == "to the room"
        b.leave("general")
        assert a.presence("general") == [alice.id]
        asok_green_server.call(asok_green_server.ws.broadcast_to, "general", "again")
        assert a.receive() == "again"
        b.assert_nothing_received()


def test_a_refused_room(ws_client, alice, bob):
    with ws_client.websocket("/asok/live", user=bob) as b:
        with pytest.raises(RoomRefused) as refused:
            b.join("admin:secrets")
        assert refused.value.room == "admin:secrets"
    with ws_client.websocket("/asok/live", user=alice) as a:
        a.join("admin:secrets")


def test_a_handler_that_raises_leaves_the_socket_open(ws_client):
    with ws_client.websocket("/boom") as ws:
        ws.send("x")
        ws.sync()
        assert not ws.closed


def test_the_resume_protocol_is_spoken(ws_client):
    with ws_client.websocket("/feed", subprotocols=["asok-green.v1"]) as ws:
        assert ws.subprotocol == "asok-green.v1"
        position = ws.receive_json()
        assert position["asok"] == "position" and position["s"] == "/feed"
        ws.send("first")
        message = ws.receive_json()
        assert message["d"] == "first" and message["o"] == position["o"] + 1


def test_a_timeout_fails_with_what_arrived(ws_client):
    with ws_client.websocket("/echo") as ws:
        ws.send("one")
        ws.receive()
        ws.receive(timeout=0.3)


def test_receiving_from_a_closed_socket_fails_with_its_code(ws_client):
    with ws_client.websocket("/private") as guest:
        guest.receive()
'''

#: Inner tests that must fail, and what their failure must say.
EXPECTED_FAILURES = {
    "test_a_timeout_fails_with_what_arrived": ["no message on /echo within 0.3s", "Received so far: ['one']"],
    "test_receiving_from_a_closed_socket_fails_with_its_code": ["code 4001", "'log in first'"],
}


@pytest.fixture(scope="module")
def kit_run(tmp_path_factory) -> tuple[dict[str, Outcome], str, pathlib.Path]:
    """The test project with a few more routes, and :data:`KIT_TESTS`: run."""
    project = make_project(tmp_path_factory.mktemp("kit-project"), extra_wsgi=KIT_ROUTES)
    (project / "test_kit.py").write_text(KIT_TESTS)
    results, output = run_pytest(project, "test_kit.py")
    return results, output, project


KIT_PASSING = [
    name[4:].split("(")[0]
    for name in textwrap.dedent(KIT_TESTS).splitlines()
    if name.startswith("def test_") and name[4:].split("(")[0] not in EXPECTED_FAILURES
]


@pytest.mark.parametrize("name", KIT_PASSING)
def test_kit_feature(kit_run, name):
    results, output, _ = kit_run
    passed(results, name, output)


@pytest.mark.parametrize("name", sorted(EXPECTED_FAILURES))
def test_kit_failure_says_what_arrived(kit_run, name):
    results, output, _ = kit_run
    assert results[name].outcome == "failed", f"{name} should fail:\n{output}"
    for text in EXPECTED_FAILURES[name]:
        assert text in results[name].message, results[name].message


def test_kit_tests_have_no_sleeps(kit_run):
    _, _, project = kit_run
    assert "sleep" not in (project / "test_kit.py").read_text()


# -- the plain API, and the plugin's manners ----------------------------------------------------

PLAIN_API = """
from asok_green.testing import TestServer

with TestServer("wsgi:app", root={root!r}) as server:
    with server.client() as client, client.websocket("/echo") as ws:
        ws.send("plain")
        print(ws.receive())
"""


def test_the_plain_api_outside_pytest(kit_run, tmp_path):
    _, _, project = kit_run
    assert run_code(PLAIN_API.format(root=str(project)), tmp_path) == "plain"


def test_the_plugin_leaves_other_projects_alone(tmp_path):
    (tmp_path / "test_plain.py").write_text(
        "import sys\n\ndef test_nothing_loaded():\n"
        "    assert 'asok' not in sys.modules and 'gevent' not in sys.modules\n"
    )
    results, output = run_pytest(tmp_path, "test_plain.py")
    passed(results, "test_nothing_loaded", output)


PATCHED_CONFTEST = """
from gevent import monkey

monkey.patch_all()
"""

PATCHED_TESTS = """
def test_chat_in_a_patched_process(ws_client):
    from gevent import monkey

    assert monkey.is_module_patched("socket")
    with ws_client.websocket("/chat/general") as first, ws_client.websocket("/chat/general") as second:
        first.send("hi")
        assert first.receive() == "Guest: hi"
        assert second.receive() == "Guest: hi"
"""


def test_the_kit_works_when_the_test_process_is_patched_too(kit_run):
    _, _, project = kit_run
    folder = project / "patched"
    folder.mkdir(exist_ok=True)
    (folder / "conftest.py").write_text(PATCHED_CONFTEST)
    (folder / "test_patched.py").write_text(PATCHED_TESTS)
    results, output = run_pytest(project, "patched", "-W", "ignore::gevent.monkey.MonkeyPatchWarning")
    passed(results, "test_chat_in_a_patched_process", output)
    assert "error" not in output.splitlines()[-1], output
