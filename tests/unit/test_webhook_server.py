"""The worker's HTTP server on a real loopback socket: auth, limits, schema, metrics, history."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from remediation.dispatch import Dispatcher
from remediation.journal import Journal, Outcome
from remediation.metrics import WorkerMetrics
from remediation.planner import Planner, RotationRequest
from remediation.server import MAX_BODY, ROTATIONS_PATH, WEBHOOK_PATH, ServerLimits, WorkerServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alertmanager"
TOKEN = "s3cret-webhook-token"


def payload(token: str = "keda", fp: str = "f1", status: str = "firing") -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / "webhook-v4-firing.json").read_text())
    doc["notification_reason"] = "first notification"
    doc["routeLabels"] = {}
    alert = doc["alerts"][0]
    alert["labels"] = {"alertname": "PatRenewalDue", "token": token, "remediation": "rotate"}
    alert["fingerprint"] = fp
    alert["status"] = status
    doc["status"] = status
    return doc


class Work:
    """Stands in for the saga: records each request, finishes it when released."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.started: list[RotationRequest] = []
        self.release = threading.Event()

    def __call__(self, request: RotationRequest) -> Outcome | None:
        self.started.append(request)
        self.release.wait(10)
        self.journal.finish(request.rotation_id, "succeeded")
        return "succeeded"


class World:
    def __init__(self, tmp_path: Path, *, token: str | None = TOKEN, insecure: bool = False,
                 accepting: Callable[[], str | None] = lambda: None,
                 journal_cls: type[Journal] = Journal, limits: ServerLimits | None = None,
                 ready: Callable[[], str | None] = lambda: None,
                 leader: Callable[[], str | None] = lambda: None, clock: Callable[[], float] | None = None) -> None:
        self.metrics = WorkerMetrics()
        extra = {"clock": clock} if clock is not None else {}
        self.journal = journal_cls(tmp_path / "journal.sqlite3", **extra)
        self.planner = Planner(["keda", "daily-checks"], self.journal, cooldown=timedelta(minutes=10), **extra)
        self.work = Work(self.journal)
        self.dispatcher = Dispatcher(self.work, locks=self.planner.locks, journal=self.journal,
                                     metrics=self.metrics)
        self.server = WorkerServer(planner=self.planner, dispatcher=self.dispatcher,
                                   journal=self.journal, metrics=self.metrics, webhook_token=token,
                                   insecure_no_auth=insecure, accepting=accepting, limits=limits,
                                   ready=ready, leader=leader, **extra)

    def close(self) -> None:
        self.work.release.set()
        self.dispatcher.shutdown()
        self.journal.close()

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def assert_no_side_effect(self) -> None:
        assert self.journal.count() == 0
        assert self.journal.decisions() == []
        assert self.journal.seen_keys(since=0) == set()
        assert self.work.started == []


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


@asynccontextmanager
async def served(server: WorkerServer) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    async with server.serving("127.0.0.1", 0) as port, aiohttp.ClientSession() as session:
        yield f"http://127.0.0.1:{port}", session


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def post(session: aiohttp.ClientSession, url: str, body: bytes | str | None = None, *,
               headers: dict[str, str] | None = None, doc: Any = None) -> tuple[int, dict[str, Any]]:
    hdrs = {"Content-Type": "application/json", **AUTH}
    if headers is not None:
        hdrs = headers
    raw = json.dumps(doc).encode() if doc is not None else body
    data = io.BytesIO(raw) if isinstance(raw, bytes) else raw
    async with session.post(url + WEBHOOK_PATH, data=data, headers=hdrs) as resp:
        text = await resp.text()
        return resp.status, json.loads(text)


def test_accepted_delivery_starts_a_rotation_in_the_background(world: World) -> None:
    async def go() -> tuple[int, dict[str, Any]]:
        async with served(world.server) as (url, session):
            return await post(session, url, doc=payload())

    status, body = asyncio.run(go())
    assert status == 202
    [decision] = body["decisions"]
    assert (decision["action"], decision["token"], decision["reason"]) == ("start", "keda", "accepted")
    world.work.release.set()
    assert world.dispatcher.wait_idle(5)
    [request] = world.work.started
    assert request.rotation_id == decision["rotation_id"]
    assert world.journal.get(request.rotation_id).outcome == "succeeded"
    assert world.sample("patrol_webhook_requests_total", code="202") == 1
    assert world.sample("patrol_rotations_total", token="keda", result="succeeded") == 1
    assert world.sample("patrol_rotation_in_progress", token="keda") == 0
    assert world.sample("patrol_rotation_duration_seconds_count", token="keda") == 1
    assert not world.planner.locks.held("keda")


BAD = [
    ("no auth", {"Content-Type": "application/json"}, None, 401),
    ("wrong token", {"Content-Type": "application/json", "Authorization": "Bearer nope"}, None, 401),
    ("wrong scheme", {"Content-Type": "application/json", "Authorization": f"Basic {TOKEN}"}, None, 401),
    ("token prefix", {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN[:-1]}"},
     None, 401),
    ("text", {"Content-Type": "text/plain", **AUTH}, None, 415),
    ("form", {"Content-Type": "application/x-www-form-urlencoded", **AUTH}, None, 415),
    ("too big", None, b'{"x": "' + b"a" * MAX_BODY + b'"}', 413),
    ("not json", None, b"{nope", 400),
    ("wrong version", None, json.dumps({**payload(), "version": "3"}).encode(), 400),
    ("alerts not a list", None, json.dumps({**payload(), "alerts": "x"}).encode(), 400),
]


@pytest.mark.parametrize(("what", "headers", "body", "code"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_have_no_side_effect(world: World, what: str, headers: dict[str, str] | None,
                                          body: bytes | None, code: int) -> None:
    raw = body if body is not None else json.dumps(payload()).encode()

    async def go() -> tuple[int, dict[str, Any]]:
        async with served(world.server) as (url, session):
            return await post(session, url, raw, headers=headers)

    status, answer = asyncio.run(go())
    assert status == code
    assert answer["status"] == code and answer["reason"]
    assert TOKEN not in json.dumps(answer)
    world.assert_no_side_effect()
    assert world.sample("patrol_webhook_requests_total", code=str(code)) == 1


def test_chunked_body_over_the_limit_is_413(world: World) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"a" * (128 * 1024)

    async def go() -> int:
        async with served(world.server) as (url, session), session.post(
                url + WEBHOOK_PATH, data=chunks(),
                headers={"Content-Type": "application/json", **AUTH}) as resp:
            return resp.status

    assert asyncio.run(go()) == 413
    world.assert_no_side_effect()


def test_a_standby_answers_503_naming_the_leader_and_stays_ready(tmp_path: Path) -> None:
    """Not the Lease holder: work gets 503 (Alertmanager retries) naming the holder, while
    /readyz stays 200 (a standby can serve); readiness follows ``ready`` alone."""
    state = {"accepting": "not the lease holder", "ready": ""}
    w = World(tmp_path, accepting=lambda: state["accepting"] or None, ready=lambda: state["ready"] or None,
              leader=lambda: "worker-0")
    try:
        async def go() -> list[tuple[int, Any]]:
            seen: list[tuple[int, Any]] = []
            async with served(w.server) as (url, session):
                seen.append(await post(session, url, doc=payload()))
                async with session.get(url + "/readyz") as resp:
                    seen.append((resp.status, await resp.text()))
                state["ready"] = "the journal cannot be written (disk full)"
                async with session.get(url + "/readyz") as resp:
                    seen.append((resp.status, await resp.text()))
                state["accepting"], state["ready"] = "", ""
                seen.append(await post(session, url, doc=payload()))
            return seen

        refused, ready, not_ready, accepted = asyncio.run(go())
        assert refused == (503, {"status": 503, "reason": "not the lease holder", "leader": "worker-0"})
        assert ready == (200, "ready\n")
        assert not_ready == (503, "not ready: the journal cannot be written (disk full)\n")
        assert accepted[0] == 202
        assert w.journal.count() == 1                       # the retry, not the refused delivery
    finally:
        w.close()


def test_an_alert_for_an_unknown_token_is_journaled_as_dropped(world: World) -> None:
    async def go() -> tuple[int, dict[str, Any]]:
        async with served(world.server) as (url, session):
            return await post(session, url, doc=payload(token="nope"))

    status, body = asyncio.run(go())
    assert status == 202                                    # not retried: it can never succeed
    assert [(d["action"], d["reason"], d["token"]) for d in body["decisions"]] == [("drop", "unknown-token", "nope")]
    [decision] = world.journal.decisions()
    assert (decision.token, decision.action, decision.reason) == ("nope", "drop", "unknown-token")
    assert world.journal.count() == 0 and world.work.started == []


def test_shutting_down_answers_503(world: World) -> None:
    world.dispatcher.shutdown()

    async def go() -> int:
        async with served(world.server) as (url, session):
            return (await post(session, url, doc=payload()))[0]

    assert asyncio.run(go()) == 503
    world.assert_no_side_effect()


def test_fifty_concurrent_duplicates_start_one_rotation(world: World) -> None:
    async def go() -> list[tuple[int, dict[str, Any]]]:
        async with served(world.server) as (url, session):
            return await asyncio.gather(*(post(session, url, doc=payload()) for _ in range(50)))

    results = asyncio.run(go())
    assert [s for s, _ in results] == [202] * 50
    reasons = sorted(b["decisions"][0]["reason"] for _, b in results)
    assert reasons == ["accepted"] + ["duplicate"] * 49
    world.work.release.set()
    assert world.dispatcher.wait_idle(5)
    assert len(world.work.started) == 1
    assert world.journal.count() == 1


def test_resolved_and_running_are_dropped_and_skips_counted(world: World) -> None:
    async def go() -> list[dict[str, Any]]:
        async with served(world.server) as (url, session):
            out = []
            for doc in (payload(), payload(fp="f2"), payload(fp="f1", status="resolved")):
                out.append((await post(session, url, doc=doc))[1])
            return out

    _, second, third = asyncio.run(go())
    assert second["decisions"][0]["reason"] == "already-running"
    assert third["decisions"][0]["reason"] == "resolved"
    assert world.sample("patrol_rotations_total", token="keda", result="skipped") == 1


def test_refuses_to_build_without_a_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PATROL_WEBHOOK_TOKEN"):
        World(tmp_path, token=None)
    with pytest.raises(ValueError, match="bearer token"):
        World(tmp_path, token="")


def test_insecure_no_auth_accepts_anonymous(tmp_path: Path) -> None:
    w = World(tmp_path, token=None, insecure=True)
    try:
        async def go() -> int:
            async with served(w.server) as (url, session):
                return (await post(session, url, doc=payload(),
                                   headers={"Content-Type": "application/json"}))[0]

        assert asyncio.run(go()) == 202
    finally:
        w.close()


def test_metrics_health_and_history(world: World) -> None:
    async def go() -> dict[str, Any]:
        async with served(world.server) as (url, session):
            await post(session, url, doc=payload())
            await post(session, url, doc=payload(token="other"))
            world.work.release.set()
            await asyncio.to_thread(world.dispatcher.wait_idle, 5)
            out: dict[str, Any] = {}
            async with session.get(url + "/metrics") as resp:
                out["metrics"] = (resp.status, resp.headers["Content-Type"], await resp.text())
            async with session.get(url + "/healthz") as resp:
                out["healthz"] = resp.status
            async with session.get(url + "/readyz") as resp:
                out["readyz"] = resp.status
            async with session.get(url + "/rotations?token=keda") as resp:
                out["rotations"] = (resp.status, await resp.json())
            async with session.get(url + "/rotations?limit=x") as resp:
                out["bad_limit"] = resp.status
            return out

    out = asyncio.run(go())
    status, ctype, text = out["metrics"]
    assert status == 200 and ctype.startswith("text/plain")
    assert 'patrol_rotations_total{result="succeeded",token="keda"} 1.0' in text
    assert 'patrol_webhook_requests_total{code="202"} 2.0' in text
    assert "patrol_rotation_duration_seconds_bucket" in text
    assert "python_gc" not in text                       # its own registry, not the global one
    assert out["healthz"] == 200 and out["readyz"] == 200 and out["bad_limit"] == 400
    status, body = out["rotations"]
    assert status == 200
    [rotation] = body["rotations"]
    assert rotation["token"] == "keda" and rotation["outcome"] == "succeeded"
    assert [s["name"] for s in rotation["steps"]][:2] == ["plan", "create"]
    assert body["running"] == []
    assert [d["reason"] for d in body["decisions"]] == []  # "other" is not a token of ours


class DiskFullOnce(Journal):
    """A journal whose second rotation insert fails, as on a full disk."""

    fail_at = 2
    calls = 0

    def create_rotation(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError("disk full")
        return super().create_rotation(*args, **kwargs)


def test_an_internal_error_answers_503_and_admits_nothing(tmp_path: Path) -> None:
    w = World(tmp_path, journal_cls=DiskFullOnce)
    doc = payload()
    doc["alerts"].append({**doc["alerts"][0], "fingerprint": "f9",
                          "labels": {**doc["alerts"][0]["labels"], "token": "daily-checks"}})

    async def go() -> tuple[int, dict[str, Any]]:
        async with served(w.server) as (url, session):
            return await post(session, url, doc=doc)

    try:
        status, body = asyncio.run(go())
        assert status == 503 and "retry" in body["reason"]
        assert w.planner.locks.running() == frozenset()
        assert w.work.started == []
        assert w.journal.seen_keys(since=0) == set()
        assert [r.outcome for r in w.journal.recent()] == ["skipped"]
        status, _ = asyncio.run(go())                      # Alertmanager's retry goes through
        assert status == 202
        w.work.release.set()
        assert w.dispatcher.wait_idle(5) and len(w.work.started) == 2
        assert w.sample("patrol_webhook_requests_total", code="503") == 1
    finally:
        w.close()


# -- POST /rotations ----------------------------------------------------------------------------

async def ask(session: aiohttp.ClientSession, url: str, doc: Any = None, *, raw: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    hdrs = headers if headers is not None else {"Content-Type": "application/json", **AUTH}
    data = raw if raw is not None else json.dumps(doc).encode()
    async with session.post(url + ROTATIONS_PATH, data=data, headers=hdrs) as resp:
        return resp.status, json.loads(await resp.text()), dict(resp.headers)


def asked(world: World, *docs: Any) -> list[tuple[int, dict[str, Any], dict[str, str]]]:
    async def go() -> list[tuple[int, dict[str, Any], dict[str, str]]]:
        async with served(world.server) as (url, session):
            return [await ask(session, url, doc) for doc in docs]
    return asyncio.run(go())


def test_rotate_now_starts_a_rotation_and_it_can_be_followed(world: World) -> None:
    [(status, body, headers)] = asked(world, {"token": "keda", "reason": "suspected leak"})
    assert status == 202 and body["reason"] == "accepted" and body["token"] == "keda"
    rotation_id = body["rotation_id"]
    assert headers["Location"] == f"/rotations/{rotation_id}"
    world.work.release.set()
    assert world.dispatcher.wait_idle(5)
    [request] = world.work.started
    assert (request.rotation_id, request.trigger, request.compromised) == (rotation_id, "manual", False)
    assert request.reason == "POST /rotations: suspected leak"

    async def follow() -> tuple[tuple[int, Any], tuple[int, Any]]:
        async with served(world.server) as (url, session):
            async with session.get(f"{url}/rotations/{rotation_id}") as resp:
                known = (resp.status, await resp.json())
            async with session.get(f"{url}/rotations/000000000000") as resp:
                unknown = (resp.status, await resp.json())
        return known, unknown

    known, unknown = asyncio.run(follow())
    assert known[0] == 200 and known[1]["id"] == rotation_id and known[1]["outcome"] == "succeeded"
    assert unknown[0] == 404
    assert world.sample("patrol_rotation_requests_total", code="202") == 1
    assert world.sample("patrol_webhook_requests_total", code="202") == 0


def test_rotate_now_while_one_runs_is_409_with_its_id_and_compromised_marks_it(world: World) -> None:
    (first, body, _), (second, running, _), (third, marked, _) = asked(
        world, {"token": "keda"}, {"token": "keda", "force": True}, {"token": "keda", "compromised": True})
    assert (first, second, third) == (202, 409, 202)
    assert running["rotation_id"] == body["rotation_id"] and "running" in running["reason"]
    assert marked["reason"] == "marked-compromised" and marked["rotation_id"] == body["rotation_id"]
    record = world.journal.get(body["rotation_id"])
    assert any(t.step == "plan" and t.target == "compromised" for t in record.targets)
    assert len(world.work.started) == 1


def test_rotate_now_in_the_cool_down_is_429_with_the_time_left_unless_forced(tmp_path: Path) -> None:
    now = [1_000_000.0]
    w = World(tmp_path, clock=lambda: now[0])
    try:
        w.work.release.set()
        [(status, body, _)] = asked(w, {"token": "keda"})
        assert status == 202 and w.dispatcher.wait_idle(5)
        now[0] += 60
        (cooling, why, headers), (forced, started, _) = asked(w, {"token": "keda"}, {"token": "keda", "force": True})
        assert cooling == 429 and why["retry_after_seconds"] == 540 and headers["Retry-After"] == "540"
        assert "force" in why["reason"]
        assert forced == 202 and started["rotation_id"] != body["rotation_id"]
        assert w.sample("patrol_rotation_requests_total", code="429") == 1
    finally:
        w.close()


BAD_ROTATIONS = [
    ("no auth", {"Content-Type": "application/json"}, b'{"token": "keda"}', 401),
    ("wrong token", {"Content-Type": "application/json", "Authorization": "Bearer nope"}, b'{"token": "keda"}', 401),
    ("text", {"Content-Type": "text/plain", **AUTH}, b'{"token": "keda"}', 415),
    ("too big", None, b'{"token": "keda", "reason": "' + b"a" * 20_000 + b'"}', 413),
    ("not json", None, b"{nope", 400),
    ("not an object", None, b'["keda"]', 400),
    ("no token", None, b'{"reason": "x"}', 400),
    ("token not a string", None, b'{"token": 3}', 400),
    ("force not a boolean", None, b'{"token": "keda", "force": "yes"}', 400),
    ("unknown field", None, b'{"token": "keda", "tokne": "x"}', 400),
    ("lone surrogate in the reason", None, b'{"token": "keda", "reason": "\\ud800"}', 400),
    ("undecodable bytes", None, b'{"token": "k\xff"}', 400),
    ("unknown token", None, b'{"token": "nope"}', 404),
]


@pytest.mark.parametrize(("what", "headers", "raw", "code"), BAD_ROTATIONS, ids=[b[0] for b in BAD_ROTATIONS])
def test_bad_rotation_requests_have_no_side_effect(world: World, what: str, headers: dict[str, str] | None,
                                                   raw: bytes, code: int) -> None:
    async def go() -> tuple[int, dict[str, Any], dict[str, str]]:
        async with served(world.server) as (url, session):
            return await ask(session, url, raw=raw, headers=headers)

    status, body, _ = asyncio.run(go())
    assert status == code and body["status"] == code and body["reason"]
    assert TOKEN not in json.dumps(body)
    if code == 404:
        assert body["known_tokens"] == ["daily-checks", "keda"] and "'nope'" in body["reason"]
    world.assert_no_side_effect()
    assert world.sample("patrol_rotation_requests_total", code=str(code)) == 1


def test_rotate_now_on_a_standby_is_503_naming_the_leader(tmp_path: Path) -> None:
    w = World(tmp_path, accepting=lambda: "not the lease holder", leader=lambda: "worker-1")
    try:
        (status, body, _), (unknown, _, _) = asked(w, {"token": "keda"}, {"token": "nope"})
        assert (status, body["leader"], body["reason"]) == (503, "worker-1", "not the lease holder")
        assert unknown == 404                               # the standby knows the configuration too
        w.assert_no_side_effect()
    finally:
        w.close()
