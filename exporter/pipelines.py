"""The daily-checks pipeline: finish time and result of its latest completed run, and of its
latest successful run.

Read with the pipeline's own token, taken from its sink: that token has ``vso.build`` by
configuration, and reading with it needs no credential beyond those patrol already watches.
When that token stops working this source goes down (and PatInvalid says why) while its last
values stay visible. Two calls per cycle (latest completed run, latest success); the
definition id is looked up once per token value.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from core import config
from core.ado import Build
from core.errors import PermanentError
from core.secret import Secret
from exporter.fanout import Fanout
from exporter.sinks import SinkBoard
from exporter.source import SourceCollector

LAST_RUN = "patrol_pipeline_last_run_timestamp_seconds"
LAST_SUCCESS = "patrol_pipeline_last_success_timestamp_seconds"


class BuildApi(Protocol):
    """:class:`core.ado.AdoClient` as the pipeline source uses it."""

    def find_build_definition(self, project: str, name_or_id: str | int) -> int: ...
    def latest_builds(self, project: str, definition_id: int, *, top: int = 1,
                      result_filter: str | None = None) -> builtins.list[Build]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Runs:
    last_run_at: float | None
    last_run_result: str | None
    last_success_at: float | None


class Pipeline(SourceCollector):
    """Source ``pipeline/<project>/<definition>`` for a token with a ``pipeline`` check."""

    def __init__(self, token: config.Token, client_for: Callable[[Secret], BuildApi], *,
                 board: SinkBoard, fanout: Fanout, interval: float,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if token.pipeline is None:
            raise ValueError(f"token {token.name!r} has no pipeline to watch")
        self.check: config.PipelineCheck = token.pipeline
        super().__init__(f"pipeline/{self.check.project}/{self.check.definition}", interval,
                         clock=clock, monotonic=monotonic)
        self.token = token
        self._board = board
        self._client_for = client_for
        self._fanout = fanout
        self._client: tuple[str, BuildApi, int | None] | None = None    # fingerprint, client, definition
        self._client_lock = threading.Lock()
        self._runs: Runs | None = None

    def _credential(self) -> Secret:
        for sink in self.token.sinks:
            reading = self._board.get(sink.id)
            if reading is not None and reading.value is not None:
                return reading.value
        raise PermanentError(f"no sink of token {self.token.name!r} holds a token to read "
                             f"pipeline {self.check.definition!r} with")

    def _api(self) -> tuple[BuildApi, int | None]:
        value = self._credential()
        with self._client_lock:
            if self._client is None or self._client[0] != value.fingerprint:
                old, self._client = self._client, (value.fingerprint, self._client_for(value), None)
                if old is not None:
                    old[1].close()
            return self._client[1], self._client[2]

    def fetch(self) -> None:
        api, definition_id = self._api()
        project = self.check.project
        if definition_id is None:
            definition_id = self._fanout.call(
                lambda: api.find_build_definition(project, self.check.definition))
            with self._client_lock:
                if self._client is not None and self._client[1] is api:
                    self._client = (self._client[0], api, definition_id)
        found = definition_id
        latest = self._fanout.call(lambda: api.latest_builds(project, found, top=1))
        success = self._fanout.call(lambda: api.latest_builds(project, found, top=1,
                                                               result_filter="succeeded"))
        last = latest[0] if latest else None
        good = success[0] if success else None
        self._runs = Runs(
            last_run_at=_finished(last),
            last_run_result=(last.result or "none") if last is not None else None,
            last_success_at=_finished(good),
        )

    def samples(self) -> Iterable[Metric]:
        last_run = GaugeMetricFamily(LAST_RUN, "Finish time of the pipeline's latest completed run",
                                     labels=["organization", "project", "pipeline", "result"])
        last_success = GaugeMetricFamily(LAST_SUCCESS, "Finish time of the pipeline's latest successful run",
                                         labels=["organization", "project", "pipeline"])
        runs = self._runs
        pipeline = [self.token.organization, self.check.project, self.check.definition]
        if runs is not None:
            if runs.last_run_at is not None and runs.last_run_result is not None:
                last_run.add_metric([*pipeline, runs.last_run_result], runs.last_run_at)
            if runs.last_success_at is not None:
                last_success.add_metric(pipeline, runs.last_success_at)
        return (last_run, last_success)

    def close(self) -> None:
        with self._client_lock:
            old, self._client = self._client, None
        if old is not None:
            old[1].close()


def _finished(build: Build | None) -> float | None:
    if build is None:
        return None
    when = build.finish_time or build.start_time or build.queue_time
    return when.timestamp() if when is not None else None
