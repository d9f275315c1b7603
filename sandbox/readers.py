"""Key Vault readers: how the things that read the daily-checks PAT out of Key Vault really do it.

Guarantees: a reader uses a value exactly as Key Vault holds it (nothing stripped, as the real
tools pass it on); what it holds is reported by sha256 fingerprint only, never the value; every
ADO call a reader makes is real HTTP against the sandbox's ADO.

Two real readers, because they fail differently when a PAT is rotated under them:

* **The ``AzureKeyVault`` pipeline task** (microsoft/azure-pipelines-tasks,
  ``Tasks/AzureKeyVaultV2/operations/KeyVault.ts``): lists the vault's secrets, drops those whose
  current version is disabled or expired (``filterDisabledAndExpiredSecrets``: ``enabled &&
  (!expires || expires > now)``), then GETs each remaining secret's value and sets it as a job
  variable as-is. It reads once, at the start of the job; the job uses that value to the end.
  :func:`read_like_azure_keyvault_task` is that read; :mod:`sandbox.pipeline` is the job.
* **An External-Secrets-style reader** (external-secrets.io, ``ExternalSecret.spec.refreshInterval``):
  GETs the latest version every refresh interval and keeps serving the value it last fetched
  until the next refresh; a failed fetch (a disabled latest version answers 403) keeps the old
  value. :class:`SecretReader` models it with a consumer that calls ADO with the held value
  every ``call_interval`` seconds and counts each call refused because that value no longer
  authenticates (``secret_reader_failures``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import aiohttp

log = logging.getLogger("sandbox.readers")

# Statuses with which ADO refuses a credential: 401, 403, and a 2xx sign-in page (203).
AUTH_REFUSED = frozenset({401, 203, 403})


class SecretSourceLike(Protocol):
    """What a reader needs from ``sandbox.keyvault.KeyVaultStore``: the latest version's bundle
    (``value`` and ``attributes`` as GET returns them), None if the secret is absent or deleted."""

    def latest(self, name: str) -> dict[str, Any] | None: ...


def fingerprint(value: str) -> str:
    """What /state shows of a held value: sha256[:8]."""
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def read_like_azure_keyvault_task(kv: SecretSourceLike, name: str, now: float) -> str | None:
    """The value the ``AzureKeyVault`` task would give a job now; None where it sets no variable.

    The task filters on the list item, whose attributes are the current version's: a disabled or
    expired current version means the secret is skipped (no older version is tried), and an
    empty value sets nothing (``setVaultVariable`` returns on a falsy value)."""
    bundle = kv.latest(name)
    if bundle is None:
        return None
    attributes = bundle.get("attributes") or {}
    if not attributes.get("enabled", True):
        return None
    expires = attributes.get("exp")
    if expires is not None and not float(expires) > now:
        return None
    value = bundle.get("value")
    return value if isinstance(value, str) and value else None


def basic_auth(pat: str) -> str:
    """``Authorization: Basic base64(":" + PAT)``, as the ADO docs show for PATs."""
    return "Basic " + base64.b64encode(f":{pat}".encode()).decode()


@dataclass(frozen=True)
class AdoAnswer:
    status: int | None          # None: no HTTP answer (transport error)
    error: str | None = None    # set when the call failed, worded for /state

    @property
    def auth_refused(self) -> bool:
        return self.status in AUTH_REFUSED


async def ado_get(session: aiohttp.ClientSession, url: str, pat: str, user_agent: str,
                  *, expect_list: bool = True) -> AdoAnswer:
    """One GET with a PAT, as a script's ``Invoke-RestMethod`` makes it (redirect suppressed).

    Success is a 200 with a JSON body (holding ``value`` when ``expect_list``); anything else is
    an :class:`AdoAnswer` with the error."""
    headers = {"Authorization": basic_auth(pat), "X-TFS-FedAuthRedirect": "Suppress",
               "Accept": "application/json", "User-Agent": user_agent}
    where = url.split("?", 1)[0]
    try:
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return AdoAnswer(None, f"GET {where} failed: {type(exc).__name__}")
    if status != 200:
        return AdoAnswer(status, f"GET {where} returned HTTP {status}")
    try:
        doc = json.loads(body)
    except ValueError:
        return AdoAnswer(status, f"GET {where} returned no JSON")
    if expect_list and not (isinstance(doc, dict) and "value" in doc):
        return AdoAnswer(status, f"GET {where} returned no JSON list")
    return AdoAnswer(status)


@dataclass(frozen=True)
class ReaderSpec:
    """An External-Secrets-style reader of one Key Vault secret and the consumer using it."""

    refresh: float                          # seconds between fetches (ExternalSecret refreshInterval)
    secret: str = "azure-devops-token"
    call_interval: float = 2.0              # seconds between the consumer's ADO calls


@dataclass
class ReaderStats:
    refreshes: int = 0
    refresh_failures: int = 0               # fetches that kept the old value (absent, disabled)
    calls: int = 0
    failures: int = 0                       # calls refused because the held value no longer authenticates
    last_error: str | None = None
    token_fingerprint: str | None = None
    last_refresh: float | None = None


class SecretReader:
    """Holds what it fetched from Key Vault until its next refresh, and calls ADO with it."""

    USER_AGENT = "external-secrets-consumer/1.0"

    def __init__(self, spec: ReaderSpec, *, kv: SecretSourceLike, ado_base_url: str,
                 session: Callable[[], aiohttp.ClientSession],
                 clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.kv = kv
        self.ado_base_url = ado_base_url.rstrip("/")
        self.session = session
        self.clock = clock
        self.stats = ReaderStats()
        self._held: str | None = None

    def refresh(self) -> None:
        """One fetch: GET the latest version; a disabled or missing one keeps what is held."""
        bundle = self.kv.latest(self.spec.secret)
        value = bundle.get("value") if bundle is not None else None
        enabled = bundle is not None and (bundle.get("attributes") or {}).get("enabled", True)
        self.stats.last_refresh = self.clock()
        if not enabled or not isinstance(value, str):
            self.stats.refresh_failures += 1
            self.stats.last_error = f"Key Vault secret {self.spec.secret!r} not readable; keeping the held value"
            return
        self._held = value
        self.stats.refreshes += 1
        self.stats.token_fingerprint = fingerprint(value)

    async def call(self) -> AdoAnswer | None:
        """One ADO call with the held value (None if nothing is held yet)."""
        if self._held is None:
            return None
        answer = await ado_get(self.session(), f"{self.ado_base_url}/_apis/connectionData", self._held,
                               self.USER_AGENT, expect_list=False)
        self.stats.calls += 1
        if answer.auth_refused:
            self.stats.failures += 1
        if answer.error is not None:
            self.stats.last_error = answer.error
        return answer

    async def run(self) -> None:
        """Refresh every ``refresh`` seconds; call ADO every ``call_interval`` seconds between."""
        loop = asyncio.get_running_loop()
        next_refresh = next_call = loop.time()
        while True:
            now = loop.time()
            if now >= next_refresh:
                self.refresh()
                next_refresh = now + self.spec.refresh
            if now >= next_call:
                next_call = now + self.spec.call_interval
                try:
                    await self.call()
                except Exception:  # a broken consumer must not take the simulation down
                    log.exception("key vault reader call failed")
            await asyncio.sleep(max(0.0, min(next_refresh, next_call) - loop.time()))

    def snapshot(self) -> dict[str, Any]:
        return {**asdict(self.stats), "refresh_interval": self.spec.refresh, "secret": self.spec.secret}
