"""A Microsoft Entra (identity platform v2.0) authority, faithful enough for unpatched MSAL.

patrol can only rotate PATs with a *user-delegated* Entra token (docs/external-apis.md), obtained by
azure-identity/MSAL through the password grant, the device-code flow, or silently through a
cached refresh token; and it reads Key Vault as its own app (client credentials). This module
simulates the authority those real clients talk to: per-tenant OpenID discovery, user-realm
discovery, the v2.0 token and device-code endpoints, with the response fields and error shapes
(``AADSTS…`` codes) MSAL relies on (docs/external-apis.md, "Entra sign-in as the bot"). Access tokens are
unsigned JWT-shaped strings with a random tail; only this module's table makes them valid, and other sandbox services
(ADO, Key Vault) ask :meth:`Entra.principal_for` who holds one.

State is plain data mutated on the sandbox's single event loop; time comes from the injected clock.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from sandbox.tenant import USER_KINDS, FailureKind, Grant, TenantConditions, TenantError

log = logging.getLogger("sandbox.entra")

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
MULTI_TENANT_ALIASES = frozenset({"organizations", "common"})
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ23456789"


@dataclass(frozen=True)
class Principal:
    """Who an access token was issued to, and for which resource."""

    oid: str
    tenant_id: str
    kind: Literal["user", "app"]
    upn: str | None
    audience: str


@dataclass
class _User:
    oid: str
    username: str
    password: str
    enabled: bool = True


@dataclass
class _Client:
    client_id: str
    secret: str | None  # None = public client
    sp_oid: str | None


@dataclass
class _AccessToken:
    principal: Principal
    expires_at: float


@dataclass
class _RefreshToken:
    user_oid: str
    client_id: str
    expires_at: float
    interactive: bool = False  # issued after a browser sign-in (device code): MFA and consent done


@dataclass
class _DeviceFlow:
    device_code: str
    user_code: str
    client_id: str
    scope: list[str]
    expires_at: float
    approved_oid: str | None = None
    declined: bool = False
    redeemed: bool = False
    polls: int = 0


@dataclass
class _Stats:
    """Counters the control API and tests can read (no secrets)."""

    tokens_issued: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


class OAuthError(Exception):
    """An error the token endpoint answers with, in AAD's shape."""

    def __init__(self, status: int, error: str, code: int, description: str, *,
                 suberror: str | None = None, claims: str | None = None) -> None:
        super().__init__(f"{error}: AADSTS{code}")
        self.status = status
        self.error = error
        self.code = code
        self.description = description
        self.suberror = suberror
        self.claims = claims

    @classmethod
    def of(cls, err: TenantError) -> OAuthError:
        return cls(err.status, err.error, err.code, err.description, suberror=err.suberror, claims=err.claims)


def audience_for_scope(scope: str) -> str:
    """The resource (token audience) a v2.0 scope names.

    ``https://vault.azure.net/.default`` → ``https://vault.azure.net``;
    ``499b84ac-…/.default`` or ``499b84ac-…/user_impersonation`` → ``499b84ac-…``;
    a bare permission such as ``User.Read`` belongs to Microsoft Graph.
    """
    parts = urlsplit(scope)
    if parts.scheme and parts.netloc:
        path = parts.path.rstrip("/")
        resource_path = path.rsplit("/", 1)[0] if "/" in path else path
        return f"{parts.scheme}://{parts.netloc}{resource_path}".rstrip("/")
    if "/" in scope:
        return scope.split("/", 1)[0]
    return GRAPH_APP_ID


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_json(obj: Mapping[str, Any]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def _jwt_like(claims: Mapping[str, Any]) -> str:
    """header.payload.tail: readable like a JWT, unsigned; the random tail makes it unguessable."""
    header = {"typ": "JWT", "alg": "none", "kid": "sandbox"}
    return f"{_b64url_json(header)}.{_b64url_json(claims)}.{_b64url(secrets.token_bytes(32))}"


class Entra:
    """One Entra tenant: users, app registrations, and the tokens issued to them."""

    def __init__(
        self,
        tenant_id: str,
        *,
        clock: Callable[[], float] = time.time,
        token_lifetime: float = 3600,
        refresh_token_lifetime: float = 90 * 24 * 3600,
        device_code_lifetime: float = 900,
        device_code_interval: int = 5,
    ) -> None:
        self.tenant_id = tenant_id
        self.clock = clock
        self.token_lifetime = token_lifetime
        self.refresh_token_lifetime = refresh_token_lifetime
        self.device_code_lifetime = device_code_lifetime
        self.device_code_interval = device_code_interval
        # The public https://127.0.0.1:PORT base, set by whoever binds the server; Key Vault's
        # challenge points clients here.
        self.authority_url: str | None = None
        self.stats = _Stats()
        self._users: dict[str, _User] = {}  # lower-cased username -> user
        self._clients: dict[str, _Client] = {}
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._device_by_code: dict[str, _DeviceFlow] = {}
        self._device_by_user_code: dict[str, _DeviceFlow] = {}
        self._user_listeners: list[Callable[[str, bool], None]] = []
        self.conditions = TenantConditions()

    # ---------------------------------------------------------------- directory
    def add_user(self, username: str, password: str) -> str:
        """Create (or reset) a user; returns its object id."""
        existing = self._users.get(username.lower())
        oid = existing.oid if existing else str(uuid.uuid4())
        self._users[username.lower()] = _User(oid=oid, username=username, password=password)
        return oid

    def set_password(self, username: str, password: str) -> None:
        """Change a password; like AAD, this also invalidates the user's refresh tokens."""
        self._user(username).password = password
        self.revoke_refresh_tokens(username)

    def set_user_enabled(self, username: str, enabled: bool) -> None:
        """Disable (or re-enable) a user: no token is issued to them and their access tokens stop
        working; listeners (ADO, which revokes the user's PATs) hear of every change."""
        user = self._user(username)
        if user.enabled == enabled:
            return
        user.enabled = enabled
        for listener in list(self._user_listeners):
            listener(user.oid, enabled)

    def on_user_enabled(self, listener: Callable[[str, bool], None]) -> None:
        """Call ``listener(oid, enabled)`` whenever a user is disabled or re-enabled."""
        self._user_listeners.append(listener)

    def set_condition(self, kind: FailureKind, *, username: str | None = None,
                      client_id: str | None = None) -> None:
        """Switch a tenant condition on (see sandbox.tenant): user conditions need ``username``;
        ``public_client_flows_disabled`` applies to ``client_id`` (None: every public client)."""
        if kind in USER_KINDS:
            if username is None:
                raise ValueError(f"{kind} needs a username")
            self.conditions.set_user(self._user(username).oid, kind)
        elif kind == "public_client_flows_disabled":
            self.conditions.set_client(client_id or "*")
        else:
            raise ValueError(f"unknown tenant condition {kind!r}")

    def revoke_access_tokens(self, username: str) -> int:
        """Revoke the user's access tokens server-side (their ``exp`` still lies ahead, so a
        client that caches them keeps sending them; resources now refuse them). Returns how many."""
        oid = self._user(username).oid
        revoked = [t for t, a in self._access.items() if a.principal.oid == oid]
        for token in revoked:
            del self._access[token]
        log.info("revoked access tokens", extra={"user": username, "count": len(revoked)})
        return len(revoked)

    def add_public_client(self, client_id: str) -> None:
        self._clients[client_id] = _Client(client_id=client_id, secret=None, sp_oid=None)

    def add_confidential_client(self, client_id: str, secret: str) -> str:
        """Register an app with a client secret; returns its service principal's object id."""
        existing = self._clients.get(client_id)
        sp_oid = existing.sp_oid if existing and existing.sp_oid else str(uuid.uuid4())
        self._clients[client_id] = _Client(client_id=client_id, secret=secret, sp_oid=sp_oid)
        return sp_oid

    def user_oid(self, username: str) -> str | None:
        user = self._users.get(username.lower())
        return user.oid if user else None

    def _user(self, username: str) -> _User:
        user = self._users.get(username.lower())
        if user is None:
            raise KeyError(f"no such user: {username}")
        return user

    def _user_by_oid(self, oid: str) -> _User | None:
        return next((u for u in self._users.values() if u.oid == oid), None)

    # ---------------------------------------------------------------- tokens
    def principal_for(self, access_token: str) -> Principal | None:
        """The principal an access token was issued to; None if unknown, expired or disabled."""
        entry = self._access.get(access_token)
        if entry is None or entry.expires_at <= self.clock():
            return None
        if entry.principal.kind == "user":
            user = self._user_by_oid(entry.principal.oid)
            if user is None or not user.enabled:
                return None
        return entry.principal

    def revoke_refresh_tokens(self, username: str) -> None:
        """Invalidate every refresh token of the user (forces an interactive sign-in)."""
        oid = self._user(username).oid
        for token in [t for t, rt in self._refresh.items() if rt.user_oid == oid]:
            del self._refresh[token]
        log.info("revoked refresh tokens", extra={"user": username})

    def expire_access_tokens(self, username: str | None = None) -> None:
        """Make issued access tokens (of one user, or all) expire now."""
        oid = self._user(username).oid if username else None
        now = self.clock()
        for entry in self._access.values():
            if oid is None or entry.principal.oid == oid:
                entry.expires_at = min(entry.expires_at, now)

    def issue_user_token(self, username: str, audience: str) -> str:
        """Mint an access token for a user without the OAuth dance (for seeding and tests)."""
        user = self._user(username)
        return self._issue_access(self._user_principal(user, audience), scp="user_impersonation")

    def issue_app_token(self, client_id: str, audience: str) -> str:
        """Mint an app-only access token for a confidential client (for seeding and tests)."""
        client = self._clients[client_id]
        if client.sp_oid is None:
            raise ValueError(f"{client_id} is a public client")
        return self._issue_access(self._app_principal(client, audience))

    def _user_principal(self, user: _User, audience: str) -> Principal:
        return Principal(
            oid=user.oid, tenant_id=self.tenant_id, kind="user", upn=user.username, audience=audience
        )

    def _app_principal(self, client: _Client, audience: str) -> Principal:
        assert client.sp_oid is not None
        return Principal(oid=client.sp_oid, tenant_id=self.tenant_id, kind="app", upn=None, audience=audience)

    def _issue_access(self, principal: Principal, *, scp: str | None = None, appid: str = "") -> str:
        now = self.clock()
        self._prune(now)
        claims: dict[str, Any] = {
            "aud": principal.audience,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + self.token_lifetime),
            "oid": principal.oid,
            "sub": principal.oid,
            "tid": self.tenant_id,
            "idtyp": principal.kind,
            "uti": _b64url(secrets.token_bytes(16)),
            "ver": "1.0",
        }
        if appid:
            claims["appid"] = appid
        if principal.upn:
            claims["upn"] = principal.upn
            claims["unique_name"] = principal.upn
        if scp:
            claims["scp"] = scp
        token = _jwt_like(claims)
        self._access[token] = _AccessToken(principal=principal, expires_at=now + self.token_lifetime)
        self.stats.tokens_issued[principal.kind] = self.stats.tokens_issued.get(principal.kind, 0) + 1
        return token

    def _prune(self, now: float) -> None:
        if len(self._access) > 10_000:
            for token in [t for t, a in self._access.items() if a.expires_at <= now]:
                del self._access[token]
        if len(self._device_by_code) > 1_000:
            for flow in [f for f in self._device_by_code.values() if f.expires_at <= now]:
                self._device_by_code.pop(flow.device_code, None)
                self._device_by_user_code.pop(flow.user_code, None)

    def _issue_refresh(self, user: _User, client_id: str, *, interactive: bool = False) -> str:
        token = "1.sandbox." + _b64url(secrets.token_bytes(48))
        self._refresh[token] = _RefreshToken(
            user_oid=user.oid, client_id=client_id, expires_at=self.clock() + self.refresh_token_lifetime,
            interactive=interactive,
        )
        return token

    # ---------------------------------------------------------------- device flow
    def approve_device_code(self, user_code: str, username: str, password: str | None = None) -> None:
        """Complete the browser side of a device login as `username` (password checked if given)."""
        flow = self._device_by_user_code.get(user_code.strip().upper())
        if flow is None or flow.expires_at <= self.clock():
            raise KeyError("unknown or expired user code")
        user = self._user(username)
        if password is not None and not secrets.compare_digest(password, user.password):
            raise PermissionError("wrong password")
        flow.approved_oid = user.oid

    def decline_device_code(self, user_code: str) -> None:
        flow = self._device_by_user_code.get(user_code.strip().upper())
        if flow is None:
            raise KeyError("unknown user code")
        flow.declined = True

    def pending_user_codes(self) -> list[str]:
        now = self.clock()
        return [
            f.user_code
            for f in self._device_by_code.values()
            if f.approved_oid is None and not f.declined and f.expires_at > now
        ]

    # ---------------------------------------------------------------- HTTP
    def app(self, middlewares: Iterable[Middleware] = ()) -> web.Application:
        """The HTTPS authority (serve it with the context from sandbox.tls)."""
        app = web.Application(middlewares=list(middlewares))
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid_configuration)
        app.router.add_get("/common/userrealm/{username}", self._userrealm)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_post("/{tenant}/oauth2/v2.0/devicecode", self._devicecode)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys)
        app.router.add_post("/_sandbox/device/approve", self._approve_route)
        app.router.add_post("/_sandbox/device/decline", self._decline_route)
        app.router.add_get("/_sandbox/devicelogin", self._devicelogin_page)
        return app

    @staticmethod
    def _base(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def _known_tenant(self, tenant: str) -> bool:
        return tenant == self.tenant_id or tenant.lower() in MULTI_TENANT_ALIASES

    def _error_response(self, err: OAuthError, request: web.Request) -> web.Response:
        trace_id = str(uuid.uuid4())
        correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
        timestamp = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        self.stats.errors[err.error] = self.stats.errors.get(err.error, 0) + 1
        body = {
            "error": err.error,
            "error_description": (
                f"AADSTS{err.code}: {err.description} Trace ID: {trace_id} "
                f"Correlation ID: {correlation_id} Timestamp: {timestamp}"
            ),
            "error_codes": [err.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self._base(request)}/error?code={err.code}",
        }
        if err.suberror is not None:
            body["suberror"] = err.suberror
        if err.claims is not None:
            body["claims"] = err.claims
        return web.json_response(body, status=err.status)

    def _tenant_error(self, tenant: str) -> OAuthError:
        return OAuthError(
            400,
            "invalid_tenant",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing "
            "into the correct cloud.",
        )

    async def _openid_configuration(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if not self._known_tenant(tenant):
            return self._error_response(self._tenant_error(tenant), request)
        base = self._base(request)
        issuer_tenant = "{tenantid}" if tenant.lower() in MULTI_TENANT_ALIASES else tenant
        prefix = f"{base}/{tenant}"
        return web.json_response(
            {
                "token_endpoint": f"{prefix}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{prefix}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/{issuer_tenant}/v2.0",
                "request_uri_parameter_supported": False,
                "authorization_endpoint": f"{prefix}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{prefix}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{prefix}/oauth2/v2.0/logout",
                "claims_supported": [
                    "sub",
                    "iss",
                    "cloud_instance_name",
                    "cloud_instance_host_name",
                    "cloud_graph_host_name",
                    "msgraph_host",
                    "aud",
                    "exp",
                    "iat",
                    "auth_time",
                    "acr",
                    "nonce",
                    "preferred_username",
                    "name",
                    "tid",
                    "ver",
                    "at_hash",
                    "c_hash",
                    "email",
                ],
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
            }
        )

    async def _keys(self, request: web.Request) -> web.Response:
        # Tokens here are unsigned; an empty key set is the honest answer.
        return web.json_response({"keys": []})

    async def _userrealm(self, request: web.Request) -> web.Response:
        username = request.match_info["username"]
        domain = username.rsplit("@", 1)[-1] if "@" in username else ""
        known = username.lower() in self._users
        return web.json_response(
            {
                "ver": "1.0",
                "account_type": "Managed" if known else "Unknown",
                "domain_name": domain,
                "cloud_instance_name": "microsoftonline.com",
                "cloud_audience_urn": "urn:federation:MicrosoftOnline",
            }
        )

    async def _devicecode(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        form = await request.post()
        try:
            if not self._known_tenant(tenant):
                raise self._tenant_error(tenant)
            client_id = _required(form, "client_id")
            self._client(client_id)
            scope = str(form.get("scope") or "").split()
            _resource_of(scope)
        except OAuthError as err:
            return self._error_response(err, request)
        user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(9))
        flow = _DeviceFlow(
            device_code=_b64url(secrets.token_bytes(48)),
            user_code=user_code,
            client_id=client_id,
            scope=scope,
            expires_at=self.clock() + self.device_code_lifetime,
        )
        self._device_by_code[flow.device_code] = flow
        self._device_by_user_code[flow.user_code] = flow
        verification_uri = f"{self._base(request)}/_sandbox/devicelogin"
        return web.json_response(
            {
                "user_code": flow.user_code,
                "device_code": flow.device_code,
                "verification_uri": verification_uri,
                "expires_in": int(self.device_code_lifetime),
                "interval": self.device_code_interval,
                "message": (
                    f"To sign in, use a web browser to open the page {verification_uri} and enter the code "
                    f"{flow.user_code} to authenticate."
                ),
            }
        )

    async def _devicelogin_page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=(
                "<html><body><p>patrol sandbox device login. Approve a code with "
                'POST /_sandbox/device/approve {"user_code": ..., "username": ...}.</p></body></html>'
            ),
            content_type="text/html",
        )

    async def _approve_route(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        user_code, username = body.get("user_code"), body.get("username")
        password = body.get("password")
        if not isinstance(user_code, str) or not isinstance(username, str):
            return web.json_response({"error": "user_code and username are required"}, status=400)
        try:
            self.approve_device_code(user_code, username, password if isinstance(password, str) else None)
        except KeyError as err:
            return web.json_response({"error": str(err.args[0])}, status=404)
        except PermissionError as err:
            return web.json_response({"error": str(err)}, status=403)
        return web.json_response({"approved": True})

    async def _decline_route(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        user_code = body.get("user_code")
        if not isinstance(user_code, str):
            return web.json_response({"error": "user_code is required"}, status=400)
        try:
            self.decline_device_code(user_code)
        except KeyError as err:
            return web.json_response({"error": str(err.args[0])}, status=404)
        return web.json_response({"declined": True})

    async def _token(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        form = await request.post()
        try:
            if not self._known_tenant(tenant):
                raise self._tenant_error(tenant)
            grant_type = _required(form, "grant_type")
            if grant_type == "password":
                body = self._password_grant(form, request)
            elif grant_type == DEVICE_CODE_GRANT:
                body = self._device_code_grant(form, request)
            elif grant_type == "refresh_token":
                body = self._refresh_grant(form, request)
            elif grant_type == "client_credentials":
                body = self._client_credentials_grant(form, request)
            else:
                raise OAuthError(
                    400,
                    "unsupported_grant_type",
                    70003,
                    f"The app requested an unsupported grant type '{grant_type}'.",
                )
        except OAuthError as err:
            log.info(
                "token request refused",
                extra={"error": err.error, "aadsts": err.code, "tenant": tenant},
            )
            return self._error_response(err, request)
        return web.json_response(body, headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    def _client(self, client_id: str) -> _Client:
        client = self._clients.get(client_id)
        if client is None:
            raise OAuthError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.tenant_id}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant.",
            )
        return client

    def _authenticate_client(self, form: Mapping[str, Any], request: web.Request) -> _Client:
        """Check the client id (and the secret, for confidential clients)."""
        client_id = str(form.get("client_id") or "")
        secret = form.get("client_secret")
        basic = request.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            try:
                decoded = base64.b64decode(basic[6:]).decode()
                basic_id, _, basic_secret = decoded.partition(":")
            except ValueError:
                basic_id, basic_secret = "", ""
            client_id = client_id or basic_id
            secret = secret or basic_secret
        if not client_id:
            raise OAuthError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_id'.",
            )
        client = self._client(client_id)
        refused = self.conditions.check_client(client.client_id, public=client.secret is None)
        if refused is not None:
            raise OAuthError.of(refused)
        if client.secret is not None:
            if not secret:
                raise OAuthError(
                    401,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or "
                    "'client_secret'.",
                )
            if not secrets.compare_digest(str(secret), client.secret):
                raise OAuthError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the "
                    f"client secret value, not the secret ID, for a secret added to app {client_id!r}.",
                )
        return client

    def _check_conditions(self, user: _User, client: _Client, scope: list[str], *, grant: Grant,
                          interactive: bool) -> None:
        refused = self.conditions.check_user(user.oid, grant=grant, interactive=interactive,
                                             client_id=client.client_id, resource=_resource_of(scope))
        if refused is not None:
            raise OAuthError.of(refused)

    def _user_tokens(
        self, user: _User, client: _Client, scope: list[str], request: web.Request, *, interactive: bool = False
    ) -> dict[str, Any]:
        resource_scopes = [s for s in scope if s.lower() not in OIDC_SCOPES]
        audience = _resource_of(scope)
        access = self._issue_access(
            self._user_principal(user, audience), scp="user_impersonation", appid=client.client_id
        )
        now = self.clock()
        id_claims = {
            "aud": client.client_id,
            "iss": f"{self._base(request)}/{self.tenant_id}/v2.0",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + 3600),
            "name": user.username.split("@", 1)[0],
            "oid": user.oid,
            "preferred_username": user.username,
            "sub": _b64url(uuid.uuid5(uuid.NAMESPACE_URL, user.oid + client.client_id).bytes),
            "tid": self.tenant_id,
            "uti": _b64url(secrets.token_bytes(16)),
            "ver": "2.0",
        }
        lifetime = int(self.token_lifetime)
        return {
            "token_type": "Bearer",
            "scope": " ".join(resource_scopes) if resource_scopes else f"{GRAPH_APP_ID}/.default",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access,
            "refresh_token": self._issue_refresh(user, client.client_id, interactive=interactive),
            "id_token": _jwt_like(id_claims),
            "client_info": _b64url_json({"uid": user.oid, "utid": self.tenant_id}),
        }

    def _password_grant(self, form: Mapping[str, Any], request: web.Request) -> dict[str, Any]:
        client = self._authenticate_client(form, request)
        username = _required(form, "username")
        password = _required(form, "password")
        scope = str(form.get("scope") or "").split()
        user = self._users.get(username.lower())
        if user is None:
            raise OAuthError(
                400,
                "invalid_grant",
                50034,
                f"The user account {{EUII Hidden}} does not exist in the {self.tenant_id} directory. To sign "
                "into this application, the account must be added to the directory.",
            )
        if not secrets.compare_digest(password, user.password):
            raise OAuthError(
                400,
                "invalid_grant",
                50126,
                "Error validating credentials due to invalid username or password.",
            )
        self._check_enabled(user)
        self._check_conditions(user, client, scope, grant="password", interactive=False)
        return self._user_tokens(user, client, scope, request)

    def _grantable_user(self, oid: str) -> _User:
        """The user a device-code or refresh grant was issued to, still existing and enabled."""
        user = self._user_by_oid(oid)
        if user is None:
            raise OAuthError(400, "invalid_grant", 50034, "The user account does not exist in the directory.")
        self._check_enabled(user)
        return user

    @staticmethod
    def _check_enabled(user: _User) -> None:
        if not user.enabled:
            raise OAuthError(
                400,
                "invalid_grant",
                50057,
                "The user account is disabled. The account has been disabled by an administrator.",
            )

    def _device_code_grant(self, form: Mapping[str, Any], request: web.Request) -> dict[str, Any]:
        client = self._authenticate_client(form, request)
        code = _required(form, "device_code")
        flow = self._device_by_code.get(code)
        if flow is None or flow.client_id != client.client_id or flow.redeemed:
            raise OAuthError(
                400,
                "bad_verification_code",
                70000,
                "The provided value for the input parameter 'device_code' is not valid.",
            )
        flow.polls += 1
        if flow.expires_at <= self.clock():
            raise OAuthError(400, "expired_token", 70019, "Verification code expired.")
        if flow.declined:
            raise OAuthError(
                400, "authorization_declined", 70000, "The user declined the authorization request."
            )
        if flow.approved_oid is None:
            raise OAuthError(
                400,
                "authorization_pending",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            )
        user = self._grantable_user(flow.approved_oid)
        self._check_conditions(user, client, flow.scope, grant="device_code", interactive=True)
        flow.redeemed = True
        return self._user_tokens(user, client, flow.scope, request, interactive=True)

    def _refresh_grant(self, form: Mapping[str, Any], request: web.Request) -> dict[str, Any]:
        client = self._authenticate_client(form, request)
        token = _required(form, "refresh_token")
        scope = str(form.get("scope") or "").split()
        entry = self._refresh.get(token)
        if entry is None:
            raise OAuthError(
                400,
                "invalid_grant",
                50173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed. "
                "The user might have changed or reset their password.",
            )
        if entry.expires_at <= self.clock():
            del self._refresh[token]
            raise OAuthError(
                400,
                "invalid_grant",
                700082,
                "The refresh token has expired due to inactivity. The token was issued on a date and was "
                "inactive for too long.",
            )
        if entry.client_id != client.client_id:
            raise OAuthError(
                400,
                "invalid_grant",
                70000,
                "Provided grant is invalid or malformed. The refresh token was issued to a different client.",
            )
        user = self._grantable_user(entry.user_oid)
        self._check_conditions(user, client, scope, grant="refresh_token", interactive=entry.interactive)
        return self._user_tokens(user, client, scope, request, interactive=entry.interactive)

    def _client_credentials_grant(self, form: Mapping[str, Any], request: web.Request) -> dict[str, Any]:
        client = self._authenticate_client(form, request)
        if client.secret is None:
            raise OAuthError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or "
                "'client_secret'.",
            )
        scope = _required(form, "scope").split()
        resource_scopes = [s for s in scope if s.lower() not in OIDC_SCOPES]
        if len(resource_scopes) != 1 or not resource_scopes[0].endswith("/.default"):
            raise OAuthError(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {' '.join(scope)} is not valid. Client credential flows must "
                "have a scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        audience = audience_for_scope(resource_scopes[0])
        access = self._issue_access(self._app_principal(client, audience), appid=client.client_id)
        lifetime = int(self.token_lifetime)
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access,
        }


def _required(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    if not isinstance(value, str) or not value:
        raise OAuthError(
            400,
            "invalid_request",
            900144,
            f"The request body must contain the following parameter: '{name}'.",
        )
    return value


def _resource_of(scope: list[str]) -> str:
    """The single resource a list of scopes targets (AAD refuses scopes for two resources)."""
    audiences = {audience_for_scope(s) for s in scope if s.lower() not in OIDC_SCOPES}
    if len(audiences) > 1:
        raise OAuthError(
            400,
            "invalid_scope",
            28000,
            "Provided value for the input parameter scope is not valid because it contains more than one "
            "resource.",
        )
    return audiences.pop() if audiences else GRAPH_APP_ID


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


__all__ = ["Entra", "OAuthError", "Principal", "audience_for_scope"]
