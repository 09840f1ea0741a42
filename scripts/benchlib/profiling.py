"""Sampling profiles of a running server with py-spy, summarised for BENCHMARKS.md."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """Path of the py-spy binary (next to this Python first), or None."""
    beside = pathlib.Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Recording:
    """``py-spy record`` attached to ``pid`` for ``seconds``, writing collapsed stacks to ``path``."""

    def __init__(self, pid: int, seconds: float, path: pathlib.Path, rate: int = 250):
        self.path = path
        binary = py_spy()
        self.proc = None
        if binary is None:
            return
        argv = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
        argv += ["--rate", str(rate), "--nonblocking", "--format", "raw", "--output", str(path)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def running(self) -> bool:
        """Still sampling?"""
        return self.proc is not None and self.proc.poll() is None

    def finish(self, timeout: float = 60) -> dict | None:
        """Wait for py-spy and summarise what it wrote (None if it could not run)."""
        if self.proc is None:
            return None
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.path.exists():
            return {"error": (err or "py-spy wrote nothing").strip().splitlines()[-1:]}
        return summarise(self.path.read_text())


def _parse_frame(frame: str) -> tuple[str, str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), "", ""
    return match["func"], match["file"], match["line"] or ""


def summarise(collapsed: str, top: int = 12) -> dict:
    """Self time by source line and inclusive time by function, as shares of all samples."""
    self_lines: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for row in collapsed.splitlines():
        stack, _, count = row.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_parse_frame(f) for f in stack.split(";")]
        func, file, line = frames[-1]
        self_lines[f"{file}:{line} {func}"] += n
        for name in {f"{file} {func}" for func, file, _ in frames}:
            inclusive[name] += n
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}
    return {
        "samples": total,
        "self": [(name, n / total) for name, n in self_lines.most_common(top)],
        "inclusive": [(name, n / total) for name, n in inclusive.most_common(top + 8)],
    }
