"""Outages of something the server depends on, logged once each.

A session store that is down fails every lookup until it is back; logging each
failure would flood the log (and a full stderr pipe can block the process).
:class:`Outage` says it once when the failures start and once when they stop.
"""

from __future__ import annotations

import logging


class Outage:
    """Whether ``what`` is failing now; logs the first failure and the first success after it.

    ``failed`` and ``answered`` are meant to be called from the event loop's
    thread, after each attempt; they never raise.
    """

    def __init__(self, what: str, logger: logging.Logger, meanwhile: str = "") -> None:
        """``what`` names the dependency in the log; ``meanwhile`` says what the server does until it is back."""
        self.what = what
        self.logger = logger
        self.meanwhile = meanwhile
        self.failing = False
        #: Failures since the outage started (0 when not failing).
        self.failures = 0

    def failed(self, error: BaseException, *, level: int = logging.WARNING, traceback: bool = False) -> bool:
        """Record a failure; log it if it starts an outage. True if it did."""
        self.failures += 1
        if self.failing:
            return False
        self.failing = True
        meanwhile = f"; {self.meanwhile}" if self.meanwhile else ""
        self.logger.log(
            level,
            "%s failing: %s: %s%s",
            self.what,
            type(error).__name__,
            error,
            meanwhile,
            exc_info=error if traceback else None,
        )
        return True

    def answered(self) -> bool:
        """Record a success; log it if it ends an outage. True if it did."""
        if not self.failing:
            return False
        self.logger.info("%s back after %d failure(s)", self.what, self.failures)
        self.failing = False
        self.failures = 0
        return True
