"""The soak's short version (``make soak`` runs at least 100): a few planned rotations of the KEDA
token through the whole loop — sandbox, exporter and worker processes, real Prometheus and
Alertmanager — with builds running across them and a Key Vault reader holding the old value,
harm nothing the simulated world can count, and leave no patrol PAT active after its drain."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from patrol.soak import HARM_KEYS, soak
from patrol.stack import MonitoringStack

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not MonitoringStack.available(),
                                 reason="Debian prometheus / prometheus-alertmanager not installed")]


def test_planned_rotations_harm_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    report = soak(3, workdir=tmp_path, out=out, timeout=420)
    summary = "\n".join(report.lines())
    assert report.succeeded.get("keda", 0) >= 3, summary
    assert set(HARM_KEYS) <= set(report.harm), summary
    assert report.problems(rss=False) == [], summary
    assert len(report.rss) >= 3 and all(s.exporter_mb > 0 and s.worker_mb > 0 for s in report.rss), summary
