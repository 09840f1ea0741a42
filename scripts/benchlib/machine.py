"""The machine and software a bench ran on, for the report."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from importlib import metadata


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo") as meminfo:
            return int(meminfo.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _wrk_version() -> str:
    try:
        done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=5)
        return (done.stdout or done.stderr).split("[")[0].strip() or "installed"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def describe() -> dict:
    """Cores, memory, kernel, limits and the versions of everything measured."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(_memory_gib(), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "open_files": f"{soft}/{hard}",
        "load_before": os.getloadavg()[0],
        "versions": {
            name: _version(name)
            for name in (
                *("asok_green", "asok", "gevent", "gevent-websocket", "greenlet", "websockets", "py-spy"),
                *("uvicorn", "wsproto", "httptools", "uvloop", "aiohttp", "picows", "granian", "socketify"),
                "redis",
            )
        }
        | {"wrk": _wrk_version()},
    }
