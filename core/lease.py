"""A Kubernetes Lease lock, so two worker replicas never rotate the same token at once.

The ``kubernetes`` Python client ships only a ConfigMap lock (docs/external-apis.md), so this is the
coordination.k8s.io/v1 Lease protocol client-go uses, reduced to what patrol needs: read; create
if absent; if another identity holds it and it has not expired, give up; otherwise replace it
with the read ``resourceVersion`` as a precondition, so of two contenders exactly one wins (the
other gets 409 and gives up).

Expiry is judged as client-go's LeaderElector does (vendor/k8s.io/client-go/tools/leaderelection/
leaderelection.go in kedacore/keda v2.20.0: ``setObservedRecord``, ``isLeaseValid``): we remember
the last record we read and *our own monotonic time* when we first saw it; another holder's lease
has expired only when its record has not changed for ``leaseDurationSeconds`` on that clock. The
holder's ``renewTime`` is never compared with our wall clock, so a replica whose clock runs ahead
cannot take a live lease, and one whose clock lags does not wait longer. The price, as in
client-go: a process that starts while another holds the lease waits one full duration (it has
to watch the record stand still) before it may take it over. A released lease (no holder) is
free at once. The wall clock is used only for the times we write.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from core.errors import ConflictError, NotFoundError
from core.kube import KubeCluster, LeaseRecord

log = logging.getLogger("patrol.lease")


class LeaseLock:
    def __init__(self, kube: KubeCluster, namespace: str, name: str, identity: str, duration: timedelta,
                 *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not identity:
            raise ValueError("a lease identity must not be empty")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration_seconds = max(1, math.ceil(duration.total_seconds()))
        self._clock = clock
        self._monotonic = monotonic
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _observe(self, lease: LeaseRecord) -> None:
        """Remember the record and when (on our monotonic clock) it last changed."""
        record = (lease.holder, lease.renew_time, lease.duration_seconds, lease.acquire_time, lease.transitions)
        if record != self._observed:
            self._observed = record
            self._observed_at = self._monotonic()

    def _expired(self, lease: LeaseRecord) -> bool:
        """Whether ``lease`` (just observed) may be taken over: nobody holds it, or its record has
        stood unchanged for its duration on our own clock."""
        if not lease.holder:
            return True
        duration = lease.duration_seconds if lease.duration_seconds is not None else self.duration_seconds
        return self._monotonic() - self._observed_at >= duration

    def try_acquire_or_renew(self) -> bool:
        """True if this identity holds the lease now (acquired or renewed), else False."""
        now = self._now()
        lease = self.kube.read_lease(self.namespace, self.name)
        if lease is None:
            self._observed = None
            try:
                self.kube.create_lease(self.namespace, self.name, holder=self.identity,
                                       duration_seconds=self.duration_seconds,
                                       acquire_time=now, renew_time=now)
            except ConflictError:
                return False          # someone created it between our read and our create
            log.info("lease %s/%s acquired (created)", self.namespace, self.name,
                     extra={"identity": self.identity})
            return True
        self._observe(lease)
        ours = lease.holder == self.identity
        if not ours and not self._expired(lease):
            return False
        try:
            self.kube.replace_lease(
                self.namespace, self.name, resource_version=lease.resource_version, holder=self.identity,
                duration_seconds=self.duration_seconds,
                acquire_time=lease.acquire_time if ours and lease.acquire_time else now,
                renew_time=now,
                transitions=lease.transitions if ours else lease.transitions + 1)
        except (ConflictError, NotFoundError):
            return False              # another contender wrote first (409) or it was deleted
        if not ours:
            log.info("lease %s/%s acquired from %s", self.namespace, self.name, lease.holder or "nobody",
                     extra={"identity": self.identity})
        return True

    def release(self) -> None:
        """Give the lease up if we hold it, so another replica need not wait for expiry."""
        lease = self.kube.read_lease(self.namespace, self.name)
        if lease is None or lease.holder != self.identity:
            return
        now = self._now()
        try:
            self.kube.replace_lease(self.namespace, self.name, resource_version=lease.resource_version,
                                    holder=None, duration_seconds=1, acquire_time=now, renew_time=now,
                                    transitions=lease.transitions)
        except (ConflictError, NotFoundError):
            return                    # already taken over or gone: nothing to release
        log.info("lease %s/%s released", self.namespace, self.name, extra={"identity": self.identity})

    def holder(self) -> str | None:
        """Who holds the lease now: None if nobody, or if the holder let it expire."""
        lease = self.kube.read_lease(self.namespace, self.name)
        if lease is None:
            return None
        self._observe(lease)
        return None if self._expired(lease) else lease.holder
