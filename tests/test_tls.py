"""TLS without a proxy: ``--certfile``/``--keyfile`` serve https and wss on the one port.

A certificate authority and a server certificate for 127.0.0.1 are made in the
test (trustme); clients verify the server against that authority: urllib over
https, websocket-client over wss, and Chromium loading the page and chatting.
"""

from __future__ import annotations

import pathlib
import socket
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
import websocket

from tests.asok_project import project_env
from tests.conftest import BIN, ServerProcess, asok_serve, free_port
from tests.test_browser import browser  # noqa: F401 - Debian's headless Chromium, as a fixture

trustme = pytest.importorskip("trustme")

#: Seconds the TLS test server gives a client to finish its handshake and send its request.
HANDSHAKE_TIMEOUT = 2


class Certificates:
    """PEM files of a test authority and of a server certificate it signed for 127.0.0.1 and localhost."""

    def __init__(self, folder: pathlib.Path):
        authority = trustme.CA()
        issued = authority.issue_cert("127.0.0.1", "localhost")
        self.ca = folder / "ca.pem"
        self.cert = folder / "server.pem"
        self.key = folder / "server.key"
        authority.cert_pem.write_to_path(str(self.ca))
        issued.private_key_pem.write_to_path(str(self.key))
        for index, blob in enumerate(issued.cert_chain_pems):
            blob.write_to_path(str(self.cert), append=index > 0)

    @property
    def options(self) -> tuple[str, ...]:
        """The server's command-line options."""
        return ("--certfile", str(self.cert), "--keyfile", str(self.key))

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the test authority, and checks the host name."""
        return ssl.create_default_context(cafile=str(self.ca))


def https_get(url: str, certificates: Certificates) -> tuple[int, str]:
    """Status and body of a verified https GET."""
    with urllib.request.urlopen(url, context=certificates.client_context(), timeout=20) as response:
        return response.status, response.read().decode("utf-8", "replace")


def wss_connect(port: int, path: str, certificates: Certificates) -> websocket.WebSocket:
    """A websocket-client connection over wss that verifies the server against the test authority."""
    return websocket.create_connection(
        f"wss://127.0.0.1:{port}{path}",
        origin=f"https://127.0.0.1:{port}",
        timeout=10,
        sslopt={"ca_certs": str(certificates.ca), "cert_reqs": ssl.CERT_REQUIRED},
    )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Certificates:
    """A fresh authority and server certificate."""
    return Certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(project, certificates, tmp_path_factory):
    """The test project served by ``asok serve --gevent --certfile ... --keyfile ...``."""
    env = dict(project_env(), WS_HANDSHAKE_TIMEOUT=str(HANDSHAKE_TIMEOUT))
    proc = asok_serve(project, tmp_path_factory.mktemp("tls-logs"), *certificates.options, env=env)
    yield proc
    assert proc.stop() == 0
    assert "Traceback" not in proc.log_path.read_text(errors="replace")


def test_https_page_verifies_against_the_authority(tls_server, certificates):
    status, body = https_get(f"https://127.0.0.1:{tls_server.port}/", certificates)
    assert status == 200 and "Test chat" in body
    assert f"serving https://127.0.0.1:{tls_server.port}" in tls_server.log()


def test_wss_clients_chat_on_the_same_port(tls_server, certificates):
    first = wss_connect(tls_server.port, "/chat/tls", certificates)
    second = wss_connect(tls_server.port, "/chat/tls", certificates)
    try:
        first.send("over tls")
        assert first.recv() == "Guest: over tls"
        assert second.recv() == "Guest: over tls"
    finally:
        first.close()
        second.close()


def test_a_client_that_does_not_trust_the_certificate_is_refused(tls_server):
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"https://127.0.0.1:{tls_server.port}/", timeout=20)
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)


def test_plain_http_and_bare_tcp_to_the_tls_port_end_quietly(tls_server, certificates):
    socket.create_connection(("127.0.0.1", tls_server.port), timeout=5).close()
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        while plain.recv(4096):
            pass  # whatever TLS alert comes back, the server then closes
    assert https_get(f"https://127.0.0.1:{tls_server.port}/whoami", certificates) == (200, "guest")
    assert "Traceback" not in tls_server.log()


def test_a_client_that_never_finishes_its_tls_handshake_is_dropped(tls_server):
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=HANDSHAKE_TIMEOUT * 10) as silent:
        assert silent.recv(4096) == b""  # closed by the server, not by this client's timeout


def test_missing_certificate_file_is_refused_at_start_up(project, tmp_path):
    result = subprocess.run(
        [str(BIN / "asok"), "serve", "--gevent", "--port", str(free_port()), "--certfile", str(tmp_path / "none.pem")],
        cwd=project,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "none.pem: no such file" in result.stderr


def test_python_m_asok_green_serve_takes_the_certificate(project, certificates, tmp_path):
    port = free_port()
    argv = [str(BIN / "python"), "-m", "asok_green", "serve", "--port", str(port), *certificates.options]
    proc = ServerProcess(argv, project, project_env(), port, tmp_path / "python-m.log")
    try:
        proc.wait_for_log("serving https://", timeout=30)
        assert https_get(f"https://127.0.0.1:{port}/whoami", certificates) == (200, "guest")
    finally:
        assert proc.stop() == 0


def test_asok_dev_gevent_serves_https_and_wss(project, certificates, tmp_path):
    port = free_port()
    argv = [str(BIN / "asok"), "dev", "--gevent", "--port", str(port), *certificates.options]
    proc = ServerProcess(argv, project, project_env(), port, tmp_path / "dev-tls.log")
    try:
        proc.wait_for_log("serving https://", timeout=30)
        assert https_get(f"https://127.0.0.1:{port}/whoami", certificates) == (200, "guest")
        client = wss_connect(port, "/chat/dev-tls", certificates)
        try:
            client.send("dev over tls")
            assert client.recv() == "Guest: dev over tls"
        finally:
            client.close()
    finally:
        assert proc.stop() == 0


def test_chromium_loads_the_page_over_https_and_chats_over_wss(browser, tls_server):  # noqa: F811 - the fixture
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        sockets: list[str] = []
        page.on("websocket", lambda socket: sockets.append(socket.url))
        page.goto(f"https://127.0.0.1:{tls_server.port}/")
        page.wait_for_selector('#chat[data-state="open"]', timeout=20_000)
        page.locator("#message").fill("hello from chromium")
        page.locator("#message").press("Enter")
        page.wait_for_selector("#messages li:has-text('Guest: hello from chromium')", timeout=20_000)
        assert f"wss://127.0.0.1:{tls_server.port}/chat/general" in sockets
    finally:
        context.close()
