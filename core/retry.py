"""Retry policy as data.

A :class:`Backoff` is a finite tuple of delays; :func:`call_with_retry` runs a callable and, on
a :class:`~core.errors.TransientError`, waits the server's requested delay (``Retry-After``) or
the next backoff delay, logging each attempt with its number. Only named error classes are
retried; anything else propagates at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from core.errors import TransientError

T = TypeVar("T")
log = logging.getLogger("patrol.retry")


@dataclass(frozen=True)
class Backoff:
    """Delays in seconds between attempts; ``len(delays) + 1`` attempts in all.

    ``max_delay`` caps a server-requested ``Retry-After`` so one bad header cannot stall us.
    """

    delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    max_delay: float = 60.0
    retry_on: tuple[type[BaseException], ...] = (TransientError,)

    @property
    def attempts(self) -> int:
        return len(self.delays) + 1


NO_RETRY = Backoff(delays=())


def call_with_retry(
    fn: Callable[[], T],
    backoff: Backoff,
    *,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    logger: logging.Logger = log,
) -> T:
    """Call ``fn`` until it succeeds or the backoff is exhausted; re-raise the last error."""
    for attempt in range(1, backoff.attempts + 1):
        try:
            return fn()
        except backoff.retry_on as exc:
            if attempt >= backoff.attempts:
                logger.warning("%s failed after %d attempts: %s", what, attempt, exc,
                               extra={"attempt": attempt})
                raise
            wait = backoff.delays[attempt - 1]
            requested = getattr(exc, "delay", None)
            if requested is not None:
                wait = min(max(wait, float(requested)), backoff.max_delay)
            logger.info("%s attempt %d/%d failed (%s); retrying in %.2fs", what, attempt,
                        backoff.attempts, exc, wait, extra={"attempt": attempt})
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
