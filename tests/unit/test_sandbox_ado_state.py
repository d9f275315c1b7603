"""The sandbox's ADO state and HTTP plumbing without servers: dates, PAT states by an injected clock,
policies, the job queue as KEDA counts it, faults and the request log."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest

from sandbox.ado import AdoWorld, format_ado_datetime, format_ticks_datetime, parse_datetime
from sandbox.entra import Entra
from sandbox.http import Fault, FaultTable, RequestLog, RequestRecord, redact_authorization


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(clock: Clock) -> AdoWorld:
    return AdoWorld("org", Entra("tenant", clock=clock), clock=clock)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-11-02T22:56:52.1033333Z", "2020-11-02T22:56:52.1033333Z"),
        ("2020-12-01T23:46:23.319Z", "2020-12-01T23:46:23.32Z"),  # SPEC CreatePat: .319 in, .32 out
        ("2020-10-24T03:04:57.52Z", "2020-10-24T03:04:57.52Z"),
        ("2020-10-24T03:04:57Z", "2020-10-24T03:04:57Z"),
        ("2020-10-24T05:04:57.5+02:00", "2020-10-24T03:04:57.5Z"),
        ("2020-10-24T03:04:57.1466667", "2020-10-24T03:04:57.1466667Z"),
    ],
)
def test_ado_dates_round_to_sql_datetime_and_print_up_to_seven_digits(text: str, expected: str) -> None:
    assert format_ado_datetime(parse_datetime(text)) == expected


def test_build_dates_always_have_seven_digits() -> None:
    t = datetime(2019, 1, 10, 20, 59, 13, 303601, tzinfo=UTC).timestamp()
    assert format_ticks_datetime(t) == "2019-01-10T20:59:13.3036010Z"
    with pytest.raises(ValueError):
        parse_datetime("next tuesday")


def test_pat_states_follow_the_clock(world: AdoWorld, clock: Clock) -> None:
    oid = "owner"
    auth_id, token = world.issue_pat(oid, "keda", ["vso.agentpools_manage"], clock.now + 60)
    assert len(token) == 52 and token.isalnum()
    ok = world.authenticate(token)
    assert ok.ok and ok.authorization_id == auth_id and ok.scopes == {"vso.agentpools_manage"}
    clock.now += 60
    assert world.authenticate(token).result == "expired"
    assert world.authenticate(token + "x").result == "unknown"
    world.revoke_pat(auth_id)
    assert world.authenticate(token).result == "revoked"
    listed = world.pats()
    assert [p["status"] for p in listed] == ["revoked"]
    assert listed[0]["fingerprint"] == hashlib.sha256(token.encode()).hexdigest()[:12]
    assert token not in repr(listed)
    other, token2 = world.issue_pat(oid, "other", ["vso.build"], clock.now + 600)
    world.expire_pat(other)
    assert world.authenticate(token2).result == "expired"
    assert world.pat_id_for_value(token2 + "\n") == other


def test_global_pats_are_retired_at_the_cutoff(clock: Clock) -> None:
    world = AdoWorld("org", Entra("tenant", clock=clock), clock=clock, global_pat_cutoff=clock.now + 10)
    _, global_token = world.issue_pat("oid", "g", ["vso.build"], clock.now + 3600, all_orgs=True)
    _, org_token = world.issue_pat("oid", "o", ["vso.build"], clock.now + 3600)
    assert world.authenticate(global_token).result == "ok"
    clock.now += 10
    assert world.authenticate(global_token).result == "global_retired"
    assert world.authenticate(org_token).result == "ok"
    assert AdoWorld("org", Entra("t"), clock=clock, global_pat_cutoff=None).global_pat_cutoff is None


def test_a_pat_value_is_matched_byte_for_byte(world: AdoWorld, clock: Clock) -> None:
    auth_id, token = world.issue_pat("oid", "p", ["vso.build"], clock.now + 60)
    assert world.authenticate(token).ok
    assert [world.authenticate(v).result for v in (token + "\n", f" {token}", token + "\t")] == ["unknown"] * 3
    # The control API finds the PAT a sink stands for as KEDA would read it (one trailing newline).
    assert world.pat_id_for_value(token + "\n") == auth_id
    assert world.pat_id_for_value(token + " ") is None


def test_disabling_the_owner_revokes_after_the_delay(clock: Clock) -> None:
    world = AdoWorld("org", Entra("tenant", clock=clock), clock=clock, disabled_user_revoke_delay=3600)
    auth_id, token = world.issue_pat("bot", "p", ["vso.build"], clock.now + 7200)
    other_id, _ = world.issue_pat("someone-else", "q", ["vso.build"], clock.now + 7200)
    world.user_enabled_changed("bot", False)
    clock.now += 3599
    assert world.authenticate(token).ok                                   # ADO has not caught up
    clock.now += 1
    assert world.authenticate(token).result == "revoked"
    assert world.pat(other_id).status(clock.now) == "active"
    world.user_enabled_changed("bot", True)
    assert world.pat(auth_id).status(clock.now) == "revoked"              # stays revoked

    pending_id, pending = world.issue_pat("bot", "r", ["vso.build"], clock.now + 7200)
    world.user_enabled_changed("bot", False)
    world.user_enabled_changed("bot", True)                               # back before ADO acted
    clock.now += 7000
    assert world.authenticate(pending).ok
    world.revoke_pat(pending_id)
    assert world.pat(pending_id).status(clock.now) == "revoked"


def test_entra_tells_ado_when_a_user_is_disabled(clock: Clock) -> None:
    entra = Entra("tenant", clock=clock)
    oid = entra.add_user("bot@x", "pw")
    world = AdoWorld("org", entra, clock=clock)
    entra.on_user_enabled(world.user_enabled_changed)
    _, token = world.issue_pat(oid, "p", ["vso.build"], clock.now + 60)
    entra.set_user_enabled("bot@x", False)
    assert world.authenticate(token).result == "revoked"


def test_policy_changes_are_validated(world: AdoWorld) -> None:
    assert world.set_policy(max_lifespan=60, lifespan_mode="reject").lifespan_mode == "reject"
    for bad in ({"nope": 1}, {"lifespan_mode": "sometimes"}, {"error_status": 500}, {"max_lifespan": -1}):
        with pytest.raises(ValueError):
            world.set_policy(**bad)


def test_job_queue_counts_like_keda(world: AdoWorld) -> None:
    pool = world.add_pool("p")
    assert world.pool_by_name("P") == pool
    agent = world.register_agent(pool, "a1")
    jobs = [world.queue_job(pool) for _ in range(3)]
    assert world.queued_jobs(pool) == 3
    assert world.assign_job(pool, agent) == jobs[0]
    assert world.assign_job(pool, agent) is None  # one job per agent at a time
    assert world.queued_jobs(pool) == 2
    world.finish_job(jobs[0], "succeeded")
    assert world.assign_job(pool, agent) == jobs[1]
    world.remove_agent(agent)  # the pod died mid-job
    assert world.jobs(pool)[1].result == "abandoned"
    with pytest.raises(ValueError):
        world.finish_job(jobs[2], "exploded")


def test_finished_jobs_are_pruned(world: AdoWorld) -> None:
    pool = world.add_pool("busy")
    agent = world.register_agent(pool, "a")
    for _ in range(250):
        world.queue_job(pool)
        request_id = world.assign_job(pool, agent)
        assert request_id is not None
        world.finish_job(request_id)
    assert len(world.jobs(pool)) == 200


def test_redaction_fingerprints_the_pat_inside_basic() -> None:
    pat = "abcdefghijklmnop"
    header = "Basic " + base64.b64encode(f":{pat}".encode()).decode()
    redacted = redact_authorization(header)
    assert redacted == f"Basic <redacted {hashlib.sha256(pat.encode()).hexdigest()[:12]}>"
    assert pat not in redacted
    assert (
        redact_authorization("Bearer tok") == f"Bearer <redacted {hashlib.sha256(b'tok').hexdigest()[:12]}>"
    )
    assert "weird" not in redact_authorization("weird")


def test_fault_table_matches_by_service_method_path_and_counts_down() -> None:
    table = FaultTable()
    kube = table.add(
        Fault(kind="status", service="kube", path_regex=r"/secrets/", method="PATCH", remaining=2)
    )
    assert table.match("kube:build-a", "GET", "/api/v1/namespaces/a/secrets/b") is None
    assert table.match("ado", "PATCH", "/api/v1/namespaces/a/secrets/b") is None
    assert table.match("kube:build-a", "PATCH", "/api/v1/namespaces/a/secrets/b") is not None
    hit = table.match("kube:build-b", "patch", "/api/v1/namespaces/a/secrets/b")
    assert hit is not None and hit.id == kube and hit.hits == 2
    assert table.match("kube:build-b", "PATCH", "/api/v1/namespaces/a/secrets/b") is None  # used up
    anywhere = table.add(Fault(kind="latency", service="*", path_regex=r"poolName=x$"))
    assert table.match(
        "ado", "GET", "/org/_apis/distributedtask/pools", "/org/_apis/distributedtask/pools?poolName=x"
    )
    table.remove(anywhere)
    with pytest.raises(KeyError):
        table.remove(anywhere)
    with pytest.raises(ValueError):
        table.add(Fault(kind="melt", service="ado"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        table.add(Fault(kind="status", service="ado", remaining=0))


def test_request_log_is_bounded_and_filters() -> None:
    log = RequestLog(maxlen=3)
    for i, service in enumerate(["ado", "kube:a", "kube:b", "entra"]):
        log.append(
            RequestRecord(
                time=float(i), service=service, method="GET", path="/", query="", status=200, headers={}
            )
        )
    assert len(log) == 3
    assert [r.service for r in log.records("kube")] == ["kube:a", "kube:b"]
    assert [r.service for r in log.records(since=2.0)] == ["kube:b", "entra"]
    assert log.records("kube:a")[0].to_dict()["status"] == 200
