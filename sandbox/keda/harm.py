"""What KEDA and its agents suffered: the ``harm`` counters of ``GET /state``.

Guarantees: counters only go up, from the sandbox's start, and each counts one observable
event of the simulated world (never an inference): ``builds_interrupted`` — an agent Job
deleted while its agent ran a build; ``agent_unregister_failures`` — an agent pod killed
(``activeDeadlineSeconds``) before it could unregister, leaving an offline agent in the pool;
``keda_failed_polls`` — a KEDA poll that still failed after KEDA's own refresh-and-retry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class KedaHarm:
    builds_interrupted: int = 0
    agent_unregister_failures: int = 0
    keda_failed_polls: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
