"""patrol's Azure DevOps clients.

Two clients, because ADO has two kinds of caller, and a prober:

- :class:`PatLifecycleClient` talks to the PAT Lifecycle API on ``vssps`` with a *user's* Entra
  access token (a PAT cannot manage PATs, and service principals cannot either;
  docs/external-apis.md, "PAT Lifecycle API"). It lists, reads, creates, updates and revokes the bot account's PATs.
- :class:`AdoClient` reads the organization (agent pools, job queue, builds, releases) with a PAT
  (``Basic`` with an empty user name, exactly as KEDA sends it) or a bearer token, and probes
  whether a PAT still authenticates for each of its scopes.
- :class:`Prober` checks many PATs of one organization over one connection pool: the same
  probe as :meth:`AdoClient.probe`, each sent with the PAT it checks. The pool keeps no
  cookies, so no session cookie set for one PAT is ever sent with another.

All send every request through :class:`core._ado_session.AdoSession` (error translation,
``Retry-After``, retries) over a cookie-free :class:`core._ado_session.AdoPool`, and parse
answers with the pure functions of :mod:`core._ado_models`.
"""

from __future__ import annotations

import base64
import builtins
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx

from core._ado_models import (
    PAT_NOT_FOUND_CODES,
    Agent,
    Build,
    ConnectionData,
    CreatedPat,
    Deployment,
    JobRequest,
    PatInfo,
    Pool,
    ProbeResult,
    collection,
    format_ado_time,
    format_scopes,
    parse_ado_time,
    parse_agent,
    parse_build,
    parse_connection_data,
    parse_created_pat,
    parse_definition_id,
    parse_deployment,
    parse_job_request,
    parse_pat_page,
    parse_pat_result,
    parse_pool,
    parse_scopes,
    pat_token_error,
)
from core._ado_session import AdoPool, AdoSession, Params, RenewableToken, json_body
from core.errors import (
    NotFoundError,
    PatrolError,
    PermanentError,
    PolicyViolationError,
    ServerError,
)
from core.retry import Backoff
from core.secret import Secret

__all__ = [
    "AdoClient",
    "Agent",
    "Build",
    "ConnectionData",
    "CreatedPat",
    "Deployment",
    "JobRequest",
    "PatInfo",
    "PatLifecycleClient",
    "Pool",
    "ProbeResult",
    "Prober",
    "parse_ado_time",
    "parse_scopes",
]

log = logging.getLogger("patrol.ado")
T = TypeVar("T")

DisplayFilter = Literal["active", "revoked", "expired", "all"]
PAT_API_VERSION = "7.1-preview.1"
API_VERSION = "7.1"
# connectionData is in no REST spec; the SDKs call it with the location area's preview version.
CONNECTION_DATA_API_VERSION = "7.1-preview.1"
_MAX_PAGES = 1000
DEFAULT_BACKOFF = Backoff()


class _Client:
    """What every client shares: its pool's counters, closing, and reading answers."""

    _pool: AdoPool

    @property
    def requests_made(self) -> int:
        """Requests put on the wire so far, retries included."""
        return self._pool.requests_made

    @property
    def throttle_until(self) -> float:
        """``clock()`` time before which requests wait: ADO asked us to slow down (0 = never)."""
        return self._pool.throttle_until

    @property
    def rate_limit_remaining(self) -> int | None:
        """The last ``X-RateLimit-Remaining`` ADO sent (TSTUs left), if any."""
        return self._pool.rate_limit_remaining

    def close(self) -> None:
        """Close the HTTP client if this object created it (a passed-in client is the caller's)."""
        self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        doc = json_body(response)
        if doc is None:
            raise ServerError(f"{self._pool.service}: HTTP {response.status_code}: expected a JSON body",
                              service=self._pool.service, status=response.status_code)
        return doc

    def _malformed(self, response: httpx.Response, exc: ValueError) -> ServerError:
        return ServerError(f"{self._pool.service}: malformed answer to "
                           f"{response.request.method} {response.request.url.path}: {exc}",
                           service=self._pool.service, status=response.status_code)


# =============================================================================================
# PAT Lifecycle API


class PatLifecycleClient(_Client):
    """The PAT Lifecycle API (``{vssps_url}/_apis/tokens/pats``) with a user's Entra token.

    ``token_provider`` returns an access token for the Azure DevOps resource; it is called for
    every request so a refreshed token is picked up. A provider that can renew a rejected token
    (:class:`core._ado_session.RenewableToken`, e.g. :class:`core.entra.TokenProvider`) is told
    of a 401 and the call is sent once more with a new token. ``client`` (the caller's, closed by the
    caller) or ``transport`` (for tests) replace the cookie-free client made here. A
    ``patTokenError`` other than ``none``
    raises :class:`~core.errors.PolicyViolationError` with that code, whether ADO sent it with
    HTTP 200 or with a 4xx (which one it uses is unsettled; docs/external-apis.md, "Not settled").
    """

    def __init__(
        self,
        vssps_url: str,
        token_provider: Callable[[], Secret],
        *,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        api_version: str = PAT_API_VERSION,
    ) -> None:
        self._url = vssps_url.rstrip("/") + "/_apis/tokens/pats"
        self._api_version = api_version
        self._pool = AdoPool(service="ado-pats", client=client, transport=transport, backoff=backoff,
                             sleep=sleep, clock=clock)
        if isinstance(token_provider, RenewableToken):
            self._session = self._pool.bearer_session(token_provider)
        else:
            self._session = self._pool.session(lambda: "Bearer " + token_provider().reveal())

    def list(self, display_filter: DisplayFilter = "active", *,
             name_prefix: str | None = None) -> builtins.list[PatInfo]:
        """Every PAT of the signed-in user matching the filter, following continuation tokens.

        Each page repeats the same filter options, as the API asks. ``name_prefix`` filters on
        the display name here, client-side (the API has no such filter).
        """
        pats: builtins.list[PatInfo] = []
        seen: set[str] = set()
        token: str | None = None
        for _ in range(_MAX_PAGES):
            params: dict[str, str | int | bool] = {"displayFilterOption": display_filter,
                                                   "api-version": self._api_version}
            if token:
                params["continuationToken"] = token
            response = self._pat_call("GET", params=params)
            doc = self._json(response)
            self._raise_pat_error(doc, response)
            try:
                page, token = parse_pat_page(doc)
            except ValueError as exc:
                raise self._malformed(response, exc) from exc
            pats.extend(page)
            if not token:
                break
            if token in seen:
                raise ServerError(f"ado-pats: continuation token repeated after {len(seen)} pages",
                                  service="ado-pats", status=response.status_code)
            seen.add(token)
        else:
            raise ServerError(f"ado-pats: more than {_MAX_PAGES} pages of PATs", service="ado-pats")
        if name_prefix is not None:
            pats = [p for p in pats if p.display_name.startswith(name_prefix)]
        return pats

    def get(self, authorization_id: str) -> PatInfo:
        """One PAT by id. A missing id raises NotFoundError (HTTP 404) or
        PolicyViolationError(code="authorizationNotFound"), depending on how ADO says it."""
        response = self._pat_call("GET", params={"authorizationId": authorization_id,
                                                 "api-version": self._api_version})
        return self._pat_result(response)

    def create(self, display_name: str, scopes: Sequence[str], valid_to: datetime, *,
               all_orgs: bool = False) -> CreatedPat:
        """Create a PAT. Read back ``info.valid_to``: an org policy may have clamped it.

        Not idempotent, so it is retried only when ADO surely did not act (429, or no
        connection); after any other failure, look for the display name with :meth:`list`.
        """
        body = {"displayName": display_name, "scope": format_scopes(list(scopes)),
                "validTo": format_ado_time(valid_to), "allOrgs": all_orgs}
        response = self._pat_call("POST", body=body, idempotent=False)
        doc = self._json(response)
        self._raise_pat_error(doc, response)
        try:
            return parse_created_pat(doc)
        except ValueError as exc:
            raise self._malformed(response, exc) from exc

    def update(self, authorization_id: str, *, display_name: str | None = None,
               scopes: Sequence[str] | None = None, valid_to: datetime | None = None) -> PatInfo:
        """Change a PAT's metadata; its token value stays the same (there is no regenerate)."""
        body: dict[str, Any] = {"authorizationId": authorization_id}
        if display_name is not None:
            body["displayName"] = display_name
        if scopes is not None:
            body["scope"] = format_scopes(list(scopes))
        if valid_to is not None:
            body["validTo"] = format_ado_time(valid_to)
        response = self._pat_call("PUT", body=body)
        return self._pat_result(response)

    def revoke(self, authorization_id: str) -> None:
        """Revoke a PAT. Idempotent: a PAT ADO does not know is already revoked."""
        try:
            response = self._pat_call("DELETE", params={"authorizationId": authorization_id,
                                                        "api-version": self._api_version})
            self._raise_pat_error(json_body(response), response)
        except NotFoundError:
            log.info("PAT %s not found: already revoked", authorization_id,
                     extra={"authorization_id": authorization_id})
        except PolicyViolationError as exc:
            if exc.code not in PAT_NOT_FOUND_CODES:
                raise
            log.info("PAT %s not found (%s): already revoked", authorization_id, exc.code,
                     extra={"authorization_id": authorization_id})

    # -- plumbing ------------------------------------------------------------------------------

    def _pat_call(self, method: str, *, params: Params | None = None,
                  body: dict[str, Any] | None = None, idempotent: bool = True) -> httpx.Response:
        if params is None:
            params = {"api-version": self._api_version}
        return self._session.request(method, self._url, params=params, body=body,
                                     error_hook=self._error_from_body, idempotent=idempotent)

    def _error_from_body(self, response: httpx.Response, what: str) -> PatrolError | None:
        code = pat_token_error(json_body(response))
        if code is None:
            return None
        return PolicyViolationError(f"{what}: HTTP {response.status_code}: patTokenError={code}",
                                    code=code, service="ado-pats", status=response.status_code)

    def _raise_pat_error(self, doc: Any, response: httpx.Response) -> None:
        code = pat_token_error(doc)
        if code is not None:
            raise PolicyViolationError(
                f"ado-pats {response.request.method} {response.request.url.path}: "
                f"HTTP {response.status_code}: patTokenError={code}",
                code=code, service="ado-pats", status=response.status_code)

    def _pat_result(self, response: httpx.Response) -> PatInfo:
        doc = self._json(response)
        self._raise_pat_error(doc, response)
        try:
            return parse_pat_result(doc)
        except ValueError as exc:
            raise self._malformed(response, exc) from exc


# =============================================================================================
# Organization reads and token probes


def _authorization(credential: Secret | Callable[[], Secret],
                   auth: Literal["pat", "bearer"]) -> Callable[[], str]:
    """The ``Authorization`` header for a credential, built per request (never stored)."""
    provider: Callable[[], Secret] = credential if callable(credential) else (lambda: credential)

    def header() -> str:
        value = provider().reveal()
        if auth == "bearer":
            return "Bearer " + value
        value = value.removesuffix("\n")
        return "Basic " + base64.b64encode(b":" + value.encode()).decode("ascii")

    return header


class _Organization(_Client):
    """Every read of an organization and the token probe, over whatever session it is given.

    :class:`AdoClient` is this with its own pool and credential; :class:`Prober` makes one per
    probe, over its shared pool, with the PAT being probed.
    """

    def __init__(self, organization_url: str, session: AdoSession, *, vsrm_url: str | None,
                 api_version: str) -> None:
        self._url = organization_url.rstrip("/")
        self._vsrm_url = (vsrm_url or _derive_vsrm_url(self._url) or "").rstrip("/") or None
        self._api_version = api_version
        self._pool = session.pool
        self._session = session

    # -- agent pools ---------------------------------------------------------------------------

    def find_pool(self, name: str) -> Pool:
        """The agent pool called ``name``; NotFoundError if none, PermanentError if several."""
        pools = [parse_pool(p) for p in self._list(f"{self._url}/_apis/distributedtask/pools",
                                                   {"poolName": name}, "pools")]
        if len(pools) > 1:
            exact = [p for p in pools if p.name == name]
            pools = exact if len(exact) == 1 else pools
        if not pools:
            raise NotFoundError(f"ado: agent pool {name!r} not found", service="ado")
        if len(pools) > 1:
            raise PermanentError(f"ado: found {len(pools)} agent pools named {name!r}")
        return pools[0]

    def list_agents(self, pool_id: int) -> builtins.list[Agent]:
        url = f"{self._url}/_apis/distributedtask/pools/{int(pool_id)}/agents"
        return self._parsed(url, {"includeAssignedRequest": "true"}, "agents", parse_agent)

    def list_job_requests(self, pool_id: int, *, top: int = 250) -> builtins.list[JobRequest]:
        """The pool's job requests exactly as KEDA polls them: ``jobrequests?$top=N``.

        Undocumented endpoint (no swagger, no released api-version), so no ``api-version`` is
        sent: KEDA's request is the shape known to work, and ``$top`` alone already changes
        the answer's format (KEDA issue #4387). Count waiting jobs with ``JobRequest.is_queued``.
        """
        url = f"{self._url}/_apis/distributedtask/pools/{int(pool_id)}/jobrequests"
        response = self._session.request("GET", url, params={"$top": int(top)})
        return self._parse_list(response, "jobrequests", parse_job_request)

    # -- builds and releases -------------------------------------------------------------------

    def find_build_definition(self, project: str, name_or_id: str | int) -> int:
        """A build definition's id: a number is taken as the id; a name is looked up."""
        if isinstance(name_or_id, int) or name_or_id.strip().isdigit():
            return int(name_or_id)
        url = f"{self._project_url(self._url, project)}/_apis/build/definitions"
        ids = self._parsed(url, {"name": name_or_id}, "definitions", parse_definition_id)
        if not ids:
            raise NotFoundError(f"ado: build definition {name_or_id!r} not found in {project!r}",
                                service="ado")
        if len(ids) > 1:
            raise PermanentError(f"ado: found {len(ids)} build definitions named {name_or_id!r} in "
                                 f"{project!r}; configure the definition id instead")
        return ids[0]

    def latest_builds(self, project: str, definition_id: int, *, top: int = 1,
                      result_filter: str | None = None) -> builtins.list[Build]:
        """The most recently finished completed builds of a definition, newest first."""
        params: dict[str, str | int | bool] = {
            "definitions": str(int(definition_id)), "$top": int(top),
            "queryOrder": "finishTimeDescending", "statusFilter": "completed"}
        if result_filter is not None:
            params["resultFilter"] = result_filter
        url = f"{self._project_url(self._url, project)}/_apis/build/builds"
        return self._parsed(url, params, "builds", parse_build)

    def running_builds(self, project: str, definition_id: int, *, top: int = 100) -> builtins.list[Build]:
        """Runs of a definition in progress now (``statusFilter=inProgress``): a run that started
        before a Key Vault secret changed keeps the value it fetched until it ends."""
        params: dict[str, str | int | bool] = {
            "definitions": str(int(definition_id)), "$top": int(top), "statusFilter": "inProgress"}
        url = f"{self._project_url(self._url, project)}/_apis/build/builds"
        return self._parsed(url, params, "builds", parse_build)

    def latest_release_deployments(self, project: str, definition_id: int | None = None,
                                   top: int = 1) -> builtins.list[Deployment]:
        """The newest classic-release deployments (vsrm), optionally of one definition."""
        params: dict[str, str | int | bool] = {"$top": int(top), "queryOrder": "descending"}
        if definition_id is not None:
            params["definitionId"] = int(definition_id)
        url = f"{self._project_url(self._require_vsrm(), project)}/_apis/release/deployments"
        return self._parsed(url, params, "deployments", parse_deployment)

    # -- identity and probes -------------------------------------------------------------------

    def connection_data(self) -> ConnectionData:
        """Who the credential authenticates as (``_apis/connectionData``, as the agent calls it)."""
        response = self._session.request(
            "GET", f"{self._url}/_apis/connectionData",
            params={"connectOptions": "1", "lastChangeId": "-1", "lastChangeId64": "-1",
                    "api-version": CONNECTION_DATA_API_VERSION})
        doc = self._json(response)
        try:
            return parse_connection_data(doc)
        except ValueError as exc:
            raise self._malformed(response, exc) from exc

    def probe(self, scopes: str | Iterable[str], *, project: str | None = None) -> ProbeResult:
        """Whether the credential authenticates, scope by scope, with a call each scope allows.

        - ``vso.agentpools*`` → ``distributedtask/pools?$top=1`` (read; ``_manage`` cannot be
          told apart from read without a write, which a probe must not make).
        - ``vso.build*`` → ``{project}/_apis/build/builds?$top=1``;
          ``vso.release*`` → vsrm ``{project}/_apis/release/releases?$top=1``. Both need
          ``project``; without it they fall back as below.
        - ``vso.pipelineresources_use`` (and any other scope) has no read-only call: it is marked
          UNVERIFIED, and True means only that the token authenticates at all — taken from
          another scope's successful call in this probe, else from ``connectionData``.

        A 401/403/203 (or a 404 on the probed resource) marks a scope False. Transient errors
        (5xx, timeouts, 429 after retries) propagate: an unreachable ADO says nothing about
        the token.
        """
        wanted = parse_scopes(scopes) if isinstance(scopes, str) else tuple(scopes)
        results: dict[str, bool] = {}
        notes: dict[str, str] = {}
        unverified: builtins.list[str] = []
        calls: dict[str, tuple[bool, str]] = {}

        def attempt(key: str, call: Callable[[], object]) -> tuple[bool, str]:
            if key not in calls:
                try:
                    call()
                    calls[key] = (True, "ok")
                except PermanentError as exc:       # unauthorized, not found, ...
                    calls[key] = (False, str(exc))
            return calls[key]

        for scope in wanted:
            check = self._probe_call(scope, project)
            if check is None:
                continue
            key, call = check
            ok, note = attempt(key, call)
            results[scope], notes[scope] = ok, f"{note} ({key})"
        for scope in wanted:
            if scope in results:
                continue
            unverified.append(scope)
            evidence = next((k for k, (ok, _) in calls.items() if ok), None)
            if evidence is not None:
                results[scope] = True
                notes[scope] = ("UNVERIFIED: no read-only call for this scope; "
                                f"token authenticates ({evidence})")
                continue
            ok, note = attempt("connectionData", self.connection_data)
            results[scope] = ok
            notes[scope] = f"UNVERIFIED: no read-only call for this scope; {note} (connectionData)"
        detail = "; ".join(f"{scope}: {notes[scope]}" for scope in wanted)
        return ProbeResult(ok=bool(results) and all(results.values()), scopes=results, detail=detail,
                           unverified=tuple(unverified))

    def _probe_call(self, scope: str, project: str | None) -> tuple[str, Callable[[], object]] | None:
        if scope.startswith("vso.agentpools"):
            url = f"{self._url}/_apis/distributedtask/pools"
            return "pools", lambda: self._list(url, {"$top": 1}, "pools")
        if scope.startswith("vso.build") and project:
            url = f"{self._project_url(self._url, project)}/_apis/build/builds"
            return "builds", lambda: self._list(url, {"$top": 1}, "builds")
        if scope.startswith("vso.release") and project and self._vsrm_url:
            url = f"{self._project_url(self._vsrm_url, project)}/_apis/release/releases"
            return "releases", lambda: self._list(url, {"$top": 1}, "releases")
        return None

    # -- plumbing ------------------------------------------------------------------------------

    def _list(self, url: str, params: Params, what: str) -> builtins.list[Any]:
        response = self._session.request("GET", url, params={**params, "api-version": self._api_version})
        try:
            return collection(self._json(response), what)
        except ValueError as exc:
            raise self._malformed(response, exc) from exc

    def _parsed(self, url: str, params: Params, what: str,
                   parse: Callable[[object], T]) -> builtins.list[T]:
        response = self._session.request("GET", url, params={**params, "api-version": self._api_version})
        return self._parse_list(response, what, parse)

    def _parse_list(self, response: httpx.Response, what: str,
                       parse: Callable[[object], T]) -> builtins.list[T]:
        try:
            return [parse(item) for item in collection(self._json(response), what)]
        except ValueError as exc:
            raise self._malformed(response, exc) from exc

    def _require_vsrm(self) -> str:
        if self._vsrm_url is None:
            raise ValueError("vsrm_url is not set and cannot be derived from the organization URL")
        return self._vsrm_url

    @staticmethod
    def _project_url(base: str, project: str) -> str:
        return f"{base}/{urllib.parse.quote(project, safe='')}"


class AdoClient(_Organization):
    """Reads an organization (``https://dev.azure.com/{org}``) with a PAT or a bearer token.

    ``credential`` is a :class:`Secret` or a callable returning one (called per request).
    ``auth="pat"`` sends ``Authorization: Basic base64(":" + pat)`` — an empty user name and a
    trailing newline trimmed, as KEDA does — and ``auth="bearer"`` an Entra access token.
    Classic-release calls go to ``vsrm_url``, derived from a ``dev.azure.com`` or
    ``visualstudio.com`` URL when not given. ``client`` (the caller's, closed by the caller) or
    ``transport`` (for tests) replace the cookie-free client made here.
    """

    def __init__(
        self,
        organization_url: str,
        credential: Secret | Callable[[], Secret],
        *,
        auth: Literal["pat", "bearer"] = "pat",
        vsrm_url: str | None = None,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        api_version: str = API_VERSION,
    ) -> None:
        pool = AdoPool(service="ado", client=client, transport=transport, backoff=backoff,
                       sleep=sleep, clock=clock)
        if auth == "bearer" and isinstance(credential, RenewableToken):
            session = pool.bearer_session(credential)
        else:
            session = pool.session(_authorization(credential, auth))
        super().__init__(organization_url, session,
                         vsrm_url=vsrm_url, api_version=api_version)


class Prober(_Client):
    """Probes many PATs of one organization over one connection pool (thread-safe).

    :meth:`probe` is :meth:`AdoClient.probe` sent with the PAT it checks: same calls, same
    result. What one client per PAT would each hold is shared instead: the connection pool
    (and its TLS setup), the request count, and ADO's "slow down" (ADO throttles per identity,
    and every PAT probed here is the bot's). The pool refuses cookies, so a session cookie
    ADO sets while one PAT is probed can never ride along with another PAT.
    """

    def __init__(
        self,
        organization_url: str,
        *,
        vsrm_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        api_version: str = API_VERSION,
    ) -> None:
        self._url = organization_url
        self._vsrm_url = vsrm_url
        self._api_version = api_version
        self._pool = AdoPool(service="ado", transport=transport, backoff=backoff, sleep=sleep, clock=clock)

    def probe(self, token: Secret, scopes: str | Iterable[str], *,
              project: str | None = None) -> ProbeResult:
        """Whether ``token`` (a PAT) authenticates for each scope: see :meth:`AdoClient.probe`."""
        organization = _Organization(self._url, self._pool.session(_authorization(token, "pat")),
                                     vsrm_url=self._vsrm_url, api_version=self._api_version)
        return organization.probe(scopes, project=project)


def _derive_vsrm_url(organization_url: str) -> str | None:
    """``https://dev.azure.com/org`` → ``https://vsrm.dev.azure.com/org`` (and the old host form)."""
    parts = urllib.parse.urlsplit(organization_url)
    host = parts.hostname or ""
    if host == "dev.azure.com":
        return urllib.parse.urlunsplit(parts._replace(netloc="vsrm.dev.azure.com"))
    if host.endswith(".visualstudio.com") and ".vsrm." not in host:
        org = host.removesuffix(".visualstudio.com")
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{org}.vsrm.visualstudio.com"))
    return None
