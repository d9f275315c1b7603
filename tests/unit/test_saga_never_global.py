"""patrol never creates a global PAT: it asks for ``allOrgs: false`` and a PAT that comes back
global anyway is revoked and the rotation fails, leaving the old token in place (issue 8)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from rotation_fakes import Clock, FakePats, FakeWorld, make_config, seed, sink_values

from core.ado import CreatedPat
from remediation.journal import Journal
from remediation.planner import RotationRequest
from remediation.saga import RotationSaga
from tests.unit.test_rotation_saga import FAST


class GlobalAnyway(FakePats):
    """An ADO that records what was asked and answers with a global PAT regardless."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.asked_all_orgs: list[bool] = []

    def create(self, display_name: str, scopes: Any, valid_to: datetime, *, all_orgs: bool = False) -> CreatedPat:
        self.asked_all_orgs.append(all_orgs)
        created = super().create(display_name, scopes, valid_to, all_orgs=all_orgs)
        row = self.rows[created.info.authorization_id]
        row.info = replace(row.info, target_accounts=None)
        return CreatedPat(info=row.info, token=created.token)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3", clock=Clock())
    yield j
    j.close()


def test_a_pat_that_comes_back_global_is_revoked_and_the_rotation_fails(journal: Journal) -> None:
    clock = Clock()
    cfg, world = make_config(), FakeWorld(clock)
    world.pats_api = GlobalAnyway(clock)
    old = seed(world, cfg)
    journal.create_rotation("0123456789ab", "keda", trigger="manual", reason="test", received_at=clock.now)
    request = RotationRequest(token="keda", trigger="manual", reason="test", rotation_id="0123456789ab",
                              received_at=clock.now)

    outcome = RotationSaga(cfg, world, journal, settings=FAST, clock=clock, sleep=clock.sleep).run(request)

    assert outcome == "failed"
    assert world.pats_api.asked_all_orgs == [False]
    assert "valid for all organizations" in (journal.get("0123456789ab").error or "")
    assert world.pats_api.revoked == world.pats_api.created          # the global one, only
    assert set(sink_values(world, cfg)) == {old.value}
