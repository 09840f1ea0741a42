"""Behind a reverse proxy: TRUSTED_PROXIES, the page's forwarded address, and WS_PATH.

The pure decisions (``asok_green.core.proxies``, the Origin rule) are driven directly;
then a real server is asked by real clients: one bound to 127.0.0.1 plays the
trusted proxy, one bound to 127.0.0.2 an untrusted client.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.request

import pytest
import websocket

from asok_green.core.origins import OriginPolicy
from asok_green.core.proxies import (
    PAGE_KEY,
    PageAddress,
    ProxyPolicy,
    client_address,
    forwarded_scheme,
    page_address,
    page_port,
    proxy_policy,
    route_path,
    ws_path,
    ws_path_script,
)
from tests.asok_project import make_project, project_env
from tests.conftest import INTROSPECTION, asok_serve

pytestmark = pytest.mark.quick

PEER = ("127.0.0.1", 50000)
TRUSTED = ProxyPolicy.from_setting(["127.0.0.1"])


# -- TRUSTED_PROXIES ---------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", [], 42])
def test_no_setting_trusts_nobody(value):
    policy = ProxyPolicy.from_setting(value)
    assert not policy.enabled
    assert not policy.trusts("127.0.0.1")


def test_star_trusts_every_peer():
    assert ProxyPolicy.from_setting("*").trusts("203.0.113.9")


def test_a_list_trusts_exactly_its_addresses():
    policy = ProxyPolicy.from_setting(["127.0.0.1", "10.0.0.2"])
    assert policy.trusts("10.0.0.2")
    assert not policy.trusts("10.0.0.20")
    assert not policy.trusts("127.0.0.2")


def test_a_string_is_a_comma_separated_list_not_a_substring():
    policy = ProxyPolicy.from_setting(" 127.0.0.1 , 10.0.0.2")
    assert policy.trusts("127.0.0.1") and policy.trusts("10.0.0.2")
    assert not policy.trusts("127.0.0.10")
    assert not policy.trusts("0.0.2")


def test_the_setting_comes_from_config_then_environment():
    assert proxy_policy({"TRUSTED_PROXIES": "10.1.1.1"}, {"TRUSTED_PROXIES": "*"}).trusts("10.1.1.1")
    assert not proxy_policy({"TRUSTED_PROXIES": None}, {"TRUSTED_PROXIES": "*"}).enabled
    assert proxy_policy({}, {"TRUSTED_PROXIES": "*"}).trust_any
    assert proxy_policy(None, {"TRUSTED_PROXIES": "10.2.2.2"}).trusts("10.2.2.2")


# -- the client's address ------------------------------------------------------


def test_forwarded_for_from_a_trusted_peer_names_the_client_with_its_first_hop():
    env = {"HTTP_X_FORWARDED_FOR": "198.51.100.7, 10.0.0.1"}
    assert client_address(PEER, env, TRUSTED) == ("198.51.100.7", 0)


def test_real_ip_is_used_without_forwarded_for():
    assert client_address(PEER, {"HTTP_X_REAL_IP": "2001:db8::1"}, TRUSTED) == ("2001:db8::1", 0)


def test_forwarded_for_wins_over_real_ip():
    env = {"HTTP_X_FORWARDED_FOR": "198.51.100.7", "HTTP_X_REAL_IP": "198.51.100.8"}
    assert client_address(PEER, env, TRUSTED)[0] == "198.51.100.7"


@pytest.mark.parametrize(
    "value, ip",
    [("198.51.100.7:4711", "198.51.100.7"), ("[2001:db8::2]:80", "2001:db8::2"), ("2001:db8::3", "2001:db8::3")],
)
def test_forwarded_addresses_may_carry_a_port(value, ip):
    assert client_address(PEER, {"HTTP_X_FORWARDED_FOR": value}, TRUSTED)[0] == ip


def test_a_forwarded_value_that_is_not_an_address_is_ignored():
    env = {"HTTP_X_FORWARDED_FOR": "<script>, 1.2.3.4", "HTTP_X_REAL_IP": "198.51.100.9"}
    assert client_address(PEER, env, TRUSTED) == ("198.51.100.9", 0)
    assert client_address(PEER, {"HTTP_X_FORWARDED_FOR": "unknown"}, TRUSTED) == PEER


def test_an_untrusted_peer_is_the_client_whatever_it_says():
    env = {"HTTP_X_FORWARDED_FOR": "198.51.100.7", "HTTP_X_REAL_IP": "198.51.100.8"}
    assert client_address(("127.0.0.2", 4000), env, TRUSTED) == ("127.0.0.2", 4000)
    assert client_address(PEER, env, ProxyPolicy()) == PEER


# -- the page's address ----------------------------------------------------------


def environ(peer: str = "127.0.0.1", **headers: str) -> dict:
    env = {"REMOTE_ADDR": peer, "wsgi.url_scheme": "http"}
    env.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    return env


def test_without_a_proxy_the_host_header_is_the_page():
    page = page_address(environ(host="Example.com:8443"), ProxyPolicy())
    assert page == PageAddress("http", "example.com", 8443, forwarded=False)
    assert page.environ_updates() == {"SERVER_NAME": "example.com", "SERVER_PORT": "8443", PAGE_KEY: page}


def test_an_untrusted_peer_cannot_forward_the_page():
    env = environ("127.0.0.2", host="a.com", x_forwarded_host="evil.com", x_forwarded_proto="https")
    assert page_address(env, TRUSTED) == PageAddress("http", "a.com", 80)


def test_a_trusted_proxy_forwards_scheme_host_and_port():
    env = environ(host="backend:8000", x_forwarded_proto="https", x_forwarded_host="example.com, other.com")
    page = page_address(env, TRUSTED)
    assert page == PageAddress("https", "example.com", 443, forwarded=True)
    updates = page.environ_updates()
    assert updates["HTTP_HOST"] == "example.com" and updates["wsgi.url_scheme"] == "https"
    assert updates["SERVER_NAME"] == "example.com" and updates["SERVER_PORT"] == "443"


def test_forwarded_port_completes_a_host_without_one():
    page = page_address(environ(host="example.com", x_forwarded_port="8080"), TRUSTED)
    assert (page.port, page.authority) == (8080, "example.com:8080")
    page = page_address(environ(host="example.com:9000", x_forwarded_port="8080"), TRUSTED)
    assert page.port == 9000


@pytest.mark.parametrize("host", ["", "a b", "a.com:99999", "a.com:x", "[zz]:80", "x" * 300])
def test_a_malformed_host_gives_no_page(host):
    assert page_address(environ(host=host), TRUSTED) is None


def test_a_bad_forwarded_scheme_is_ignored():
    assert page_address(environ(host="a.com", x_forwarded_proto="gopher"), TRUSTED).scheme == "http"


def test_the_scheme_is_known_only_when_forwarded():
    direct = page_address(environ(host="a.com"), ProxyPolicy())
    forwarded = page_address(environ(host="a.com", x_forwarded_proto="https"), TRUSTED)
    assert forwarded_scheme({PAGE_KEY: direct}) is None
    assert forwarded_scheme({PAGE_KEY: forwarded}) == "https"
    assert page_port({PAGE_KEY: forwarded}) == 443 and page_port({}) is None


def test_the_pages_own_origin_must_have_the_forwarded_scheme():
    policy = OriginPolicy()
    assert policy.allows("https://example.com", "example.com", "https")
    assert not policy.allows("http://example.com", "example.com", "https")
    assert policy.allows("http://example.com", "example.com")  # unknown scheme: as before
    assert policy.allows("http://example.com:8080", "example.com:8080", "HTTP")


# -- WS_PATH ----------------------------------------------------------------------


@pytest.mark.parametrize("value, prefix", [("/ws", "/ws"), ("ws/", "/ws"), ("/a//b/", "/a/b"), ("", ""), ("/", "")])
def test_ws_path_is_normalised(value, prefix):
    assert ws_path({"WS_PATH": value}, {}) == prefix


@pytest.mark.parametrize("value", ["/w s", "/ws/../x", '/ws"</script>', "/ws?x"])
def test_an_unsafe_ws_path_is_ignored(value):
    assert ws_path({"WS_PATH": value}, {}) == ""


def test_ws_path_comes_from_config_then_environment():
    assert ws_path({"WS_PATH": "/a"}, {"WS_PATH": "/b"}) == "/a"
    assert ws_path({}, {"WS_PATH": "/b"}) == "/b"
    assert ws_path(None, {}) == ""


def test_route_path_drops_the_prefix_only_under_it():
    assert route_path("/ws/chat/general", "/ws") == "/chat/general"
    assert route_path("/ws", "/ws") == "/"
    assert route_path("/wsx/chat", "/ws") == "/wsx/chat"
    assert route_path("/chat/general", "/ws") == "/chat/general"
    assert route_path("/ws/chat", "") == "/ws/chat"


def test_ws_path_script_is_a_safe_javascript_string():
    assert ws_path_script("/ws", "n0nce") == '<script nonce="n0nce">window.ASOK_WS_PATH = "/ws";</script>\n'


# -- a real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory):
    """The test project served with TRUSTED_PROXIES=127.0.0.1 and WS_PATH=/ws."""
    root = make_project(tmp_path_factory.mktemp("proxied"), extra_wsgi=INTROSPECTION)
    env = project_env(TRUSTED_PROXIES="127.0.0.1", WS_PATH="/ws")
    proc = asok_serve(root, tmp_path_factory.mktemp("proxied-logs"), env=env)
    yield proc
    proc.stop()


def connect_from(source: str, port: int, path: str, headers: list[str], origin: str, host: str | None = None):
    """A websocket-client connection whose socket is bound to ``source``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    options = {"host": host} if host else {}
    return websocket.create_connection(
        f"ws://127.0.0.1:{port}{path}", socket=sock, header=headers, origin=origin, timeout=5, **options
    )


def introspect(ws) -> dict:
    ws.send("{}")
    return json.loads(ws.recv())


def test_a_trusted_proxy_names_the_client(behind_proxy):
    ws = connect_from(
        "127.0.0.1",
        behind_proxy.port,
        "/introspect",
        ["X-Forwarded-For: 198.51.100.7, 127.0.0.1", "X-Forwarded-Proto: https"],
        origin="https://example.com",
        host="example.com",
    )
    try:
        assert introspect(ws)["addr"] == ["198.51.100.7", 0]
    finally:
        ws.close()


def test_an_untrusted_client_cannot_name_itself(behind_proxy):
    ws = connect_from(
        "127.0.0.2", behind_proxy.port, "/introspect", ["X-Forwarded-For: 198.51.100.7"], behind_proxy.url
    )
    try:
        assert introspect(ws)["addr"][0] == "127.0.0.2"
    finally:
        ws.close()


def test_a_trusted_proxy_forwarding_https_refuses_an_http_page(behind_proxy):
    headers = ["X-Forwarded-Proto: https"]
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect_from("127.0.0.1", behind_proxy.port, "/introspect", headers, "http://example.com", "example.com")
    assert refused.value.status_code == 403


def test_an_untrusted_peer_cannot_forward_its_way_past_the_origin_check(behind_proxy):
    headers = ["X-Forwarded-Host: evil.example", "X-Forwarded-Proto: https"]
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect_from("127.0.0.2", behind_proxy.port, "/introspect", headers, origin="https://evil.example")
    assert refused.value.status_code == 403


def test_routes_are_served_under_ws_path_with_their_own_path(behind_proxy):
    origin = behind_proxy.url
    first = connect_from("127.0.0.2", behind_proxy.port, "/ws/chat/general", [], origin)
    second = connect_from("127.0.0.2", behind_proxy.port, "/chat/general", [], origin)
    try:
        first.send("hello")
        assert first.recv() == "Guest: hello"
        assert second.recv() == "Guest: hello"  # one route, one room: the broadcast reaches both
        probe = connect_from("127.0.0.2", behind_proxy.port, "/ws/introspect", [], origin)
        assert introspect(probe)["path"] == "/introspect"
        probe.close()
    finally:
        first.close()
        second.close()


def get_page(server, source: str, headers: dict[str, str]):
    """GET / from a socket bound to ``source``: (CSP header, body)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5, source_address=(source, 0))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"GET / HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    raw_head, _, body = data.partition(b"\r\n\r\n")
    csp = re.search(rb"(?im)^content-security-policy: (.*)\r?$", raw_head)
    return (csp.group(1).decode() if csp else ""), body.decode("utf-8", "replace")


def test_a_page_through_a_trusted_proxy_points_its_sockets_at_the_proxy(behind_proxy):
    headers = {"Host": "example.com", "X-Forwarded-Proto": "https", "X-Forwarded-Port": "8443"}
    csp, body = get_page(behind_proxy, "127.0.0.1", headers)
    assert "wss://example.com:8443" in csp
    assert "localhost" not in csp
    assert 'window.ASOK_WS_PATH = "/ws";' in body
    assert "window.ASOK_WS_PORT = 8443;" in body
    assert body.index("window.ASOK_WS_PATH") < body.index("window.asokWS=")


def test_a_page_served_by_a_proxy_logs_no_host_mismatch(behind_proxy):
    get_page(behind_proxy, "127.0.0.2", {"Host": "example.com"})
    with urllib.request.urlopen(behind_proxy.url + "/whoami", timeout=5) as answer:
        assert answer.status == 200
    assert "Host header mismatch" not in behind_proxy.log()


def test_an_untrusted_peer_gets_the_page_of_its_own_host(behind_proxy):
    csp, body = get_page(behind_proxy, "127.0.0.2", {"Host": "example.com:9000", "X-Forwarded-Port": "1"})
    assert "ws://example.com:9000" in csp
    assert "window.ASOK_WS_PORT = 9000;" in body
