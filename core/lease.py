"""A Kubernetes Lease lock, so two worker replicas never rotate the same token at once.

The ``kubernetes`` Python client ships only a ConfigMap lock (API-CONTRACTS §7), so this is the
coordination.k8s.io/v1 Lease protocol client-go uses, reduced to what patrol needs: read; create
if absent; if another identity holds it and it has not expired, give up; otherwise replace it
with the read ``resourceVersion`` as a precondition, so of two contenders exactly one wins (the
other gets 409 and gives up).

Expiry is judged from the Lease's own ``renewTime + leaseDurationSeconds`` against our clock,
which assumes the replicas' clocks agree to well within the lease duration (NTP). client-go
instead times how long the record stayed unchanged locally; with the short leases patrol uses
and synced nodes, the simpler rule is enough, and it lets a fresh process take over a dead
holder's lease at once instead of waiting one more duration.
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
                 *, clock: Callable[[], float] = time.time) -> None:
        if not identity:
            raise ValueError("a lease identity must not be empty")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration_seconds = max(1, math.ceil(duration.total_seconds()))
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _expired(self, lease: LeaseRecord, now: datetime) -> bool:
        if lease.holder is None or lease.renew_time is None:
            return True
        duration = lease.duration_seconds if lease.duration_seconds is not None else self.duration_seconds
        return lease.renew_time + timedelta(seconds=duration) <= now

    def try_acquire_or_renew(self) -> bool:
        """True if this identity holds the lease now (acquired or renewed), else False."""
        now = self._now()
        lease = self.kube.read_lease(self.namespace, self.name)
        if lease is None:
            try:
                self.kube.create_lease(self.namespace, self.name, holder=self.identity,
                                       duration_seconds=self.duration_seconds,
                                       acquire_time=now, renew_time=now)
            except ConflictError:
                return False          # someone created it between our read and our create
            log.info("lease %s/%s acquired (created)", self.namespace, self.name,
                     extra={"identity": self.identity})
            return True
        ours = lease.holder == self.identity
        if not ours and not self._expired(lease, now):
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
        if lease is None or self._expired(lease, self._now()):
            return None
        return lease.holder
