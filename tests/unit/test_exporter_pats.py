"""PAT expiry and the sink sources it reads, on in-memory fakes at the adapter boundary."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from core.errors import UnauthorizedError, UnavailableError
from exporter.fanout import Fanout
from exporter.pats import PatExpiry
from exporter.sinks import KeyVaultSinks, KubernetesSinks, SinkBoard
from tests.unit.exporter_world import (
    DAILY_SINK,
    KEDA_SINKS,
    ORG,
    Clock,
    FakeCluster,
    FakePats,
    FakeVault,
    at,
    daily_token,
    keda_token,
    pat,
)

EXPIRY = "patrol_pat_expiry_timestamp_seconds"
RENEWAL = "patrol_pat_renewal_timestamp_seconds"
WEEK = 7 * 86400


@pytest.fixture
def fanout() -> Iterator[Fanout]:
    pool = Fanout(4)
    yield pool
    pool.close()


class World:
    def __init__(self, fanout: Fanout, *pats_: object) -> None:
        self.clock = Clock()
        self.board = SinkBoard()
        self.build_a, self.build_b, self.vault = FakeCluster("build-a"), FakeCluster("build-b"), FakeVault()
        self.pats = FakePats()
        kw = {"board": self.board, "fanout": fanout, "interval": 60.0, "clock": self.clock}
        self.build_a_sinks = KubernetesSinks("build-a", [KEDA_SINKS[0]], self.build_a, **kw)
        self.build_b_sinks = KubernetesSinks("build-b", [KEDA_SINKS[1]], self.build_b, **kw)
        self.vault_sinks = KeyVaultSinks(DAILY_SINK.vault_url, [DAILY_SINK], self.vault, **kw)
        self.source = PatExpiry(ORG, [keda_token(), daily_token()], self.pats, **kw)
        self.registry = CollectorRegistry()
        self.registry.register(self.source)

    def refresh(self) -> None:
        for source in (self.build_a_sinks, self.build_b_sinks, self.vault_sinks, self.source):
            source.refresh()

    def expiry(self, token: str, source: str) -> float | None:
        return self.registry.get_sample_value(EXPIRY, {"token": token, "organization": ORG, "source": source})

    def renewal(self, token: str) -> float | None:
        return self.registry.get_sample_value(RENEWAL, {"token": token, "organization": ORG})

    def up(self) -> float | None:
        return self.registry.get_sample_value("patrol_source_up", {"source": f"pat-lifecycle/{ORG}"})


def test_matches_the_authorization_id_recorded_in_the_sinks(fanout: Fanout) -> None:
    w = World(fanout)
    w.pats.pats = [pat("a-keda", "keda-by-hand", at(10 * 86400)), pat("a-daily", "whatever", at(20 * 86400)),
                   pat("a-other", "patrol-keda-000000000000", at(99 * 86400))]
    annotations = {"patrol.io/authorization-id": "a-keda"}
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "t1"}, annotations)
    w.build_b.put_secret("azure-devops", "azure-devops-token", {"token": "t1"}, annotations)
    w.vault.put("azure-devops-token", "t2", expires_on=at(5), tags={"authorizationId": "a-daily"})
    w.refresh()

    assert w.expiry("keda", "lifecycle-api") == at(10 * 86400).timestamp()
    assert w.renewal("keda") == at(10 * 86400).timestamp() - WEEK
    assert w.expiry("daily-checks", "lifecycle-api") == at(20 * 86400).timestamp()
    assert w.expiry("daily-checks", "keyvault") is None          # exactly one series per token
    assert w.up() == 1.0
    assert w.pats.calls == 1                                       # one listing for every token


def test_sinks_holding_different_pats_report_the_earliest(fanout: Fanout) -> None:
    w = World(fanout)
    w.pats.pats = [pat("old", "patrol-keda-aaaaaaaaaaaa", at(2 * 86400)),
                   pat("new", "patrol-keda-bbbbbbbbbbbb", at(30 * 86400))]
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "new"}, {"patrol.io/authorization-id": "new"})
    w.build_b.put_secret("azure-devops", "azure-devops-token", {"token": "old"}, {"patrol.io/authorization-id": "old"})
    w.refresh()
    assert w.expiry("keda", "lifecycle-api") == at(2 * 86400).timestamp()


def test_without_ids_the_newest_patrol_named_pat_wins(fanout: Fanout) -> None:
    w = World(fanout)
    w.pats.pats = [pat("1", "patrol-keda-aaaaaaaaaaaa", at(3 * 86400), valid_from=at(-20 * 86400)),
                   pat("2", "patrol-keda-bbbbbbbbbbbb", at(30 * 86400), valid_from=at(-1)),
                   pat("3", "patrol-kedax-cccccccccccc", at(90 * 86400), valid_from=at(0))]
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "x"})
    w.refresh()
    assert w.expiry("keda", "lifecycle-api") == at(30 * 86400).timestamp()


def test_falls_back_to_the_expiry_written_in_the_sinks(fanout: Fanout) -> None:
    w = World(fanout)
    w.pats.pats = [pat("unrelated", "someone-else", at(86400))]
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "x"},
                     {"patrol.io/authorization-id": "gone", "patrol.io/expiry": "2025-06-20T00:00:00Z"})
    w.build_b.put_secret("azure-devops", "azure-devops-token", {"token": "x"},
                     {"patrol.io/expiry": "2025-06-25T00:00:00Z"})
    w.vault.put("azure-devops-token", "t2", expires_on=at(4 * 86400), tags={})
    w.refresh()

    assert w.expiry("keda", "annotation") == 1750377600.0        # 2025-06-20, the earlier copy
    assert w.expiry("keda", "lifecycle-api") is None
    assert w.renewal("keda") == 1750377600.0 - WEEK
    assert w.expiry("daily-checks", "keyvault") == at(4 * 86400).timestamp()


def test_a_token_nobody_can_date_has_no_series(fanout: Fanout) -> None:
    w = World(fanout)
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "x"})
    w.refresh()
    assert w.renewal("keda") is None
    assert w.up() == 1.0


def test_failing_listing_keeps_stale_values_and_logs_once_per_state(
        fanout: Fanout, caplog: pytest.LogCaptureFixture) -> None:
    w = World(fanout)
    w.pats.pats = [pat("a-daily", "x", at(20 * 86400))]
    w.vault.put("azure-devops-token", "t2", expires_on=at(4 * 86400), tags={"authorizationId": "a-daily"})
    w.refresh()
    first_success = w.registry.get_sample_value("patrol_source_last_success_timestamp_seconds",
                                                {"source": f"pat-lifecycle/{ORG}"})
    assert first_success == w.clock.now

    w.pats.fail = UnavailableError("ado-pats: cannot connect to vssps.dev.azure.com", service="ado-pats")
    caplog.set_level(logging.INFO, logger="patrol.exporter")
    w.clock.now += 300
    for _ in range(3):
        w.source.refresh()
    assert w.up() == 0.0
    assert w.expiry("daily-checks", "lifecycle-api") == at(20 * 86400).timestamp()    # stale, still there
    assert w.registry.get_sample_value("patrol_source_last_success_timestamp_seconds",
                                       {"source": f"pat-lifecycle/{ORG}"}) == first_success
    down = [r for r in caplog.records if "is down" in r.getMessage()]
    assert len(down) == 1 and "cannot connect" in down[0].getMessage()

    w.pats.fail = UnauthorizedError("ado-pats: HTTP 401", service="ado-pats", status=401)
    w.source.refresh()                                  # a new reason is a new state: logged again
    w.pats.fail = None
    w.source.refresh()
    w.source.refresh()
    messages = [r.getMessage() for r in caplog.records if r.name == "patrol.exporter"]
    assert sum("is down" in m for m in messages) == 2
    assert sum("up again" in m for m in messages) == 1
    assert w.up() == 1.0


def test_an_unreachable_vault_is_its_own_source(fanout: Fanout) -> None:
    w = World(fanout)
    w.registry.register(w.vault_sinks)
    w.registry.register(w.build_a_sinks)
    w.vault.put("azure-devops-token", "t2", expires_on=at(86400), tags={})
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "x"},
                         {"patrol.io/expiry": "2025-06-20T00:00:00Z"})
    w.refresh()
    w.vault.fail = UnavailableError("Key Vault get azure-devops-token: cannot reach Key Vault", service="keyvault")
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "x"},
                         {"patrol.io/expiry": "2025-06-21T00:00:00Z"})
    w.refresh()

    assert w.registry.get_sample_value("patrol_source_up", {"source": "keyvault/contoso-checks.vault.azure.net"}) == 0
    assert w.registry.get_sample_value("patrol_source_up", {"source": "kubernetes/build-a"}) == 1
    assert w.expiry("daily-checks", "keyvault") == at(86400).timestamp()          # last reading kept
    assert w.expiry("keda", "annotation") == 1750377600.0 + 86400                 # fresh reading used


def test_an_empty_sink_is_read_successfully(fanout: Fanout) -> None:
    w = World(fanout)
    w.refresh()
    reading = w.board.get(KEDA_SINKS[0].id)
    assert reading is not None and reading.value is None
    assert w.build_a_sinks.health.up


def test_renewal_uses_each_tokens_renew_before(fanout: Fanout) -> None:
    w = World(fanout)
    w.source = PatExpiry(ORG, [keda_token(renew_before=timedelta(hours=1))], w.pats, board=w.board,
                         fanout=fanout, interval=60.0, clock=w.clock)
    registry = CollectorRegistry()
    registry.register(w.source)
    w.pats.pats = [pat("x", "patrol-keda-aaaaaaaaaaaa", at(86400))]
    w.source.refresh()
    assert registry.get_sample_value(RENEWAL, {"token": "keda", "organization": ORG}) == at(86400 - 3600).timestamp()
