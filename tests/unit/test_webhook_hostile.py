"""Hostile webhook input found by the adversarial run (issue 10), each on a real loopback socket.

Every case here once answered 503 (which makes Alertmanager retry forever) or logged an ERROR
traceback; each must now be a quiet 4xx with no side effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remediation.server import WEBHOOK_PATH, ServerLimits
from tests.unit.test_webhook_server import TOKEN, World, payload, post, served


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


def raw_request(body: bytes, *, authorization: bytes = f"Bearer {TOKEN}".encode(),
                content_length: int | None = None) -> bytes:
    length = len(body) if content_length is None else content_length
    head = (f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n").encode()
    return head + b"Authorization: " + authorization + b"\r\n\r\n" + body


async def exchange(url: str, data: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def send_raw(world: World, data: bytes) -> tuple[int, dict[str, Any]]:
    async def go() -> tuple[int, bytes]:
        async with served(world.server) as (url, _):
            return await exchange(url, data)

    status, body = asyncio.run(go())
    return status, json.loads(body)


def assert_quiet(caplog: pytest.LogCaptureFixture) -> None:
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert loud == [], [r.getMessage() for r in loud]


def test_non_utf8_authorization_is_401_not_503(world: World, caplog: pytest.LogCaptureFixture) -> None:
    status, body = send_raw(world, raw_request(json.dumps(payload()).encode(),
                                               authorization=b"Bearer \xff\xfe"))
    assert status == 401 and body["status"] == 401
    assert world.sample("patrol_webhook_requests_total", code="401") == 1
    assert world.sample("patrol_webhook_requests_total", code="503") == 0
    world.assert_no_side_effect()
    assert_quiet(caplog)


def test_an_unparsable_request_is_a_quiet_400(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """Control bytes in a header: aiohttp answers 400 itself and used to log an ERROR traceback."""
    async def go() -> tuple[int, bytes]:
        async with served(world.server) as (url, _):
            return await exchange(url, raw_request(b"{}", authorization=b"Bearer \x06\x1ab"))

    with caplog.at_level(logging.INFO):
        status, _ = asyncio.run(go())
    assert status == 400
    world.assert_no_side_effect()
    assert_quiet(caplog)
    assert any("malformed HTTP request" in r.getMessage() for r in caplog.records)


def alert_with(**changes: Any) -> dict[str, Any]:
    doc = payload()
    doc["alerts"][0].update(changes)
    return doc


HOSTILE = [
    ("startsAt far future with offset", alert_with(startsAt="9999-12-31T23:59:59-23:59")),
    ("startsAt year 1 with offset", alert_with(startsAt="0001-01-01T00:00:00+23:59")),
    ("endsAt far future with offset", alert_with(endsAt="9999-12-31T23:59:59-23:59")),
    ("lone surrogate in a label", alert_with(labels={**payload()["alerts"][0]["labels"], "x": "\ud800"})),
    ("lone surrogate in alertname", alert_with(labels={**payload()["alerts"][0]["labels"],
                                                       "alertname": "Pat\udfff"})),
    ("lone surrogate in fingerprint", alert_with(fingerprint="f\ud800")),
    ("lone surrogate in a label name", alert_with(labels={**payload()["alerts"][0]["labels"], "\ud801": "x"})),
]


@pytest.mark.parametrize(("what", "doc"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_payloads_are_400_with_no_side_effect(world: World, caplog: pytest.LogCaptureFixture,
                                                      what: str, doc: dict[str, Any]) -> None:
    # json.dumps escapes the surrogate as \ud800, exactly what a hostile sender writes on the wire.
    status, body = send_raw(world, raw_request(json.dumps(doc).encode()))
    assert status == 400, body
    assert body["reason"]
    world.assert_no_side_effect()
    assert world.sample("patrol_webhook_requests_total", code="400") == 1
    assert_quiet(caplog)


def test_a_client_that_disconnects_mid_body_is_quiet_and_counted_499(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps(payload()).encode()

    async def go() -> None:
        async with served(world.server) as (url, _):
            host, port = url.removeprefix("http://").split(":")
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(raw_request(body[:20], content_length=len(body)))
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()
            await writer.wait_closed()
            for _ in range(100):
                if world.sample("patrol_webhook_requests_total", code="499"):
                    break
                await asyncio.sleep(0.05)

    asyncio.run(go())
    assert world.sample("patrol_webhook_requests_total", code="499") == 1
    assert world.sample("patrol_webhook_requests_total", code="503") == 0
    world.assert_no_side_effect()
    assert_quiet(caplog)


# -- slow senders and connection floods (defect 5) -------------------------------------------------

LIMITS = ServerLimits(header_timeout=1.0, body_timeout=1.0, max_connections=20)


async def trickle_until_closed(url: str, head: bytes, drip: bytes, *, every: float = 0.1,
                               give_up: float = 10.0) -> tuple[float, bytes]:
    """Send ``head`` then ``drip`` one byte at a time; return (seconds until the server closed, answer)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(head)
    answer = b""

    async def read_all() -> None:
        nonlocal answer
        while chunk := await reader.read(4096):
            answer += chunk

    reading = asyncio.create_task(read_all())
    try:
        for i in range(int(give_up / every)):
            if reading.done():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(drip[i % len(drip):i % len(drip) + 1])
                await writer.drain()
            await asyncio.sleep(every)
        await asyncio.wait_for(reading, 2)
    finally:
        writer.close()
    return time.monotonic() - started, answer


def test_a_sender_trickling_its_request_head_is_cut_off_within_the_bound(tmp_path: Path) -> None:
    w = World(tmp_path, limits=LIMITS)
    try:
        async def go() -> tuple[float, bytes]:
            async with served(w.server) as (url, _):
                return await trickle_until_closed(
                    url, f"POST {WEBHOOK_PATH} HTTP/1.1\r\n".encode(), b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaa\r\n")

        seconds, answer = asyncio.run(go())
        assert seconds < LIMITS.header_timeout * 1.25 + 0.5, seconds
        assert answer == b""                                   # cut off, never handled
        assert w.sample("patrol_webhook_connections_closed_total", reason="header_timeout") == 1
        w.assert_no_side_effect()
    finally:
        w.close()


def test_a_sender_trickling_its_body_gets_408_within_the_bound(tmp_path: Path) -> None:
    w = World(tmp_path, limits=LIMITS)
    body = json.dumps(payload()).encode()
    try:
        async def go() -> tuple[float, bytes]:
            async with served(w.server) as (url, _):
                return await trickle_until_closed(url, raw_request(b"", content_length=len(body)), body)

        seconds, answer = asyncio.run(go())
        assert seconds < LIMITS.body_timeout * 1.5 + 0.5, seconds         # + lingering
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert w.sample("patrol_webhook_requests_total", code="408") == 1
        w.assert_no_side_effect()
    finally:
        w.close()


def test_a_connection_flood_is_capped_and_real_deliveries_still_get_in(tmp_path: Path) -> None:
    w = World(tmp_path, limits=LIMITS)
    try:
        async def go() -> tuple[int, int, int]:
            async with served(w.server) as (url, session):
                host, port = url.removeprefix("http://").split(":")
                flood = [await asyncio.open_connection(host, int(port)) for _ in range(60)]
                await asyncio.sleep(LIMITS.header_timeout / 2)    # a few sweeps, well before the timeout
                still_open = 0
                for reader, _ in flood:
                    try:
                        eof = await asyncio.wait_for(reader.read(1), 0.05) == b""
                    except TimeoutError:
                        eof = False
                    still_open += not eof
                status, _ = await post(session, url, doc=payload())
                for _, writer in flood:
                    writer.close()
                return still_open, status, len(flood)

        still_open, status, flooded = asyncio.run(go())
        assert still_open <= LIMITS.max_connections
        closed = w.sample("patrol_webhook_connections_closed_total", reason="too_many")
        assert closed >= flooded - LIMITS.max_connections
        assert status == 202
    finally:
        w.close()
