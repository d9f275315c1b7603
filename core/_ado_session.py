"""One HTTP exchange with Azure DevOps, translated into patrol's errors.

Both ADO clients (:mod:`core.ado`) send every request through :class:`AdoSession`, so the
things ADO gets wrong in surprising ways are handled once:

- ``X-TFS-FedAuthRedirect: Suppress`` on every request, and a 203 or any 2xx HTML body still
  read as "credential not accepted" (ADO answers a bad credential with a sign-in page unless
  told not to; docs/external-apis.md, "How Azure DevOps refuses a PAT").
- 401/403 carry their reason in the URL-encoded ``X-TFS-ServiceError`` header or a JSON
  ``message`` (``TF400813``, ``VS30063``); both go into the error, the credential never does.
- Rate limiting (docs/external-apis.md, "Builds, releases and rate limits"): 429 is a
  :class:`~core.errors.ThrottledError` carrying ``Retry-After``;
  a *successful* answer with ``Retry-After`` or ``X-RateLimit-Delay`` means "slow down", so the
  next request waits that long first (``throttle_until``).
- Transport failures become :class:`~core.errors.UnavailableError`, and
  :func:`core.retry.call_with_retry` retries the transient ones per the :class:`Backoff`.
- An Entra bearer token the service rejects (401, or the sign-in page) is dropped from its
  source (:class:`RenewableToken`, i.e. :class:`core.entra.TokenProvider`) and the call is sent
  once more with a newly acquired token; a second rejection is the source's credential error.
  Without this a token revoked server-side was reused until it expired (up to an hour of 401s).

``requests_made`` counts every attempt on the wire, retries included, for benchmarks.

The HTTP client is an :class:`AdoPool` (one httpx connection pool) and a credential rides on
each :class:`AdoSession` made from it, so many PATs can be sent over one pool (the exporter
probes every PAT it watches; one client per PAT cost a TLS context and a pool per probe). That
is safe only because the pool never keeps cookies: ADO may set a session cookie for one
identity, and a cookie jar would send it back beside another PAT's ``Authorization``. Every
httpx client patrol creates comes from :func:`http_client`, whose jar refuses every cookie.

Every such client verifies TLS with one context per process (:func:`tls_context`). httpx
builds a new ``SSLContext`` for each client, and building one loads the whole CA bundle
(~140 certificates, about 1 MB of OpenSSL allocations); the worker makes a client per saga step
that talks to ADO with the new PAT, so the soak built ~95 contexts in 10 minutes and left the
freed megabytes fragmenting malloc's heap: RSS rose for the first ~30 rotations, then held
(heaptrack of a live worker, docs/reliability.md). httpx's docs show the shared context
(``httpx.Client(verify=ctx)``, python-httpx.org/advanced/ssl); an ``SSLContext`` may be shared by
threads as long as nobody changes it after it is built, and nobody does.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import http.cookiejar
import json
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import replace
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

import httpx

from core.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PatrolError,
    ServerError,
    ThrottledError,
    UnauthorizedError,
    UnavailableError,
)
from core.logs import redact
from core.retry import Backoff, call_with_retry
from core.secret import Secret

log = logging.getLogger("patrol.ado")

# A hook that may turn a 4xx answer into a more specific error (the PAT API's patTokenError).
ErrorHook = Callable[[httpx.Response, str], PatrolError | None]
Params = Mapping[str, str | int | bool]

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
_DETAIL_LIMIT = 300


def _user_agent() -> str:
    try:
        version = metadata.version("ado-patrol")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        version = "0+unknown"
    return f"ado-patrol/{version}"


USER_AGENT = _user_agent()


@runtime_checkable
class RenewableToken(Protocol):
    """A bearer-token source that can be told a token was rejected (:class:`core.entra.TokenProvider`)."""

    def __call__(self) -> Secret: ...

    def reject(self, token: Secret) -> None:
        """Drop ``token`` so the next call acquires a new one."""

    def rejected_again(self, error: UnauthorizedError) -> PatrolError:
        """The error to raise when a newly acquired token is rejected too."""


# How ADO says "this credential is not accepted" (401, or a sign-in page/redirect: 203, 3xx).
_REJECTED = frozenset({401, 203, 301, 302, 303, 307, 308})


class NotSentError(UnavailableError):
    """The connection failed before the request left: safe to retry even a non-idempotent call."""


def _refuse_cookies() -> http.cookiejar.CookieJar:
    """A jar whose policy accepts no cookie from any domain, so none is ever sent back."""
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's one TLS context for ADO, exactly what httpx builds for ``verify=True``
    (``SSL_CERT_FILE``/``SSL_CERT_DIR`` if set, else certifi's bundle); built on first use."""
    return httpx.create_ssl_context()


def http_client(*, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """An httpx client for ADO that never stores (and so never sends) a cookie, verifying TLS
    with the shared :func:`tls_context`."""
    return httpx.Client(timeout=DEFAULT_TIMEOUT, transport=transport, cookies=_refuse_cookies(),
                        verify=tls_context())


class AdoPool:
    """One connection pool and what every credential sent over it shares.

    Shared: the request count, and ADO's "slow down" (``Retry-After``/``X-RateLimit-Delay`` on
    a success): ADO throttles per identity, and the PATs sent over one pool are the bot's.
    A pool made without ``client`` owns a cookie-refusing client from :func:`http_client` and
    closes it; a passed-in ``client`` is the caller's (and so are its cookies).
    """

    def __init__(
        self,
        *,
        service: str,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        backoff: Backoff,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        if client is not None and transport is not None:
            raise ValueError("pass client or transport, not both")
        self.service = service
        self._own_client = client is None
        self.client = client if client is not None else http_client(transport=transport)
        self.backoff = backoff
        self.sleep = sleep
        self.clock = clock
        self.lock = threading.Lock()
        self.requests_made = 0
        self.throttle_until = 0.0                 # clock() time before which no request is sent
        self.rate_limit_remaining: int | None = None

    def session(self, authorization: Callable[[], str]) -> AdoSession:
        """Send over this pool with ``authorization`` (called per request for the header)."""
        return AdoSession(self, authorization)

    def bearer_session(self, token: RenewableToken) -> AdoSession:
        """Send over this pool with ``Bearer`` tokens from ``token``, renewed once if rejected."""
        return AdoSession(self, lambda: "Bearer " + token().reveal(), bearer=token)

    def close(self) -> None:
        if self._own_client:
            self.client.close()


class AdoSession:
    """Sends requests with one credential scheme and turns answers into data or errors."""

    def __init__(self, pool: AdoPool, authorization: Callable[[], str], *,
                 bearer: RenewableToken | None = None) -> None:
        self.pool = pool
        self._authorization = authorization
        self._bearer = bearer
        self.service = pool.service

    # -- the one public verb -------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Params | None = None,
        body: Mapping[str, Any] | None = None,
        error_hook: ErrorHook | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """Send with retries; return a 2xx JSON-or-empty response or raise a PatrolError.

        A non-idempotent call (a PAT create) is retried only when the server surely did not act
        on it: a 429, or a connection that never opened. With a :class:`RenewableToken`, a
        rejected token is renewed and the call sent once more (a rejected call did nothing, so
        this holds for a create too).
        """
        backoff = self.pool.backoff
        if not idempotent:
            backoff = replace(backoff, retry_on=(ThrottledError, NotSentError))
        path = urllib.parse.urlsplit(url).path
        what = f"{self.service} {method} {path}"
        bearer = self._bearer
        sent: list[Secret] = []

        def authorization() -> str:
            if bearer is None:
                return self._authorization()
            token = bearer()
            sent[:] = [token]
            return "Bearer " + token.reveal()

        def attempt() -> httpx.Response:
            return call_with_retry(
                lambda: self._send_once(method, url, path=path, params=params, body=body,
                                        error_hook=error_hook, authorization=authorization),
                backoff, what=what, sleep=self.pool.sleep, logger=log)

        try:
            return attempt()
        except UnauthorizedError as exc:
            if bearer is None or exc.status not in _REJECTED or not sent:
                raise
            bearer.reject(sent[0])
        log.info("%s: the access token was rejected; retrying once with a new one", what,
                 extra={"service": self.service})
        try:
            return attempt()
        except UnauthorizedError as again:
            if again.status not in _REJECTED:
                raise
            bearer.reject(sent[0])          # not reused either: the next call acquires again
            raise bearer.rejected_again(again) from again

    # -- one attempt ---------------------------------------------------------------------------

    def _send_once(self, method: str, url: str, *, path: str, params: Params | None,
                   body: Mapping[str, Any] | None, error_hook: ErrorHook | None,
                   authorization: Callable[[], str]) -> httpx.Response:
        self._wait_for_throttle()
        headers = {
            "Accept": "application/json",
            "X-TFS-FedAuthRedirect": "Suppress",
            "User-Agent": USER_AGENT,
            "Authorization": authorization(),
        }
        what = f"{self.service} {method} {path}"
        pool = self.pool
        with pool.lock:
            pool.requests_made += 1
        started = time.perf_counter()
        try:
            response = pool.client.request(method, url, params=dict(params or {}), json=body,
                                            headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise NotSentError(self._safe(f"{what}: cannot connect: {type(exc).__name__}: {exc}"),
                               service=self.service) from exc
        except httpx.TimeoutException as exc:
            raise UnavailableError(self._safe(f"{what}: timed out: {type(exc).__name__}"),
                                   service=self.service) from exc
        except httpx.RequestError as exc:
            raise UnavailableError(self._safe(f"{what}: {type(exc).__name__}: {exc}"),
                                   service=self.service) from exc
        log.debug("%s -> %d in %.3fs", what, response.status_code, time.perf_counter() - started,
                  extra={"service": self.service, "status": response.status_code})
        self._note_rate_limit(response)
        self._check(response, what, error_hook)
        return response

    def _wait_for_throttle(self) -> None:
        wait = self.pool.throttle_until - self.pool.clock()
        if wait > 0:
            log.info("%s asked us to slow down; waiting %.2fs before the next request",
                     self.service, wait, extra={"service": self.service, "delay": wait})
            self.pool.sleep(wait)

    def _note_rate_limit(self, response: httpx.Response) -> None:
        pool = self.pool
        remaining = response.headers.get("X-RateLimit-Remaining")
        if remaining is not None:
            with contextlib.suppress(ValueError):
                pool.rate_limit_remaining = int(float(remaining))
        if not response.is_success:
            return                                # failures carry their delay in the error
        delays = [d for d in (_retry_after(response), _seconds(response.headers.get("X-RateLimit-Delay")))
                  if d is not None and d > 0]
        if delays:
            delay = min(max(delays), pool.backoff.max_delay)
            with pool.lock:
                pool.throttle_until = max(pool.throttle_until, pool.clock() + delay)

    # -- status → error ------------------------------------------------------------------------

    def _check(self, response: httpx.Response, what: str, error_hook: ErrorHook | None) -> None:
        status = response.status_code
        if status == 203 or (response.is_success and _is_html(response)):
            raise UnauthorizedError(
                f"{what}: HTTP {status} with a sign-in page: the credential was not accepted "
                "(expired, revoked or the wrong kind of token)", service=self.service, status=status)
        if response.is_success:
            return
        if response.is_redirect:
            location = urllib.parse.urlsplit(response.headers.get("Location", ""))
            raise UnauthorizedError(
                f"{what}: HTTP {status} redirect to {location.netloc}{location.path} "
                "(a sign-in redirect: the credential was not accepted)",
                service=self.service, status=status)
        detail = self._detail(response)
        message = f"{what}: HTTP {status}" + (f": {detail}" if detail else "")
        if status in (401, 403):
            raise UnauthorizedError(message, service=self.service, status=status)
        if status == 429:
            raise ThrottledError(message, service=self.service, status=status,
                                 delay=_retry_after(response))
        if 400 <= status < 500 and error_hook is not None:
            specific = error_hook(response, what)
            if specific is not None:
                raise specific
        if status == 404:
            raise NotFoundError(message, service=self.service, status=status)
        if status == 409:
            raise ConflictError(message, service=self.service, status=status)
        if 400 <= status < 500:
            raise BadRequestError(message, service=self.service, status=status)
        raise ServerError(message, service=self.service, status=status, delay=_retry_after(response))

    def _detail(self, response: httpx.Response) -> str:
        """Why ADO refused, from ``X-TFS-ServiceError`` or the JSON ``message``; never the body."""
        parts: list[str] = []
        header = response.headers.get("X-TFS-ServiceError")
        if header:
            parts.append(urllib.parse.unquote(header))
        doc = json_body(response)
        if isinstance(doc, Mapping):
            text = doc.get("message")
            if isinstance(text, str) and text and text not in parts:
                parts.append(text)
        return self._safe(" | ".join(parts)[:_DETAIL_LIMIT])

    def _safe(self, text: str) -> str:
        return redact(text)


def json_body(response: httpx.Response) -> Any:
    """The decoded JSON body, or None when it is empty or not JSON."""
    if not response.content:
        return None
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _is_html(response: httpx.Response) -> bool:
    return "html" in response.headers.get("Content-Type", "").lower()


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds: a number, or an HTTP date measured from the ``Date`` header."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
        date = response.headers.get("Date")
        now = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)
