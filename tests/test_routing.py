"""Route patterns: ``[param]`` captures, and which route wins when several match."""

from asok_green.routing import RouteTable, split_path


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
