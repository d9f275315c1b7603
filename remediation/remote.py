"""The worker's rotate-now API seen from a client: what ``patrol rotate`` uses when a worker
holds the Lease.

Guarantees: the bearer is sent only in the ``Authorization`` header and never appears in an
answer, an exception or a log line; every failure (unreachable, refused, an unexpected body)
becomes a :class:`WorkerAnswer` or a :class:`core.errors.UnavailableError` whose message names
the URL and what to check, never a traceback. A 503 (this replica is a standby, or shutting
down) is retried (eight times, a second apart) on a new connection each time: behind the worker's Service both
replicas are endpoints, so a retry can reach the Lease holder (a 503 names it, for
``kubectl port-forward pod/<leader>``).

Plain ``urllib`` (stdlib): the rest of the remediation layer may not import HTTP clients, and
two small JSON calls need no session.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from core.errors import UnavailableError
from core.secret import Secret

ROTATIONS_PATH = "/rotations"
# Each retry opens a new connection, which the Service sends to either replica: 8 retries
# leave a 1-in-512 chance of never reaching the leader of two.
UNAVAILABLE_RETRIES = 8


@dataclass(frozen=True)
class WorkerAnswer:
    """One HTTP answer of the worker: its status and JSON body (``{}`` when it had none)."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return str(self.body.get("reason") or f"HTTP {self.status}")


class WorkerClient:
    """``POST /rotations`` and ``GET /rotations/{id}`` against one worker URL."""

    def __init__(self, url: str, bearer: Secret, *, timeout: float = 10.0,
                 retry_delay: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self._bearer = bearer
        self._timeout = timeout
        self._retry_delay = retry_delay
        self._sleep = sleep

    def start(self, token: str, *, reason: str, compromised: bool = False,
              force: bool = False) -> WorkerAnswer:
        """Ask the worker to rotate ``token`` now; retried while replicas answer 503."""
        doc = {"token": token, "reason": reason, "compromised": compromised, "force": force}
        answer = self._call("POST", ROTATIONS_PATH, doc)
        for _ in range(UNAVAILABLE_RETRIES):
            if answer.status != 503:
                break
            self._sleep(self._retry_delay)
            answer = self._call("POST", ROTATIONS_PATH, doc)
        return answer

    def rotation(self, rotation_id: str) -> WorkerAnswer:
        """The worker's journal record of one rotation; retried while replicas answer 503 (a
        standby that does not know it), so 404 means the leader does not know it either."""
        answer = self._call("GET", f"{ROTATIONS_PATH}/{rotation_id}", None)
        for _ in range(UNAVAILABLE_RETRIES):
            if answer.status != 503:
                break
            self._sleep(self._retry_delay)
            answer = self._call("GET", f"{ROTATIONS_PATH}/{rotation_id}", None)
        return answer

    def _call(self, method: str, path: str, doc: dict[str, Any] | None) -> WorkerAnswer:
        data = json.dumps(doc).encode() if doc is not None else None
        headers = {"Authorization": f"Bearer {self._bearer.reveal()}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        # http(s) only: checked in __init__
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                return WorkerAnswer(response.status, _json(response.read()))
        except urllib.error.HTTPError as exc:
            with exc:
                return WorkerAnswer(exc.code, _json(exc.read()))
        except (urllib.error.URLError, OSError) as exc:
            why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise UnavailableError(
                f"cannot reach the worker at {self.url} ({why}); check worker.url / --worker-url / "
                "PATROL_WORKER_URL, or reach the Lease holder with kubectl port-forward",
                service="patrol-worker") from None


def _json(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError):
        return {"reason": "the worker answered something that is not JSON (is this URL a patrol worker?)"}
    return doc if isinstance(doc, dict) else {"reason": "the worker answered an unexpected JSON document"}
