"""The resume client's logic (asok_green/bridge/client_assets/resume.js), checked in real Chromium.

No server: the page is served by Playwright's router on http://resume.test/, and
``window.WebSocket`` is replaced by a scripted socket the test drives frame by
frame, so the client rule of asok-green.v1 (deliver once and in order, drop
duplicates, reconnect on a gap with ``asok_since``, "continuity lost") is checked
case by case. The end-to-end behaviour against the real server is in
tests/test_resume_browser.py.
"""

from __future__ import annotations

import pathlib

import pytest

from tests.test_browser import browser  # noqa: F401 - Debian's headless Chromium, as a fixture

pytestmark = pytest.mark.timeout(60)

ORIGIN = "http://resume.test"
#: The resume client as shipped in the package.
SCRIPT_FILE = pathlib.Path(__file__).resolve().parent.parent / "asok_green" / "bridge" / "client_assets" / "resume.js"

#: A WebSocket stand-in: records what the client does, and lets the test open, feed and drop it.
SCRIPTED_SOCKET = """
window.sockets = [];
class ScriptedSocket {
    constructor(url, protocols) {
        Object.assign(this, { url, protocols, readyState: 0, protocol: "", extensions: "", bufferedAmount: 0 });
        this.sent = [];
        this.closedWith = null;
        window.sockets.push(this);
    }
    send(data) { this.sent.push(data); }
    close(code, reason) { this.closedWith = [code, reason]; this.readyState = 3; }
    accept(protocol = "asok-green.v1") {
        Object.assign(this, { readyState: 1, protocol });
        this.onopen(new Event("open"));
    }
    frame(value) {
        const data = typeof value === "string" ? value : JSON.stringify(value);
        this.onmessage(new MessageEvent("message", { data }));
    }
    drop(code = 1006) { this.readyState = 3; this.onclose(new CloseEvent("close", { code })); }
}
window.WebSocket = ScriptedSocket;
window.tick = (ms = 30) => new Promise((resolve) => setTimeout(resolve, ms));
"""


@pytest.fixture
def page(browser):  # noqa: F811 - the fixture
    """A page on http://resume.test/ holding the resume client and the scripted socket."""
    context = browser.new_context()
    context.route(f"{ORIGIN}/**", lambda route: route.fulfill(content_type="text/html", body="<!doctype html><p>"))
    page = context.new_page()
    page.goto(f"{ORIGIN}/")
    page.add_script_tag(content=SCRIPTED_SOCKET)
    page.add_script_tag(path=str(SCRIPT_FILE))
    yield page
    context.close()


def test_stream_positions_apply_the_client_rule(page):
    verdicts = page.evaluate(
        """() => {
        const positions = new AsokResume.StreamPositions();
        return [
            positions.accept("/c", "E1", 1),      // first message of a stream
            positions.accept("/c", "E1", 2),
            positions.accept("/c", "E1", 2),      // seen already
            positions.accept("/c", "E1", 1),
            positions.accept("/c", "E1", 4),      // 3 is missing
            positions.get("/c").o,                // a gap moves nothing
            positions.accept("/c", "E2", 9),      // a new epoch
            positions.get("/c"),
        ];
    }"""
    )
    assert verdicts == ["deliver", "deliver", "duplicate", "duplicate", "gap", 2, "epoch", {"e": "E2", "o": 9}]


def test_stream_positions_read_the_servers_notices(page):
    verdicts = page.evaluate(
        """() => {
        const positions = new AsokResume.StreamPositions({ "/c": { e: "E1", o: 5 } });
        return [
            positions.notice("resumed", "/c", "E1", 5),
            positions.notice("resumed", "/c", "E1", 7),   // the replay stopped short
            positions.get("/c").o,
            positions.notice("position", "/c", "E1", 5),
            positions.notice("position", "/c", "E1", 8),  // past ours, no replay coming
            positions.get("/c").o,
            positions.notice("continuity_lost", "/c", "E3", 2),
            positions.get("/c"),
            positions.notice("position", "room:r", "R1", 0),
            positions.notice("position", "room:r", "R2", 0),
        ];
    }"""
    )
    assert verdicts == ["ok", "gap", 5, "ok", "lost", 8, "lost", {"e": "E3", "o": 2}, "ok", "lost"]


def test_backoff_is_exponential_with_full_jitter_and_a_cap(page):
    delays = page.evaluate(
        """() => [0, 1, 2, 3, 10, 60].map((attempt) => [
            AsokResume.backoffDelay(attempt, 500, 10000, () => 0),
            AsokResume.backoffDelay(attempt, 500, 10000, () => 0.5),
            AsokResume.backoffDelay(attempt, 500, 10000, () => 0.999999),
        ])"""
    )
    assert [low for low, _, _ in delays] == [0] * 6
    assert [middle for _, middle, _ in delays] == [250, 500, 1000, 2000, 5000, 5000]
    assert [high for _, _, high in delays] == [499, 999, 1999, 3999, 9999, 9999]


def test_since_goes_in_the_query_string(page):
    urls = page.evaluate(
        """() => [
            AsokResume.withSince("/chat/a", undefined),
            AsokResume.withSince("/chat/a", { e: "x-Y_1", o: 12 }),
            AsokResume.withSince("/chat/a?lang=fr", { e: "E", o: 0 }),
        ]"""
    )
    assert urls == ["/chat/a", "/chat/a?asok_since=x-Y_1:12", "/chat/a?lang=fr&asok_since=E:0"]


def test_a_path_stream_is_delivered_once_in_order_across_gaps_and_drops(page):
    seen = page.evaluate(
        """async () => {
        const got = [], lost = [], resumed = [], reconnecting = [];
        let opens = 0;
        const socket = asokWS("/chat/general", { resume: true, backoffBase: 1, backoffCap: 1 });
        socket.onmessage = (event) => got.push([event.data, event.stream || null, event.offset || null]);
        socket.onopen = () => { opens += 1; };
        socket.addEventListener("continuitylost", (event) => lost.push(event.detail));
        socket.onresumed = (event) => resumed.push(event.detail);
        socket.addEventListener("reconnecting", (event) => reconnecting.push(event.detail.code));
        const states = [socket.readyState];
        const [first] = sockets;
        first.accept();
        states.push(socket.readyState, socket.protocol);
        first.frame({ asok: "position", s: "/chat/general", e: "E1", o: 4 });
        first.frame({ s: "/chat/general", e: "E1", o: 5, d: "five" });
        first.frame({ s: "/chat/general", e: "E1", o: 5, d: "five again" });
        first.frame({ d: "not numbered" });
        first.frame({ s: "/chat/general", e: "E1", o: 7, d: "seven, too early" });
        states.push(socket.readyState);
        await tick();
        const second = sockets[1];
        second.accept();
        second.frame({ s: "/chat/general", e: "E1", o: 6, d: "six" });
        second.frame({ s: "/chat/general", e: "E1", o: 7, d: "seven" });
        second.frame({ asok: "resumed", s: "/chat/general", e: "E1", o: 7, replayed: 2 });
        second.frame({ s: "/chat/general", e: "E1", o: 8, d: "eight" });
        second.drop(1012);
        await tick();
        const third = sockets[2];
        third.accept();
        third.frame({ asok: "continuity_lost", s: "/chat/general", e: "E2", o: 40, reason: "history_exceeded" });
        third.frame({ s: "/chat/general", e: "E2", o: 41, d: "forty-one" });
        return {
            got, lost, resumed, reconnecting, opens, states,
            urls: sockets.map((s) => s.url.replace(location.host, "HOST")),
            protocols: sockets.map((s) => s.protocols),
            firstClosed: first.closedWith,
        };
    }"""
    )
    assert seen["got"] == [
        ["five", "/chat/general", 5],
        ["not numbered", None, None],
        ["six", "/chat/general", 6],
        ["seven", "/chat/general", 7],
        ["eight", "/chat/general", 8],
        ["forty-one", "/chat/general", 41],
    ]
    assert seen["urls"] == [
        "ws://HOST/chat/general",
        "ws://HOST/chat/general?asok_since=E1:5",
        "ws://HOST/chat/general?asok_since=E1:8",
    ]
    assert seen["protocols"] == ["asok-green.v1"] * 3
    assert seen["firstClosed"] == [1000, "resume"]
    assert seen["resumed"] == [{"stream": "/chat/general", "epoch": "E1", "offset": 7, "replayed": 2}]
    assert seen["lost"] == [{"stream": "/chat/general", "epoch": "E2", "offset": 40, "reason": "history_exceeded"}]
    assert seen["reconnecting"] == [1006, 1012]
    assert seen["opens"] == 3
    assert seen["states"] == [0, 1, "asok-green.v1", 0]


def test_a_new_epoch_in_a_message_is_delivered_after_continuity_lost(page):
    seen = page.evaluate(
        """() => {
        const order = [];
        const socket = asokWS("/feed", { resume: true });
        socket.onmessage = (event) => order.push("message " + event.data);
        socket.oncontinuitylost = (event) => order.push("lost " + event.detail.reason);
        sockets[0].accept();
        sockets[0].frame({ asok: "position", s: "/feed", e: "E1", o: 0 });
        sockets[0].frame({ s: "/feed", e: "E1", o: 1, d: "a" });
        sockets[0].frame({ s: "/feed", e: "E2", o: 1, d: "b" });
        sockets[0].frame({ s: "/feed", e: "E2", o: 2, d: "c" });
        return order;
    }"""
    )
    assert seen == ["message a", "lost epoch_changed", "message b", "message c"]


def test_rooms_are_joined_again_with_since_and_sends_wait_for_the_link(page):
    seen = page.evaluate(
        """async () => {
        const got = [];
        const socket = asokWS("/asok/live", { resume: true, backoffBase: 1, backoffCap: 1 });
        socket.onmessage = (event) => got.push(event.data);
        sockets[0].accept();
        socket.send(JSON.stringify({ op: "join_room", room: "lobby" }));
        socket.send(JSON.stringify({ op: "join_room", room: "kitchen" }));
        sockets[0].frame({ asok: "position", s: "room:lobby", e: "L", o: 3 });
        sockets[0].frame({ asok: "position", s: "room:kitchen", e: "K", o: 0 });
        sockets[0].frame({ s: "room:lobby", e: "L", o: 4, d: "lobby 4" });
        socket.send(JSON.stringify({ op: "leave_room", room: "kitchen" }));
        sockets[0].drop();
        socket.send("written while away");
        await tick();
        sockets[1].accept();
        socket.send(JSON.stringify({ op: "join_room", room: "lobby" }));
        return { got, first: sockets[0].sent, second: sockets[1].sent, url: sockets[1].url };
    }"""
    )
    assert seen["got"] == ["lobby 4"]
    assert seen["first"] == [
        '{"op":"join_room","room":"lobby"}',
        '{"op":"join_room","room":"kitchen"}',
        '{"op":"leave_room","room":"kitchen"}',
    ]
    assert seen["second"] == [
        '{"op":"join_room","room":"lobby","since":{"e":"L","o":4}}',
        "written while away",
        '{"op":"join_room","room":"lobby","since":{"e":"L","o":4}}',
    ]
    assert "asok_since" not in seen["url"], "no numbered message came for the path: nothing to resume there"


def test_backoff_starts_again_after_a_stable_link(page):
    attempts = page.evaluate(
        """async () => {
        const run = async (stableAfter) => {
            const before = sockets.length;
            const attempts = [];
            const socket = asokWS("/x", { resume: true, backoffBase: 1, backoffCap: 1, stableAfter });
            socket.addEventListener("reconnecting", (event) => attempts.push(event.detail.attempt));
            for (let i = 0; i < 3; i++) {
                sockets[before + i].accept();
                await tick(5);
                sockets[before + i].drop();
                await tick();
            }
            socket.close();
            return attempts;
        };
        return [await run(60000), await run(0)];
    }"""
    )
    assert attempts == [[1, 2, 3], [1, 1, 1]]


def test_close_fires_once_and_stops_reconnecting(page):
    seen = page.evaluate(
        """async () => {
        const closes = [];
        const socket = asokWS("/x", { resume: true, backoffBase: 1, backoffCap: 1 });
        socket.onclose = (event) => closes.push([event.code, event.wasClean]);
        sockets[0].accept();
        sockets[0].drop();
        await tick();
        sockets[1].accept();
        socket.close(1000, "bye");
        const state = socket.readyState;
        sockets[1].drop(1000);
        await tick(60);
        socket.send("too late");
        return { closes, state, after: socket.readyState, count: sockets.length, sent: sockets[1].sent };
    }"""
    )
    assert seen == {"closes": [[1000, False]], "state": 2, "after": 3, "count": 2, "sent": []}


def test_positions_persist_in_session_storage_when_asked(page):
    url = page.evaluate(
        """async () => {
        const socket = asokWS("/feed", { resume: true, persist: true });
        sockets[0].accept();
        sockets[0].frame({ asok: "position", s: "/feed", e: "E", o: 10 });
        sockets[0].frame({ s: "/feed", e: "E", o: 11, d: "eleven" });
        window.dispatchEvent(new Event("pagehide"));
        asokWS("/feed", { resume: true, persist: true });
        asokWS("/feed", { resume: true });
        return sockets.slice(1).map((s) => s.url.split("/feed")[1]);
    }"""
    )
    assert url == ["?asok_since=E:11", ""]


def test_binary_messages_follow_binary_type(page):
    seen = page.evaluate(
        """async () => {
        const got = [];
        const socket = asokWS("/bin", { resume: true });
        socket.binaryType = "arraybuffer";
        socket.onmessage = (event) => got.push(Array.from(new Uint8Array(event.data)));
        sockets[0].accept();
        sockets[0].frame({ b: btoa("\\x00\\x01\\xff") });
        socket.binaryType = "blob";
        socket.onmessage = async (event) => got.push(event.data instanceof Blob ? await event.data.text() : "?");
        sockets[0].frame({ s: "/bin", e: "E", o: 1, b: btoa("hi") });
        await tick();
        return got;
    }"""
    )
    assert seen == [[0, 1, 255], "hi"]


def test_without_the_option_asokws_is_the_helper_it_was(page):
    seen = page.evaluate(
        """() => {
        const calls = [];
        window.asokWS = function () { calls.push(Array.from(arguments)); return "the helper's socket"; };
        return {
            plain: window.asokWS("/chat/general"),
            off: window.asokWS("/chat/general", { resume: false }),
            calls,
            resumable: window.asokWS("/chat/general", { resume: true }) instanceof AsokResume.ResumingSocket,
            opened: sockets.length,
        };
    }"""
    )
    assert seen == {
        "plain": "the helper's socket",
        "off": "the helper's socket",
        "calls": [["/chat/general"], ["/chat/general", {"resume": False}]],
        "resumable": True,
        "opened": 1,
    }


def test_a_server_without_the_protocol_gets_a_reconnecting_plain_socket(page):
    seen = page.evaluate(
        """() => {
        const got = [];
        const socket = asokWS("/old", { resume: true });
        socket.onmessage = (event) => got.push(event.data);
        sockets[0].accept("");
        sockets[0].frame('{"s": "/old", "e": "E", "o": 1, "d": "as is"}');
        sockets[0].frame("plain text");
        return { got, protocol: socket.protocol };
    }"""
    )
    assert seen == {"got": ['{"s": "/old", "e": "E", "o": 1, "d": "as is"}', "plain text"], "protocol": ""}


def test_handlers_see_the_socket_as_target_and_one_that_throws_stops_no_one(page):
    seen = page.evaluate(
        """async () => {
        const seen = [];
        const socket = asokWS("/x", { resume: true });
        socket.onmessage = (event) => { seen.push(["on", event.target === socket]); throw new Error("page bug"); };
        socket.addEventListener("message", (event) => seen.push(["listener", event.currentTarget === socket]));
        window.addEventListener("error", (event) => { event.preventDefault(); seen.push(["reported"]); });
        sockets[0].accept();
        sockets[0].frame({ d: "hello" });
        await tick();
        return seen;
    }"""
    )
    assert seen == [["on", True], ["reported"], ["listener", True]]
