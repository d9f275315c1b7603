"""Token validity per sink: probes deduplicated by token, outages never reported as invalid."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from core.errors import ServerError
from exporter.fanout import Fanout
from exporter.sinks import KeyVaultSinks, KubernetesSinks, SinkBoard
from exporter.validity import Validity
from tests.unit.exporter_world import (
    DAILY_SINK,
    KEDA_SINKS,
    ORG,
    Clock,
    FakeCluster,
    FakeProber,
    FakeVault,
    daily_token,
    keda_token,
)

BUILD_A = KEDA_SINKS[0].id
BUILD_B = KEDA_SINKS[1].id
KV = DAILY_SINK.id


@pytest.fixture
def fanout() -> Iterator[Fanout]:
    pool = Fanout(4)
    yield pool
    pool.close()


class World:
    def __init__(self, fanout: Fanout) -> None:
        self.monotonic = Clock(0.0)
        self.board = SinkBoard()
        self.build_a, self.build_b, self.vault = FakeCluster("build-a"), FakeCluster("build-b"), FakeVault()
        self.prober = FakeProber()
        kw = {"board": self.board, "fanout": fanout, "interval": 60.0, "monotonic": self.monotonic}
        self.sinks = [KubernetesSinks("build-a", [KEDA_SINKS[0]], self.build_a, **kw),
                      KubernetesSinks("build-b", [KEDA_SINKS[1]], self.build_b, **kw),
                      KeyVaultSinks(DAILY_SINK.vault_url, [DAILY_SINK], self.vault, **kw)]
        self.source = Validity(ORG, [keda_token(), daily_token()], self.prober, **kw)
        self.registry = CollectorRegistry()
        self.registry.register(self.source)

    def refresh(self) -> None:
        for source in self.sinks:
            source.refresh()
        self.source.refresh()

    def valid(self, token: str, sink: str) -> float | None:
        return self.registry.get_sample_value("patrol_pat_valid", {"token": token, "sink": sink})


def test_the_same_token_in_several_sinks_is_probed_once_per_cycle(fanout: Fanout) -> None:
    w = World(fanout)
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "keda-pat"})
    w.build_b.put_secret("azure-devops", "azure-devops-token", {"token": "keda-pat"})
    w.vault.put("azure-devops-token", "daily-pat")
    w.prober.valid = {"keda-pat"}
    w.refresh()

    assert w.valid("keda", BUILD_A) == 1.0
    assert w.valid("keda", BUILD_B) == 1.0
    assert w.valid("daily-checks", KV) == 0.0
    assert w.prober.calls == 2                      # one per distinct token, not per sink

    w.refresh()                                     # same cycle (no time passed): cached
    assert w.prober.calls == 2
    w.monotonic.now += 60                           # next cycle: probed again
    w.prober.valid = set()
    w.refresh()
    assert w.prober.calls == 4
    assert w.valid("keda", BUILD_A) == 0.0


def test_sinks_holding_different_tokens_are_told_apart(fanout: Fanout) -> None:
    w = World(fanout)
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "new"})
    w.build_b.put_secret("azure-devops", "azure-devops-token", {"token": "revoked"})
    w.prober.valid = {"new"}
    w.refresh()
    assert (w.valid("keda", BUILD_A), w.valid("keda", BUILD_B)) == (1.0, 0.0)


def test_an_empty_sink_holds_nothing_that_authenticates(fanout: Fanout) -> None:
    w = World(fanout)
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"other-key": "x"})
    w.refresh()
    assert w.valid("keda", BUILD_A) == 0.0              # key missing
    assert w.valid("keda", BUILD_B) == 0.0              # Secret missing
    assert w.prober.calls == 0


def test_an_outage_keeps_the_last_value_and_marks_the_source_down(fanout: Fanout) -> None:
    w = World(fanout)
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "keda-pat"})
    w.prober.valid = {"keda-pat"}
    w.refresh()
    w.monotonic.now += 60
    w.prober.fail = ServerError("ado: HTTP 503", service="ado", status=503)
    w.refresh()
    assert w.valid("keda", BUILD_A) == 1.0              # never 0 because ADO is down
    assert w.registry.get_sample_value("patrol_source_up", {"source": f"validity/{ORG}"}) == 0.0


def test_an_unreadable_sink_keeps_its_last_value(fanout: Fanout) -> None:
    w = World(fanout)
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "keda-pat"})
    w.prober.valid = {"keda-pat"}
    w.refresh()
    w.build_a.fail = ServerError("read Secret: HTTP 500", service="kubernetes/build-a", status=500)
    w.monotonic.now += 60
    w.refresh()
    assert w.valid("keda", BUILD_A) == 1.0
    assert w.registry.get_sample_value("patrol_source_up", {"source": f"validity/{ORG}"}) == 1.0
    assert not w.sinks[0].health.up


def test_no_token_value_reaches_the_exposition(fanout: Fanout) -> None:
    from prometheus_client import generate_latest

    w = World(fanout)
    secret = "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst"
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": secret})
    w.refresh()
    assert secret.encode() not in generate_latest(w.registry)
