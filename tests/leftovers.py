"""What a test run left behind: processes it started that still run, and the ports they listen on.

A process belongs to the run if it descends from the pytest process or carries
the run's mark in its environment (:data:`MARK`, set by conftest before any test
starts a process, so every child inherits it). The mark finds a process whose
parent is gone, as the server a daemonising tool forks and whose parent init
adopted. Listening TCP sockets are read from ``/proc/net/tcp{,6}`` and matched
to their process through ``/proc/PID/fd``. Linux only (``/proc``).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass, field

#: The environment variable that marks the processes of one test run.
MARK = "ASOK_GREEN_TEST_RUN"

_LISTEN = "0A"


@dataclass
class Leftover:
    """One process of the run that still runs."""

    pid: int
    command: str
    ports: list[int] = field(default_factory=list)
    started_during: str | None = None

    def __str__(self) -> str:
        ports = f", listening on {', '.join(map(str, self.ports))}" if self.ports else ""
        during = f", started during {self.started_during}" if self.started_during else ""
        return f"pid {self.pid} ({self.command}){ports}{during}"


def mark_this_run() -> str:
    """Put a mark unique to this run in the environment every child process inherits; return it."""
    value = os.environ[MARK] = f"{os.getpid()}-{uuid.uuid4().hex}"
    return value


def _read(path: str, mode: str = "r"):
    try:
        with open(path, mode) as handle:
            return handle.read()
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, or None if it is gone."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _running(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` now."""
    return [child for child in _pids() if (_stat(child) or ("", 0))[1] == pid]


def _marked(pid: int, mark: str) -> bool:
    environ = _read(f"/proc/{pid}/environ", "rb")
    return environ is not None and f"{MARK}={mark}".encode() in environ.split(b"\0")


def command_line(pid: int) -> str:
    """The command line of ``pid`` (its name when the command line cannot be read)."""
    raw = _read(f"/proc/{pid}/cmdline", "rb")
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace") if raw else None
    text = (text or (_read(f"/proc/{pid}/comm") or "?").strip()).replace("\n", "\\n")
    return text if len(text) <= 160 else text[:157] + "..."


class ProcessWatch:
    """The processes of one run, seen from its pytest process."""

    def __init__(self, mark: str, root: int | None = None):
        """Watch the processes marked ``mark`` or descending from ``root`` (this process)."""
        self.mark = mark
        self.root = root or os.getpid()
        self._seen: set[int] = set(_pids())
        #: pid -> the test during which it was first seen.
        self.origin: dict[int, str] = {}
        #: The test running now (set by conftest).
        self.current = "the start of the run"
        self.baseline_ports = set(listening_ports(self.root))

    def note_new(self, during: str) -> None:
        """Remember which test the run's processes that appeared since the last call were started in."""
        for pid in _pids():
            if pid not in self._seen:
                self._seen.add(pid)
                self.origin[pid] = during

    def running(self) -> list[int]:
        """The run's processes that still run (zombies do not count), this one excepted."""
        parents: dict[int, int] = {}
        alive: set[int] = set()
        for pid in _pids():
            stat = _stat(pid)
            if stat is not None:
                parents[pid] = stat[1]
                if stat[0] not in ("Z", "X"):
                    alive.add(pid)

        def descends(pid: int) -> bool:
            seen = set()
            while pid in parents and pid not in seen:
                seen.add(pid)
                pid = parents[pid]
                if pid == self.root:
                    return True
            return False

        return sorted(p for p in alive if p != self.root and (descends(p) or _marked(p, self.mark)))

    def leftovers(self, grace: float = 5.0) -> list[Leftover]:
        """The run's processes still running after up to ``grace`` seconds, with their listening ports."""
        deadline = time.monotonic() + grace
        while (pids := self.running()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return [Leftover(pid, command_line(pid), listening_ports(pid), self.origin.get(pid)) for pid in pids]

    def new_own_ports(self) -> list[int]:
        """Ports this process listens on now and did not when the watch began."""
        return sorted(set(listening_ports(self.root)) - self.baseline_ports)


def _listening_inodes() -> dict[str, int]:
    """socket inode -> the TCP port it listens on, for every listening socket on the machine."""
    found: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        text = _read(table) or ""
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN:
                found[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return found


def listening_ports(pid: int) -> list[int]:
    """The TCP ports ``pid`` holds a listening socket on."""
    inodes = _listening_inodes()
    ports = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            ports.add(inodes[target[8:-1]])
    return sorted(ports)


def stop(pids: list[int], timeout: float = 5.0) -> None:
    """SIGTERM each of ``pids``, then SIGKILL what still runs after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_running(p) for p in pids):
            time.sleep(0.05)
