"""``window.asokWS`` on any page that calls it, as Asok's documentation promises."""

from __future__ import annotations

import pathlib
import re

import pytest

from tests.asok_project import fetch, make_project
from tests.conftest import asok_serve

#: The resume client as shipped in the package.
SCRIPT_FILE = pathlib.Path(__file__).resolve().parent.parent / "asok_green" / "bridge" / "client_assets" / "resume.js"

DOC_PAGE_PY = '''\
"""/doc: the documentation's frontend snippet on a page with nothing else."""


def render(request):
    return request.html("page.html")
'''

DOC_PAGE_HTML = """\
{% extends "html/base.html" %}
{% block main %}
<p id="log"></p>
<script>
const socket = window.asokWS('/chat/general');
socket.onmessage = (event) => { document.getElementById('log').textContent = event.data; };
</script>
{% endblock %}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("asokws"))
    (project / "src/pages/doc").mkdir(parents=True)
    (project / "src/pages/doc/page.py").write_text(DOC_PAGE_PY)
    (project / "src/pages/doc/page.html").write_text(DOC_PAGE_HTML)
    proc = asok_serve(project, tmp_path_factory.mktemp("asokws-logs"))
    yield proc
    proc.stop()


def test_a_page_that_calls_asokws_gets_the_helper(served):
    page = fetch(served.url + "/doc")
    html = page.text
    assert page.status == 200
    assert "window.asokWS('/chat/general')" in html
    assert "asokWS=function" in html, "Asok's WebSocket script (which defines window.asokWS) is missing"
    assert f"window.ASOK_WS_PORT = {served.port};" in html


def test_a_page_that_does_not_call_it_opens_no_socket(served):
    page = fetch(served.url + "/login")
    assert page.status == 200 and "<form" in page.text
    assert "asokWS=function" not in page.text


def test_a_page_that_calls_asokws_loads_the_resume_client_from_the_server(served):
    html = fetch(served.url + "/doc").text
    match = re.search(r'<script src="(/asok/green/resume\.js\?v=[0-9a-f]+)" nonce="([^"]+)"></script>', html)
    assert match, "the page does not load the resume client"
    assert html.index("asokWS=function") < match.start(), "the resume client comes after Asok's helper"
    script = fetch(served.url + match.group(1))
    assert script.status == 200
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert script.body == SCRIPT_FILE.read_bytes()
    assert "resume.js" not in fetch(served.url + "/login").text


def test_the_resume_client_is_served_to_anyone_and_only_read(served):
    assert fetch(served.url + "/asok/green/resume.js").body == SCRIPT_FILE.read_bytes()
    assert fetch(served.url + "/asok/green/resume.js", method="HEAD").body == b""
    assert fetch(served.url + "/asok/green/resume.js", method="POST", data=b"x").status == 405
