"""``window.asokWS`` on any page that calls it, as Asok's documentation promises."""

from __future__ import annotations

import pytest

from tests.asok_project import fetch, make_project
from tests.conftest import asok_serve

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
