from __future__ import annotations

import pytest

from core.errors import NotFoundError, ServerError, ThrottledError
from core.retry import NO_RETRY, Backoff, call_with_retry


def test_retries_transient_errors_with_the_backoff_delays() -> None:
    sleeps: list[float] = []
    calls = iter([ServerError("503"), ServerError("503"), "ok"])

    def fn() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert call_with_retry(fn, Backoff(delays=(0.1, 0.2, 0.4)), what="t", sleep=sleeps.append) == "ok"
    assert sleeps == [0.1, 0.2]


def test_retry_after_wins_over_a_shorter_backoff_but_is_capped() -> None:
    sleeps: list[float] = []
    calls = iter([ThrottledError("429", delay=7.0), ThrottledError("429", delay=500.0), "ok"])

    def fn() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    call_with_retry(fn, Backoff(delays=(0.1, 0.1), max_delay=30.0), what="t", sleep=sleeps.append)
    assert sleeps == [7.0, 30.0]


def test_gives_up_after_the_last_attempt_and_reraises() -> None:
    sleeps: list[float] = []
    attempts = 0

    def fn() -> None:
        nonlocal attempts
        attempts += 1
        raise ServerError("500")

    with pytest.raises(ServerError):
        call_with_retry(fn, Backoff(delays=(0.0, 0.0)), what="t", sleep=sleeps.append)
    assert attempts == 3


def test_permanent_errors_are_not_retried() -> None:
    attempts = 0

    def fn() -> None:
        nonlocal attempts
        attempts += 1
        raise NotFoundError("gone")

    with pytest.raises(NotFoundError):
        call_with_retry(fn, Backoff(), what="t", sleep=lambda _s: None)
    assert attempts == 1
    assert NO_RETRY.attempts == 1
