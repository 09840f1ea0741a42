"""The opening handshake's decisions, driven with plain WSGI environ dicts."""

import pytest

from asok_green.protocol.handshake import check_upgrade, is_upgrade_request, request_headers, response_headers

pytestmark = pytest.mark.quick


def environ(**overrides):
    base = {
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "keep-alive, Upgrade",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_valid_handshake_is_accepted():
    assert check_upgrade(environ()) is None


def test_upgrade_detection_is_case_insensitive():
    assert is_upgrade_request(environ(HTTP_UPGRADE="WebSocket"))
    assert not is_upgrade_request(environ(HTTP_UPGRADE="h2c"))
    assert not is_upgrade_request({})


def test_accept_header_is_computed_from_the_key():
    headers = dict(response_headers(environ()))
    assert headers["Sec-WebSocket-Accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert headers["Upgrade"] == "websocket"


@pytest.mark.parametrize(
    "overrides, status",
    [
        ({"REQUEST_METHOD": "POST"}, 405),
        ({"SERVER_PROTOCOL": "HTTP/1.0"}, 400),
        ({"HTTP_CONNECTION": "keep-alive"}, 400),
        ({"HTTP_SEC_WEBSOCKET_VERSION": "8"}, 426),
        ({"HTTP_SEC_WEBSOCKET_VERSION": None}, 426),
        ({"HTTP_SEC_WEBSOCKET_KEY": None}, 400),
        ({"HTTP_SEC_WEBSOCKET_KEY": "c2hvcnQ="}, 400),
    ],
)
def test_invalid_handshake_is_refused_with_status(overrides, status):
    refusal = check_upgrade(environ(**overrides))
    assert refusal is not None and refusal.status == status


def test_version_refusal_says_which_version_is_spoken():
    refusal = check_upgrade(environ(HTTP_SEC_WEBSOCKET_VERSION="7"))
    assert dict(refusal.headers)["Sec-WebSocket-Version"] == "13"
    assert refusal.status_line == "426 Upgrade Required"


def test_request_headers_are_lower_case_with_dashes():
    headers = request_headers(environ(HTTP_X_FORWARDED_FOR="1.2.3.4", CONTENT_TYPE=""))
    assert headers["x-forwarded-for"] == "1.2.3.4"
    assert headers["sec-websocket-version"] == "13"
    assert "content-type" not in headers
