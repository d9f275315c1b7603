"""``patrol_pat_managed`` and ``patrol_pat_global``: a hand-pasted token and a global PAT, on fakes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from core.errors import UnavailableError
from exporter.fanout import Fanout
from tests.unit.exporter_world import ORG, at, pat
from tests.unit.test_exporter_pats import World

MANAGED = "patrol_pat_managed"
GLOBAL = "patrol_pat_global"
EXPIRY = "patrol_pat_expiry_timestamp_seconds"


@pytest.fixture
def fanout() -> Iterator[Fanout]:
    pool = Fanout(4)
    yield pool
    pool.close()


def sample(w: World, name: str, token: str) -> float | None:
    return w.registry.get_sample_value(name, {"token": token, "organization": ORG})


def test_a_hand_pasted_token_is_unmanaged_with_no_guessed_expiry(fanout: Fanout) -> None:
    w = World(fanout)
    w.pats.pats = [pat("a-keda", "keda-by-hand", at(10 * 86400))]
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "t1"}, {})
    w.build_b.put_secret("azure-devops", "azure-devops-token", {"token": "t1"}, {})
    w.refresh()

    assert sample(w, MANAGED, "keda") == 0.0
    assert sample(w, GLOBAL, "keda") is None                   # no PAT known to judge
    families = {m.name: m for m in w.registry.collect()}
    assert [s for s in families[EXPIRY].samples if s.labels["token"] == "keda"] == []


def test_recorded_metadata_or_patrols_naming_makes_a_token_managed(fanout: Fanout) -> None:
    w = World(fanout)
    w.pats.pats = [pat("a-keda", "keda-by-hand", at(10 * 86400)),
                   pat("a-daily", "patrol-daily-checks-abc", at(20 * 86400))]
    annotations = {"patrol.io/authorization-id": "a-keda"}
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "t1"}, annotations)
    w.build_b.put_secret("azure-devops", "azure-devops-token", {"token": "t1"}, annotations)
    w.vault.put("azure-devops-token", "t2")                    # no tags, but a patrol-named PAT exists
    w.refresh()

    assert sample(w, MANAGED, "keda") == 1.0
    assert sample(w, MANAGED, "daily-checks") == 1.0
    assert sample(w, GLOBAL, "keda") == 0.0


def test_a_sink_holding_nothing_says_nothing_about_management(fanout: Fanout) -> None:
    w = World(fanout)
    w.refresh()                                                # every sink empty
    assert sample(w, MANAGED, "keda") is None


def test_a_global_pat_is_flagged(fanout: Fanout) -> None:
    w = World(fanout)
    w.pats.pats = [dataclasses.replace(pat("a-keda", "keda-by-hand", at(10 * 86400)), target_accounts=None)]
    annotations = {"patrol.io/authorization-id": "a-keda"}
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "t1"}, annotations)
    w.build_b.put_secret("azure-devops", "azure-devops-token", {"token": "t1"}, annotations)
    w.refresh()

    assert sample(w, GLOBAL, "keda") == 1.0
    assert sample(w, MANAGED, "keda") == 1.0


def test_without_the_pat_list_the_recorded_id_still_says_managed(fanout: Fanout) -> None:
    w = World(fanout)
    w.pats.fail = UnavailableError("vssps unreachable", service="ado-pats")
    w.build_a.put_secret("azure-devops", "azure-devops-token", {"token": "t1"},
                     {"patrol.io/authorization-id": "a-keda"})
    w.build_b.put_secret("azure-devops", "azure-devops-token", {"token": "t1"},
                     {"patrol.io/authorization-id": "a-keda"})
    w.vault.put("azure-devops-token", "t2")
    w.refresh()

    assert w.up() == 0.0
    assert sample(w, MANAGED, "keda") == 1.0
    assert sample(w, MANAGED, "daily-checks") == 0.0
    assert sample(w, GLOBAL, "keda") is None                   # cannot tell without the PAT list
