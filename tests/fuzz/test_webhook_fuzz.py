"""Property-based fuzzing of the webhook against a live worker server (issue 10, "Proof").

The real :class:`remediation.server.WorkerServer` (planner, journal, dispatcher) listens on a
loopback socket; hypothesis sends it (the webhook, and ``POST /rotations`` with the same
bearer) requests built from raw parts (Authorization bytes,
content type, body) and mutations of a real Alertmanager payload: hostile times, lone
surrogates, wrong types, deep nesting, binary noise. Properties, over every input:

- no answer is a 5xx (503 would make Alertmanager retry forever);
- nothing is logged at ERROR and no traceback is logged;
- no rotation starts (no input names a configured token with ``remediation: rotate``).

``make test`` runs a few thousand inputs; ``make fuzz`` sets ``PATROL_FUZZ_EXAMPLES=100000``.
The counts are printed at the end (``-s`` shows them).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remediation.dispatch import Dispatcher
from remediation.journal import DecisionBudget, Journal, Outcome
from remediation.metrics import WorkerMetrics
from remediation.planner import Planner, RotationRequest
from remediation.server import ROTATIONS_PATH, WEBHOOK_PATH, WorkerServer

EXAMPLES = int(os.environ.get("PATROL_FUZZ_EXAMPLES", "2000"))
TOKEN = "fuzz-webhook-bearer-token"
CONFIGURED = ("keda", "daily-checks")
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "alertmanager" / "webhook-v4-firing.json"


class LoudRecords(logging.Handler):
    """Every record at ERROR or above, or carrying a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@dataclass
class LiveWorker:
    journal: Journal
    server: WorkerServer
    started: list[RotationRequest] = field(default_factory=list)
    port: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    _conn: http.client.HTTPConnection | None = None

    def send(self, authorization: bytes | None, content_type: str, body: bytes, path: str = WEBHOOK_PATH) -> int:
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self._conn.putrequest("POST", path)
                if authorization is not None:
                    self._conn.putheader("Authorization", authorization)
                self._conn.putheader("Content-Type", content_type)
                self._conn.putheader("Content-Length", str(len(body)))
                self._conn.endheaders(body)
                response = self._conn.getresponse()
                response.read()
                if response.will_close:
                    self._conn.close()
                    self._conn = None
                self.statuses[response.status] += 1
                return response.status
            except (ConnectionError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveWorker]:
    journal = Journal(tmp_path_factory.mktemp("fuzz") / "journal.sqlite3",
                      decision_budget=DecisionBudget(600))
    metrics = WorkerMetrics()
    planner = Planner(CONFIGURED, journal, cooldown=timedelta(minutes=10))
    worker: LiveWorker

    def work(request: RotationRequest) -> Outcome | None:
        worker.started.append(request)
        journal.finish(request.rotation_id, "skipped", "fuzz: never rotate")
        return "skipped"

    dispatcher = Dispatcher(work, locks=planner.locks, journal=journal, metrics=metrics)
    server = WorkerServer(planner=planner, dispatcher=dispatcher, journal=journal, metrics=metrics,
                          webhook_token=TOKEN)
    worker = LiveWorker(journal=journal, server=server)
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    loop_box: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        stop.append(asyncio.Event())
        loop_box.append(asyncio.get_running_loop())
        async with server.serving("127.0.0.1", 0) as port:
            worker.port = port
            ready.set()
            await stop[0].wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield worker
    finally:
        loop_box[0].call_soon_threadsafe(stop[0].set)
        thread.join(10)
        dispatcher.shutdown()
        journal.close()


# -- inputs -----------------------------------------------------------------------------------------

def base_payload() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(FIXTURE.read_text())
    alert = doc["alerts"][0]
    # Valid in shape, but never a rotation: the token is not configured.
    alert["labels"] = {"alertname": "PatRenewalDue", "token": "fuzz-unknown", "remediation": "rotate"}
    return doc


HOSTILE_STRINGS = st.sampled_from([
    "\ud800", "a\udfffb", "\ud83d", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59",
    "2026-02-30T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T00:00:00.1234567891Z", "", "\x00",
    "keda\x00", "rotate", "firing", "resolved", "4", "\u202e", "A" * 5000,
])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=40), HOSTILE_STRINGS)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=10), HOSTILE_STRINGS), inner,
                                                 max_size=4)), max_leaves=12)
ALERT_KEYS = ("status", "labels", "annotations", "startsAt", "endsAt", "fingerprint", "generatorURL")
TOP_KEYS = ("version", "status", "alerts", "groupKey", "receiver", "groupLabels", "commonLabels",
            "truncatedAlerts")
LABEL_KEYS = ("alertname", "token", "remediation", "x")
# Weighted by repetition (hypothesis has no weights): most inputs get past authentication and
# the content type, and change the fields the planner and the journal read.
MUTATIONS = ("hostile", "hostile", "hostile", "label", "label", "top", "alert", "drop", "alerts")


@st.composite
def mutated_payload(draw: st.DrawFn) -> bytes:
    doc = base_payload()
    alert = doc["alerts"][0]
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(MUTATIONS))
        if where == "hostile":
            alert[draw(st.sampled_from(("startsAt", "endsAt", "fingerprint", "status")))] = draw(HOSTILE_STRINGS)
        elif where == "top":
            doc[draw(st.sampled_from(TOP_KEYS))] = draw(JSON_VALUES)
        elif where == "alert":
            alert[draw(st.sampled_from(ALERT_KEYS))] = draw(JSON_VALUES)
        elif where == "label" and isinstance(alert.get("labels"), dict):
            value = draw(st.one_of(HOSTILE_STRINGS, st.text(max_size=20), JSON_VALUES))
            if value in CONFIGURED:
                value = "not-" + value
            alert["labels"][draw(st.sampled_from(LABEL_KEYS))] = value
        elif where == "drop":
            doc.pop(draw(st.sampled_from(TOP_KEYS)), None)
        else:
            doc["alerts"] = [alert] * draw(st.integers(0, 50))
    text = json.dumps(doc)
    mode = draw(st.sampled_from(("as-is", "as-is", "truncate", "nest", "splice")))
    if mode == "truncate":
        text = text[:draw(st.integers(0, len(text)))]
    elif mode == "nest":
        depth = draw(st.integers(1, 100_000))
        text = "[" * depth + text + "]" * draw(st.integers(0, depth))
    elif mode == "splice":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(('\\ud800', '"', "\\", "\x00", "}", "1e999999", "-"))) + text[at:]
    return text.encode("utf-8", "surrogatepass")


BODIES = st.one_of(mutated_payload(), mutated_payload(), mutated_payload(), mutated_payload(),
                   st.binary(max_size=512), st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
GOOD_AUTH = f"Bearer {TOKEN}".encode()
AUTHORIZATION = st.one_of(
    *[st.just(GOOD_AUTH)] * 6, st.none(),
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
    st.sampled_from([b"Bearer \xff\xfe", b"bearer " + TOKEN.encode(), b"Bearer", b"Basic " + TOKEN.encode(),
                     f"Bearer {TOKEN} ".encode(), f"Bearer {TOKEN[:-1]}".encode()]),
)
CONTENT_TYPES = st.sampled_from(["application/json"] * 6 + [
    "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded", "application/json;;",
    "*/*"])


def test_no_input_makes_the_webhook_fail_log_a_traceback_or_rotate(live: LiveWorker) -> None:
    loud = LoudRecords()
    root = logging.getLogger()
    root.addHandler(loud)
    fives: list[tuple[int, bytes | None, str, bytes]] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 5000,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(authorization=AUTHORIZATION, content_type=CONTENT_TYPES, body=BODIES)
    def one(authorization: bytes | None, content_type: str, body: bytes) -> None:
        status = live.send(authorization, content_type, body)
        if status >= 500:
            fives.append((status, authorization, content_type, body[:200]))
        assert status < 500, (status, authorization, content_type, body[:200])

    try:
        one()
    finally:
        root.removeHandler(loud)
    total = sum(live.statuses.values())
    print(f"\nwebhook fuzz: {total} requests, statuses {dict(sorted(live.statuses.items()))}, "
          f"5xx {len(fives)}, loud log records {len(loud.records)}, rotations started {len(live.started)}")
    assert fives == []
    assert [r.getMessage() for r in loud.records] == []
    assert live.started == [] and live.journal.count() == 0
    assert total >= EXAMPLES


ROTATION_KEYS = ("token", "reason", "compromised", "force", "x")


@st.composite
def rotation_body(draw: st.DrawFn) -> bytes:
    """A ``POST /rotations`` body naming no configured token (so nothing may start), mutated."""
    doc: Any = {"token": "fuzz-unknown", "reason": "fuzz"}
    for _ in range(draw(st.integers(0, 4))):
        value = draw(st.one_of(HOSTILE_STRINGS, st.text(max_size=20), JSON_VALUES))
        if value in CONFIGURED:
            value = "not-" + value
        doc[draw(st.sampled_from(ROTATION_KEYS))] = value
    if draw(st.booleans()) and draw(st.booleans()):
        doc = draw(JSON_VALUES)
        if doc in CONFIGURED:
            doc = None
    text = json.dumps(doc)
    mode = draw(st.sampled_from(("as-is", "as-is", "truncate", "nest", "splice")))
    if mode == "truncate":
        text = text[:draw(st.integers(0, len(text)))]
    elif mode == "nest":
        depth = draw(st.integers(1, 8000))
        text = "[" * depth + text + "]" * draw(st.integers(0, depth))
    elif mode == "splice":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(('\\ud800', '"', "\\", "\x00", "}", "1e999999", "-"))) + text[at:]
    return text.encode("utf-8", "surrogatepass")


def test_no_input_makes_rotate_now_fail_log_a_traceback_or_rotate(live: LiveWorker) -> None:
    loud = LoudRecords()
    root = logging.getLogger()
    root.addHandler(loud)
    seen: Counter[int] = Counter()

    @settings(max_examples=max(1, EXAMPLES // 2), deadline=None, database=None, derandomize=EXAMPLES <= 5000,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(authorization=AUTHORIZATION, content_type=CONTENT_TYPES,
           body=st.one_of(rotation_body(), rotation_body(), rotation_body(), st.binary(max_size=256)))
    def one(authorization: bytes | None, content_type: str, body: bytes) -> None:
        status = live.send(authorization, content_type, body, path=ROTATIONS_PATH)
        seen[status] += 1
        assert status < 500, (status, authorization, content_type, body[:200])

    try:
        one()
    finally:
        root.removeHandler(loud)
    print(f"\nrotate-now fuzz: statuses {dict(sorted(seen.items()))}, loud log records {len(loud.records)}")
    assert [r.getMessage() for r in loud.records] == []
    assert live.started == [] and live.journal.count() == 0
    assert seen[404] > 0 and seen[400] > 0, "the inputs reach the checks past authentication"
