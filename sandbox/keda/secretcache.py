"""The Secrets KEDA reads, through an informer cache that lags the API server.

Guarantees: :meth:`LaggingSecretCache.get` answers what controller-runtime's cached client
(KEDA reads Secrets with ``mgr.GetClient()``) would answer: the version of the Secret that the
informer had received ``lag`` seconds ago, so a read right after a Secret changed can still
return the old value (or not find a Secret created a moment ago). Versions are timed on the
event loop's monotonic clock; ``lag=0`` reads the store directly.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sandbox.kube import SECRETS, ClusterState, ResourceType

JSON = dict[str, Any]
_KEEP = 16          # versions kept per Secret: far more than can change within one lag


class LaggingSecretCache:
    def __init__(self, cluster: ClusterState, lag: float) -> None:
        self.cluster = cluster
        self.lag = lag
        self._versions: dict[tuple[str, str], deque[tuple[float, JSON | None]]] = {}
        for obj in cluster.list_objects("v1", "secrets"):
            meta = obj["metadata"]
            self._versions[(meta["namespace"], meta["name"])] = deque([(float("-inf"), obj)], maxlen=_KEEP)
        self.unsubscribe: Callable[[], None] = cluster.subscribe(self._on_change)

    @staticmethod
    def _now() -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    def _on_change(self, type_: str, rt: ResourceType, obj: JSON) -> None:
        if rt is not SECRETS:
            return
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        versions = self._versions.setdefault(key, deque([(float("-inf"), None)], maxlen=_KEEP))
        versions.append((self._now(), None if type_ == "DELETED" else copy.deepcopy(obj)))

    def get(self, ns: str, name: str) -> JSON | None:
        if self.lag <= 0:
            return self.cluster.get_object("v1", "secrets", ns, name)
        versions = self._versions.get((ns, name))
        if not versions:
            return None
        seen_by = self._now() - self.lag
        current: JSON | None = None
        for at, obj in versions:
            if at > seen_by:
                break
            current = obj
        return copy.deepcopy(current) if current is not None else None
