"""Route patterns: ``[param]`` captures, and which route wins when several match."""

import pytest

from asok_green.core.routing import RouteTable, is_canonical, request_path, split_path

pytestmark = pytest.mark.quick


def test_split_path_ignores_empty_segments():
    assert split_path("//chat/general/") == ("chat", "general")


def test_dynamic_segment_is_captured():
    table = RouteTable()
    table.route("/chat/[room]")
    route, params = table.match("/chat/general")
    assert route.pattern == "/chat/[room]"
    assert params == {"room": "general"}


def test_static_route_wins_over_dynamic_one_registered_first():
    table = RouteTable()
    table.route("/chat/[room]")
    table.route("/chat/lobby")
    route, params = table.match("/chat/lobby")
    assert route.pattern == "/chat/lobby"
    assert params == {}


def test_more_literal_segments_win_among_dynamic_routes():
    table = RouteTable()
    table.route("/a/[x]/[y]")
    table.route("/a/[x]/end")
    route, params = table.match("/a/1/end")
    assert route.pattern == "/a/[x]/end"
    assert params == {"x": "1"}


def test_segment_count_must_match():
    table = RouteTable()
    table.route("/chat/[room]")
    assert table.match("/chat") == (None, {})
    assert table.match("/chat/a/b") == (None, {})


def test_unknown_path_matches_nothing():
    table = RouteTable()
    table.route("/echo")
    assert table.match("/nope") == (None, {})


def test_route_is_created_once_per_pattern():
    table = RouteTable()
    assert table.route("/chat/[room]") is table.route("/chat/[room]/")
    assert "/chat/[room]" in table
    assert "/chat" not in table


# --- one spelling per path ---


@pytest.mark.parametrize("path", ["/", "/echo", "/chat/general", "/chat/café", "/a/b.c/..d/..."])
def test_canonical_paths(path):
    assert is_canonical(path)


@pytest.mark.parametrize(
    "path",
    ["", "echo", "/echo/", "//echo", "/chat//general", "/./echo", "/a/../echo", "/chat/..", "/chat/a\x00", "/\x7f"],
)
def test_non_canonical_paths(path):
    assert not is_canonical(path)


def test_request_path_reads_path_info_as_utf8():
    assert request_path("/chat/caf\xc3\xa9") == "/chat/café"
    assert request_path("/notifications") == "/notifications"


@pytest.mark.parametrize("path_info", ["/chat/\xff", "/notifications/", "//notifications", "/chat/.."])
def test_request_path_is_none_for_what_gets_404(path_info):
    assert request_path(path_info) is None


def test_a_non_canonical_path_matches_no_route():
    table = RouteTable()
    table.route("/notifications")
    table.route("/chat/[room]")
    for path in ("/notifications/", "//notifications", "/chat//general", "/chat/general/", "/chat/.."):
        assert table.match(path) == (None, {})
    assert table.match("/chat/café")[1] == {"room": "café"}


def test_a_pattern_with_a_trailing_slash_is_the_canonical_route():
    table = RouteTable()
    route = table.route("/notifications/")
    assert table.match("/notifications") == (route, {})
    assert table.match("/notifications/") == (None, {})
