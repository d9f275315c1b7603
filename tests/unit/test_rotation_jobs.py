"""What the rotation reads from Kubernetes for the drain and the confirm step: KEDA's agent Jobs
(batch/v1, as ``pkg/scaling/executor/scale_jobs.go`` v2.20.0 creates them) and the ScaledJob
fields that bound the drain (activeDeadlineSeconds) and pace the confirm (pollingInterval)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from core import kube

# A Job as KEDA creates it for ScaledJob azure-devops-agent at generation 3, running.
RUNNING_JOB: dict[str, Any] = {
    "apiVersion": "batch/v1", "kind": "Job",
    "metadata": {"name": "azure-devops-agent-7x2kq", "namespace": "azure-devops",
                 "generateName": "azure-devops-agent-", "creationTimestamp": "2026-12-03T10:00:00Z",
                 "labels": {"app.kubernetes.io/managed-by": "keda-operator",
                            "scaledjob.keda.sh/name": "azure-devops-agent"},
                 "annotations": {"scaledjob.keda.sh/generation": "3"}},
    "spec": {"activeDeadlineSeconds": 3600, "parallelism": 1, "completions": 1, "backoffLimit": 0},
    "status": {"startTime": "2026-12-03T10:00:01Z", "active": 1, "ready": 1},
}


def test_a_running_agent_job() -> None:
    job = kube.parse_job(RUNNING_JOB)
    assert (job.name, job.namespace, job.generation) == ("azure-devops-agent-7x2kq", "azure-devops", "3")
    assert job.started == datetime(2026, 12, 3, 10, 0, 1, tzinfo=UTC)
    assert job.active == 1 and job.running and job.active_deadline_seconds == 3600


@pytest.mark.parametrize(("status", "running"), [
    ({"startTime": "2026-12-03T10:00:01Z", "completionTime": "2026-12-03T10:20:00Z", "succeeded": 1,
      "conditions": [{"type": "Complete", "status": "True"}]}, False),
    ({"startTime": "2026-12-03T10:00:01Z", "failed": 1,                   # DeadlineExceeded: no completionTime
      "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}, False),
    ({"startTime": "2026-12-03T10:00:01Z", "active": 1,
      "conditions": [{"type": "Failed", "status": "False"}]}, True),
    ({}, True),                                                            # created, not started yet
])
def test_when_a_job_has_ended(status: dict[str, Any], running: bool) -> None:
    doc = copy.deepcopy(RUNNING_JOB)
    doc["status"] = status
    job = kube.parse_job(doc)
    assert job.running is running
    if not status:
        assert job.start_time is None and job.started == datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def test_scaledjob_polling_interval_and_active_deadline() -> None:
    doc = {"metadata": {"name": "agent", "generation": 2},
           "spec": {"pollingInterval": 10, "jobTargetRef": {"activeDeadlineSeconds": 7200, "template": {}}}}
    scaler = kube.parse_scaler(doc, "scaledjobs")
    assert (scaler.polling_interval, scaler.active_deadline_seconds) == (10, 7200)
    bare = kube.parse_scaler({"metadata": {"name": "agent"}, "spec": {"jobTargetRef": {}}}, "scaledjobs")
    assert (bare.polling_interval, bare.active_deadline_seconds) == (kube.DEFAULT_POLLING_INTERVAL, None)
    so = kube.parse_scaler({"metadata": {"name": "so"}, "spec": {"pollingInterval": 5}}, "scaledobjects")
    assert (so.polling_interval, so.active_deadline_seconds) == (5, None)


@pytest.mark.parametrize(("spec", "expected"), [
    # deletePreviousVersionScaleJobs (v2.20.0): the deprecated field wins whenever it is set...
    ({"rolloutStrategy": "default", "rollout": {"strategy": "gradual"}}, "default"),
    ({"rolloutStrategy": "gradual", "rollout": {"strategy": "default"}}, "gradual"),
    # ...an empty one counts as unset
    ({"rolloutStrategy": "", "rollout": {"strategy": "gradual"}}, "gradual"),
])
def test_rollout_strategy_precedence_is_keda_s(spec: dict[str, Any], expected: str) -> None:
    doc = {"metadata": {"name": "agent"}, "spec": spec}
    assert kube.parse_scaler(doc, "scaledjobs").rollout_strategy == expected
