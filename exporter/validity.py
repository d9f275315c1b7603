"""Token validity per sink: does the token a sink holds authenticate now?

Each sink's current token (from the :class:`~exporter.sinks.SinkBoard`) is probed with a call
its scopes must allow (:meth:`core.ado.Prober.probe`, which sends
``X-TFS-FedAuthRedirect: Suppress`` so a bad token is a 401, not a sign-in page). One
:class:`core.ado.Prober` per organization sends every probe over one connection pool, each
with the PAT it checks; it keeps no cookies, so one PAT's session never answers for another.

The same token often sits in several sinks (one Secret per cluster), so probes are keyed by
the token's fingerprint and cached for less than one validity interval: each distinct token is
probed once per cycle, however many sinks hold it.

A sink that holds nothing is 0. A probe that cannot run (ADO unreachable, throttled) says
nothing about the token: the sink keeps its last value and the source is marked down — it
never reports 0 for an outage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from core import ado, config
from core.ado import ProbeResult
from core.retry import Backoff
from core.secret import Secret
from exporter.fanout import Fanout
from exporter.sinks import SinkBoard
from exporter.source import SourceCollector

VALID = "patrol_pat_valid"

Prober = Callable[[config.Token, Secret], ProbeResult]
# A validity probe retries briefly: the next cycle is the real retry.
PROBE_BACKOFF = Backoff(delays=(0.5, 1.0))


class AdoProber:
    """The production :data:`Prober` of one organization: a :class:`core.ado.Prober` (one
    connection pool for every PAT it probes), closed with :meth:`close`."""

    def __init__(self, organization: config.Organization, *, backoff: Backoff = PROBE_BACKOFF,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._prober = ado.Prober(organization.url, vsrm_url=organization.vsrm_url, backoff=backoff,
                                  sleep=sleep)

    def __call__(self, token: config.Token, value: Secret) -> ProbeResult:
        project = token.pipeline.project if token.pipeline else None
        return self._prober.probe(value, token.scopes, project=project)

    def close(self) -> None:
        self._prober.close()


@dataclass(frozen=True)
class _Probe:
    token: config.Token
    value: Secret


class Validity(SourceCollector):
    """Source ``validity/<organization>``: probes every sink's token of the organization."""

    def __init__(self, organization: str, tokens: Sequence[config.Token], prober: Prober, *,
                 board: SinkBoard, fanout: Fanout, interval: float,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(f"validity/{organization}", interval, clock=clock, monotonic=monotonic)
        self.tokens = tuple(t for t in tokens if t.organization == organization)
        self._board = board
        self._prober = prober
        self._fanout = fanout
        self._cache: dict[tuple[str, tuple[str, ...], str | None], tuple[float, bool]] = {}
        self._cache_lock = threading.Lock()
        self._ttl = interval * 0.8            # always expired by the next cycle
        self._valid: Mapping[tuple[str, str], bool] = {}
        self.probes_made = 0

    @staticmethod
    def _key(token: config.Token, value: Secret) -> tuple[str, tuple[str, ...], str | None]:
        return (value.fingerprint, tuple(sorted(token.scopes)),
                token.pipeline.project if token.pipeline else None)

    def fetch(self) -> None:
        now = self._monotonic()
        wanted: dict[tuple[str, tuple[str, ...], str | None], _Probe] = {}
        with self._cache_lock:
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self._ttl}
            for token in self.tokens:
                for sink in token.sinks:
                    reading = self._board.get(sink.id)
                    if reading is None or reading.value is None:
                        continue
                    key = self._key(token, reading.value)
                    if key not in self._cache:
                        wanted.setdefault(key, _Probe(token, reading.value))
        keys = list(wanted)
        results = self._fanout.map(lambda k: self._prober(wanted[k].token, wanted[k].value), keys)
        errors: list[BaseException] = []
        with self._cache_lock:
            for key, result in zip(keys, results, strict=True):
                if result.value is not None:
                    self._cache[key] = (now, result.value.ok)
                    self.probes_made += 1
                elif result.error is not None:
                    errors.append(result.error)
            cache = dict(self._cache)
        valid = dict(self._valid)
        for token in self.tokens:
            for sink in token.sinks:
                reading = self._board.get(sink.id)
                if reading is None:
                    continue
                if reading.value is None:
                    valid[(token.name, sink.id)] = False
                    continue
                cached = cache.get(self._key(token, reading.value))
                if cached is not None:
                    valid[(token.name, sink.id)] = cached[1]
        self._valid = valid
        if errors:
            raise errors[0]

    def samples(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(VALID, "1 if the token the sink holds authenticates now",
                                   labels=["token", "sink"])
        for (token, sink), ok in sorted(self._valid.items()):
            family.add_metric([token, sink], 1.0 if ok else 0.0)
        return (family,)
