"""Agent pools (KEDA's queue arithmetic) and the daily-checks pipeline, on fakes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from core.errors import NotFoundError, UnauthorizedError
from core.secret import Secret
from exporter.fanout import Fanout
from exporter.pipelines import Pipeline
from exporter.pools import AgentPools, pool_state
from exporter.sinks import KeyVaultSinks, SinkBoard
from tests.unit.exporter_world import (
    DAILY_SINK,
    NOW,
    ORG,
    Clock,
    FakeAdo,
    FakeVault,
    agent,
    build,
    daily_token,
    job,
)


@pytest.fixture
def fanout() -> Iterator[Fanout]:
    pool = Fanout(4)
    yield pool
    pool.close()


def test_pool_state_counts_queue_like_keda() -> None:
    jobs = [job(1, -600),                                   # waiting 10 minutes
            job(2, -60),                                    # waiting 1 minute
            job(3, -900, received=-800),                    # running: an agent received it
            job(4, -3000, result="succeeded", received=-2900),
            job(5, -4000, result="canceled")]               # finished without ever running
    state = pool_state([agent(1, "online"), agent(2, "offline"), agent(3, "online")], jobs, NOW)
    assert (state.online, state.offline, state.queued, state.oldest_age) == (2, 1, 2, 600.0)
    assert pool_state([], [], NOW).oldest_age == 0.0


class Pools:
    def __init__(self, fanout: Fanout) -> None:
        self.ado = FakeAdo()
        self.ado.add_pool("agents-a", 11)
        self.ado.add_pool("agents-b", 12)
        self.source = AgentPools(ORG, ["agents-a", "agents-b", "agents-a"], self.ado, fanout=fanout,
                                 interval=30.0, clock=Clock())
        self.registry = CollectorRegistry()
        self.registry.register(self.source)

    def value(self, name: str, pool: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, {"organization": ORG, "pool": pool, **labels})


def test_pool_metrics_and_id_lookups_once(fanout: Fanout) -> None:
    p = Pools(fanout)
    p.ado.agents[11] = [agent(1, "online"), agent(2, "offline"), agent(3, "offline")]
    p.ado.jobs[11] = [job(1, -120), job(2, -30, received=-10)]
    p.source.refresh()
    p.source.refresh()

    assert p.value("patrol_agent_pool_agents", "agents-a", status="online") == 1.0
    assert p.value("patrol_agent_pool_agents", "agents-a", status="offline") == 2.0
    assert p.value("patrol_agent_pool_queued_jobs", "agents-a") == 1.0
    assert p.value("patrol_agent_pool_oldest_queued_job_age_seconds", "agents-a") == 120.0
    assert p.value("patrol_agent_pool_queued_jobs", "agents-b") == 0.0
    assert p.value("patrol_agent_pool_oldest_queued_job_age_seconds", "agents-b") == 0.0
    assert p.ado.find_calls == 2                            # pool ids looked up once each


def test_a_vanished_pool_is_looked_up_again_and_others_keep_working(fanout: Fanout) -> None:
    p = Pools(fanout)
    p.ado.jobs[12] = [job(1, -5)]
    p.source.refresh()
    del p.ado.pools["agents-a"], p.ado.agents[11], p.ado.jobs[11]
    p.ado.jobs[12] = [job(1, -5), job(2, -1)]
    p.source.refresh()
    assert not p.source.health.up
    assert p.value("patrol_agent_pool_queued_jobs", "agents-b") == 2.0      # fresh
    assert p.value("patrol_agent_pool_queued_jobs", "agents-a") == 0.0    # stale, kept
    p.ado.add_pool("agents-a", 21)
    p.ado.jobs[21] = [job(3, -7)]
    p.source.refresh()
    assert p.source.health.up
    assert p.value("patrol_agent_pool_queued_jobs", "agents-a") == 1.0


class Pipes:
    def __init__(self, fanout: Fanout) -> None:
        self.vault = FakeVault()
        self.board = SinkBoard()
        self.sinks = KeyVaultSinks(DAILY_SINK.vault_url, [DAILY_SINK], self.vault, board=self.board,
                                   fanout=fanout, interval=30.0)
        self.ado = FakeAdo()
        self.clients: list[tuple[str, FakeAdo]] = []

        def client_for(value: Secret) -> FakeAdo:
            self.clients.append((value.reveal(), self.ado))
            return self.ado

        self.source = Pipeline(daily_token(), client_for, board=self.board, fanout=fanout, interval=30.0)
        self.registry = CollectorRegistry()
        self.registry.register(self.source)

    def refresh(self) -> None:
        self.sinks.refresh()
        self.source.refresh()


def test_latest_run_and_latest_success(fanout: Fanout) -> None:
    p = Pipes(fanout)
    p.vault.put("azure-devops-token", "daily-pat")
    p.ado.builds = [build(1, "succeeded", -7200), build(2, "failed", -600), build(3, "succeeded", -9000),
                    build(4, "succeeded", -100, definition_id=99)]
    p.refresh()
    get = p.registry.get_sample_value
    pipeline = {"organization": ORG, "project": "Operations", "pipeline": "daily-checks"}
    assert get("patrol_pipeline_last_run_timestamp_seconds", {**pipeline, "result": "failed"}) == NOW - 600
    assert get("patrol_pipeline_last_run_timestamp_seconds", {**pipeline, "result": "succeeded"}) is None
    assert get("patrol_pipeline_last_success_timestamp_seconds", pipeline) == NOW - 7200
    assert p.clients == [("daily-pat", p.ado)]              # read with the token from its sink

    p.refresh()
    assert p.ado.find_calls == 1                            # definition id looked up once


def test_a_new_token_in_the_sink_gets_a_new_client(fanout: Fanout) -> None:
    p = Pipes(fanout)
    p.vault.put("azure-devops-token", "first")
    p.refresh()
    p.vault.put("azure-devops-token", "second")
    p.refresh()
    assert [v for v, _ in p.clients] == ["first", "second"]
    assert p.ado.closed                                     # the first client was closed
    p.source.close()


def test_pipeline_source_is_down_when_its_token_fails_or_is_missing(fanout: Fanout) -> None:
    p = Pipes(fanout)
    p.refresh()
    assert not p.source.health.up and "holds a token" in (p.source.health.reason or "")
    p.vault.put("azure-devops-token", "daily-pat")
    p.ado.builds = [build(1, "succeeded", -60)]
    p.refresh()
    assert p.source.health.up
    p.ado.fail = UnauthorizedError("ado: HTTP 401", service="ado", status=401)
    p.refresh()
    assert not p.source.health.up
    assert p.registry.get_sample_value("patrol_pipeline_last_success_timestamp_seconds", {
        "organization": ORG, "project": "Operations", "pipeline": "daily-checks"}) == NOW - 60


def test_an_unknown_definition_is_a_failure_not_a_crash(fanout: Fanout) -> None:
    p = Pipes(fanout)
    p.vault.put("azure-devops-token", "daily-pat")
    p.ado.definitions = {}

    def missing(project: str, name_or_id: str | int) -> int:
        raise NotFoundError("ado: build definition 'daily-checks' not found", service="ado")

    p.ado.find_build_definition = missing  # type: ignore[method-assign]
    p.refresh()
    assert not p.source.health.up
    assert "not found" in (p.source.health.reason or "")
