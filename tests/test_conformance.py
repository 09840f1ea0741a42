"""RFC 6455 conformance: sections 1-7 of the Autobahn TestSuite (kosoku) through scripts/conformance.

The whole suite (517 cases, with permessage-deflate in sections 12 and 13)
takes minutes: run ``scripts/conformance`` for it. These sections take seconds
and cover framing, pings, reserved bits, opcodes, fragmentation, UTF-8 and the
closing handshake.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.echo import ROOT

SECTIONS = [f"{n}.*" for n in range(1, 8)]
ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}


@pytest.mark.timeout(300)
def test_sections_1_to_7_all_pass(tmp_path):
    reports = tmp_path / "autobahn"
    argv = [str(ROOT / "scripts" / "conformance")]
    for section in SECTIONS:
        argv += ["-i", section]
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "AUTOBAHN_REPORTS": str(reports)},
        capture_output=True,
        text=True,
        timeout=280,
    )
    output = done.stdout + done.stderr
    index = json.loads((reports / "index.json").read_text())
    [cases] = index.values()
    failed = {
        case: (r["behavior"], r["behaviorClose"])
        for case, r in cases.items()
        if r["behavior"] not in ACCEPTED or r["behaviorClose"] not in ACCEPTED
    }
    assert not failed, output
    assert {case.split(".")[0] for case in cases} == {str(n) for n in range(1, 8)}
    assert len(cases) > 200
    assert done.stdout.strip().splitlines()[-1] == f"autobahn: {len(cases)}/{len(cases)} passed"
    assert done.returncode == 0, output
    assert (reports / "index.html").exists()
