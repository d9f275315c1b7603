"""Azure Key Vault secrets (data plane), faithful enough for the unpatched azure-keyvault-secrets SDK.

patrol keeps the rotated PAT (and its authorization id, as a tag) in Key Vault, and KEDA may read it
from there. The real SDK only talks to a vault that behaves like the service
(docs/external-apis.md, "Key Vault"): HTTPS,
a 401 ``WWW-Authenticate: Bearer authorization=…, resource=…`` challenge answered *before* the body
is looked at (the SDK's first request is deliberately bodiless), versioned secrets with 32-hex
version ids and unix-time attributes, ``/secrets/{name}/`` for "latest", absolute ``nextLink`` paging
and ``{"error": {"code", "message"}}`` errors. Bearer tokens are checked with the sandbox Entra
(audience ``https://vault.azure.net``); any principal holding one may read and write.

State is plain data mutated on the sandbox's single event loop; time comes from the injected clock.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from sandbox.entra import Entra

log = logging.getLogger("sandbox.keyvault")

VAULT_RESOURCE = "https://vault.azure.net"
RECOVERY_LEVEL = "Recoverable+Purgeable"
RECOVERABLE_DAYS = 90
NAME_RE = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
MAX_PAGE = 25


@dataclass
class _Version:
    version: str
    value: str
    content_type: str | None
    enabled: bool
    nbf: int | None
    exp: int | None
    created: int
    updated: int
    tags: dict[str, str] | None


@dataclass
class _Secret:
    name: str  # as first created; lookups are case-insensitive like the service
    versions: list[_Version] = field(default_factory=list)
    deleted_date: int | None = None
    scheduled_purge_date: int | None = None

    @property
    def latest(self) -> _Version:
        return self.versions[-1]


class VaultError(Exception):
    """An error answered in Key Vault's ``{"error": {...}}`` shape."""

    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner


def _not_found(name: str, version: str | None = None) -> VaultError:
    ident = f"{name}/{version}" if version else name
    return VaultError(
        404,
        "SecretNotFound",
        f"A secret with (name/id) {ident} was not found in this key vault. If you recently deleted this "
        "secret you may be able to recover it using the correct recovery command. For help resolving this "
        "issue, please see https://go.microsoft.com/fwlink/?linkid=2125182",
    )


class KeyVaultStore:
    """One vault's secrets, with their versions and soft-deleted state."""

    def __init__(
        self,
        entra: Entra,
        *,
        base_url_getter: Callable[[], str],
        clock: Callable[[], float] = time.time,
        authority_getter: Callable[[], str | None] | None = None,
    ) -> None:
        """base_url_getter: the vault's public https base (ids and nextLinks are absolute).

        authority_getter: the Entra authority base the 401 challenge points clients to; defaults to
        ``entra.authority_url`` (set it once the Entra server is bound).
        """
        self.entra = entra
        self.base_url_getter = base_url_getter
        self.clock = clock
        self.authority_getter = authority_getter or (lambda: entra.authority_url)
        self.forbidden_oids: set[str] = set()  # principals refused with 403 (access-policy simulation)
        self._secrets: dict[str, _Secret] = {}  # lower-cased name -> secret

    # ---------------------------------------------------------------- state API
    def set_secret(
        self,
        name: str,
        value: str,
        *,
        exp: int | None = None,
        tags: dict[str, str] | None = None,
        nbf: int | None = None,
        content_type: str | None = None,
        enabled: bool = True,
    ) -> str:
        """Add a new version (creating the secret if needed); returns the version id.

        Raises ValueError for a name the service would refuse, and VaultError (409 Conflict) while the
        name is soft-deleted, as PUT does.
        """
        if not NAME_RE.match(name):
            raise ValueError(f"invalid secret name: {name!r}")
        secret = self._secrets.get(name.lower())
        if secret is not None and secret.deleted_date is not None:
            raise VaultError(
                409,
                "Conflict",
                f"Secret {name} is currently in a deleted but recoverable state, and its name cannot be "
                "reused; in this state, the secret can only be recovered or purged.",
                inner="ObjectIsDeletedButRecoverable",
            )
        if secret is None:
            secret = self._secrets[name.lower()] = _Secret(name=name)
        now = int(self.clock())
        version = uuid.uuid4().hex
        secret.versions.append(
            _Version(
                version=version,
                value=value,
                content_type=content_type,
                enabled=enabled,
                nbf=nbf,
                exp=exp,
                created=now,
                updated=now,
                tags=dict(tags) if tags is not None else None,
            )
        )
        log.info("secret version set", extra={"secret": name, "version": version})
        return version

    def latest(self, name: str) -> dict[str, Any] | None:
        """The latest version's SecretBundle exactly as GET returns it (None if absent or deleted)."""
        secret = self._live(name)
        return self._bundle(secret, secret.latest) if secret else None

    def latest_value(self, name: str) -> str | None:
        """The value a client would read now: None if absent, deleted, or the latest version is disabled."""
        secret = self._live(name)
        if secret is None or not secret.latest.enabled:
            return None
        return secret.latest.value

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every version's SecretBundle, oldest first (empty if absent or deleted)."""
        secret = self._live(name)
        return [self._bundle(secret, v) for v in secret.versions] if secret else []

    def names(self) -> list[str]:
        return sorted(s.name for s in self._secrets.values() if s.deleted_date is None)

    def delete_secret(self, name: str) -> None:
        """Soft-delete (like DELETE /secrets/{name})."""
        secret = self._live(name)
        if secret is None:
            raise KeyError(name)
        now = int(self.clock())
        secret.deleted_date = now
        secret.scheduled_purge_date = now + RECOVERABLE_DAYS * 86400

    def _live(self, name: str) -> _Secret | None:
        secret = self._secrets.get(name.lower())
        if secret is None or secret.deleted_date is not None or not secret.versions:
            return None
        return secret

    def _base(self) -> str:
        return self.base_url_getter().rstrip("/")

    @staticmethod
    def _attributes(v: _Version) -> dict[str, Any]:
        attrs: dict[str, Any] = {"enabled": v.enabled}
        if v.nbf is not None:
            attrs["nbf"] = v.nbf
        if v.exp is not None:
            attrs["exp"] = v.exp
        attrs.update(
            created=v.created,
            updated=v.updated,
            recoveryLevel=RECOVERY_LEVEL,
            recoverableDays=RECOVERABLE_DAYS,
        )
        return attrs

    def _bundle(self, secret: _Secret, v: _Version, *, with_value: bool = True) -> dict[str, Any]:
        bundle: dict[str, Any] = {}
        if with_value:
            bundle["value"] = v.value
        bundle["id"] = f"{self._base()}/secrets/{secret.name}/{v.version}"
        if v.content_type is not None:
            bundle["contentType"] = v.content_type
        bundle["attributes"] = self._attributes(v)
        if v.tags is not None:
            bundle["tags"] = dict(v.tags)
        return bundle

    def _item(self, secret: _Secret, v: _Version, *, with_version: bool) -> dict[str, Any]:
        suffix = f"/{v.version}" if with_version else ""
        item: dict[str, Any] = {"id": f"{self._base()}/secrets/{secret.name}{suffix}"}
        if v.content_type is not None:
            item["contentType"] = v.content_type
        item["attributes"] = self._attributes(v)
        if v.tags is not None:
            item["tags"] = dict(v.tags)
        return item

    def _deleted(self, secret: _Secret, *, item: bool = False) -> dict[str, Any]:
        body = (
            self._item(secret, secret.latest, with_version=False)
            if item
            else self._bundle(secret, secret.latest, with_value=False)
        )
        body["recoveryId"] = f"{self._base()}/deletedsecrets/{secret.name}"
        body["scheduledPurgeDate"] = secret.scheduled_purge_date
        body["deletedDate"] = secret.deleted_date
        return body

    # ---------------------------------------------------------------- HTTP
    def app(self, middlewares: Iterable[Middleware] = ()) -> web.Application:
        """The HTTPS vault (serve it with the context from sandbox.tls)."""
        app = web.Application(middlewares=[*middlewares, self._auth_middleware, self._error_middleware])
        r = app.router
        r.add_get("/secrets", self._list_secrets)
        r.add_get("/secrets/{name}/versions", self._list_versions)
        r.add_put("/secrets/{name}", self._set)
        r.add_get("/secrets/{name}", self._get)
        r.add_get("/secrets/{name}/", self._get)
        r.add_get("/secrets/{name}/{version}", self._get)
        r.add_patch("/secrets/{name}", self._update)
        r.add_patch("/secrets/{name}/", self._update)
        r.add_patch("/secrets/{name}/{version}", self._update)
        r.add_delete("/secrets/{name}", self._delete)
        r.add_get("/deletedsecrets", self._list_deleted)
        r.add_get("/deletedsecrets/{name}", self._get_deleted)
        r.add_delete("/deletedsecrets/{name}", self._purge)
        r.add_post("/deletedsecrets/{name}/recover", self._recover)
        return app

    def _challenge_header(self) -> str:
        authority = (self.authority_getter() or "https://login.microsoftonline.com").rstrip("/")
        return f'Bearer authorization="{authority}/{self.entra.tenant_id}", resource="{VAULT_RESOURCE}"'

    def _unauthorized(self, message: str) -> web.Response:
        return _error_json(
            VaultError(401, "Unauthorized", message),
            headers={"WWW-Authenticate": self._challenge_header()},
        )

    @web.middleware
    async def _auth_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # Decided from headers alone: the SDK's first request carries no body and must get the challenge.
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self._unauthorized("AKV10000: Request is missing a Bearer or PoP token.")
        principal = self.entra.principal_for(token.strip())
        if principal is None:
            return self._unauthorized("AKV10013: Invalid token: the token is unknown or has expired.")
        if principal.audience.rstrip("/") != VAULT_RESOURCE:
            return self._unauthorized(
                f"AKV10022: Invalid audience. Expected {VAULT_RESOURCE}, found: {principal.audience}."
            )
        if principal.oid in self.forbidden_oids:
            return _error_json(
                VaultError(
                    403,
                    "Forbidden",
                    f"The user, group or application 'oid={principal.oid};' does not have secrets "
                    f"{_permission(request)} permission on key vault.",
                    inner="AccessDenied",
                )
            )
        if not request.query.get("api-version"):
            return _error_json(
                VaultError(400, "BadParameter", "The 'api-version' query parameter is missing.")
            )
        return await handler(request)

    @web.middleware
    async def _error_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except VaultError as err:
            return _error_json(err)
        response.headers["x-ms-keyvault-service-version"] = "1.9.2000.1"
        response.headers["x-ms-keyvault-region"] = "sandbox"
        response.headers["x-ms-request-id"] = str(uuid.uuid4())
        return response

    def _secret_or_404(self, name: str) -> _Secret:
        secret = self._live(name)
        if secret is None:
            raise _not_found(name)
        return secret

    def _version_or_404(self, secret: _Secret, version: str) -> _Version:
        if not version:
            return secret.latest
        found = next((v for v in secret.versions if v.version == version.lower()), None)
        if found is None:
            raise _not_found(secret.name, version)
        return found

    async def _set(self, request: web.Request) -> web.Response:
        name = _valid_name(request.match_info["name"])
        body = await _json_body(request)
        value = body.get("value")
        if not isinstance(value, str):
            raise VaultError(400, "BadParameter", "Property 'value' is required and must be a string.")
        attrs = _attributes_in(body)
        tags = _tags_in(body)
        content_type = body.get("contentType")
        if content_type is not None and not isinstance(content_type, str):
            raise VaultError(400, "BadParameter", "Property 'contentType' must be a string.")
        enabled = attrs.get("enabled", True)
        version = self.set_secret(
            name,
            value,
            exp=attrs.get("exp"),
            nbf=attrs.get("nbf"),
            tags=tags,
            content_type=content_type,
            enabled=bool(enabled),
        )
        secret = self._secret_or_404(name)
        return web.json_response(self._bundle(secret, self._version_or_404(secret, version)))

    async def _get(self, request: web.Request) -> web.Response:
        secret = self._secret_or_404(request.match_info["name"])
        v = self._version_or_404(secret, request.match_info.get("version", ""))
        if not v.enabled:
            raise VaultError(
                403, "Forbidden", "Operation get is not allowed on a disabled secret.", inner="SecretDisabled"
            )
        return web.json_response(self._bundle(secret, v))

    async def _update(self, request: web.Request) -> web.Response:
        secret = self._secret_or_404(request.match_info["name"])
        v = self._version_or_404(secret, request.match_info.get("version", ""))
        body = await _json_body(request)
        if "value" in body:
            raise VaultError(400, "BadParameter", "The secret value cannot be changed by an update.")
        attrs = _attributes_in(body)
        if "enabled" in attrs:
            v.enabled = bool(attrs["enabled"])
        if "nbf" in attrs:
            v.nbf = attrs["nbf"]
        if "exp" in attrs:
            v.exp = attrs["exp"]
        if "contentType" in body:
            content_type = body["contentType"]
            if content_type is not None and not isinstance(content_type, str):
                raise VaultError(400, "BadParameter", "Property 'contentType' must be a string.")
            v.content_type = content_type
        if "tags" in body:
            v.tags = _tags_in(body)
        v.updated = int(self.clock())
        return web.json_response(self._bundle(secret, v, with_value=False))

    async def _list_versions(self, request: web.Request) -> web.Response:
        secret = self._live(request.match_info["name"])
        items = [self._item(secret, v, with_version=True) for v in secret.versions] if secret else []
        return self._page(request, items)

    async def _list_secrets(self, request: web.Request) -> web.Response:
        live = sorted(
            (s for s in self._secrets.values() if s.deleted_date is None), key=lambda s: s.name.lower()
        )
        return self._page(request, [self._item(s, s.latest, with_version=False) for s in live if s.versions])

    async def _list_deleted(self, request: web.Request) -> web.Response:
        deleted = sorted(
            (s for s in self._secrets.values() if s.deleted_date is not None), key=lambda s: s.name.lower()
        )
        return self._page(request, [self._deleted(s, item=True) for s in deleted])

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        raw_max = request.query.get("maxresults")
        try:
            page_size = int(raw_max) if raw_max else MAX_PAGE
        except ValueError:
            page_size = 0
        if not 1 <= page_size <= MAX_PAGE:
            raise VaultError(
                400, "BadParameter", f"The value '{raw_max}' of 'maxresults' is invalid: it must be 1 to 25."
            )
        start = _decode_skiptoken(request.query.get("$skiptoken"))
        page = items[start : start + page_size]
        next_link = None
        if start + page_size < len(items):
            token = (
                base64.urlsafe_b64encode(json.dumps({"o": start + page_size}).encode()).decode().rstrip("=")
            )
            api_version = request.query.get("api-version", "")
            query = f"api-version={api_version}&$skiptoken={token}&maxresults={page_size}"
            next_link = f"{self._base()}{request.path}?{query}"
        return web.json_response({"value": page, "nextLink": next_link})

    async def _delete(self, request: web.Request) -> web.Response:
        secret = self._secret_or_404(request.match_info["name"])
        self.delete_secret(secret.name)
        return web.json_response(self._deleted(secret))

    def _deleted_or_404(self, name: str) -> _Secret:
        secret = self._secrets.get(name.lower())
        if secret is None or secret.deleted_date is None:
            raise VaultError(404, "SecretNotFound", f"Deleted Secret not found: {name}")
        return secret

    async def _get_deleted(self, request: web.Request) -> web.Response:
        return web.json_response(self._deleted(self._deleted_or_404(request.match_info["name"])))

    async def _purge(self, request: web.Request) -> web.Response:
        secret = self._deleted_or_404(request.match_info["name"])
        del self._secrets[secret.name.lower()]
        return web.Response(status=204)

    async def _recover(self, request: web.Request) -> web.Response:
        secret = self._deleted_or_404(request.match_info["name"])
        secret.deleted_date = None
        secret.scheduled_purge_date = None
        return web.json_response(self._bundle(secret, secret.latest, with_value=False))


def _error_json(err: VaultError, headers: dict[str, str] | None = None) -> web.Response:
    error: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.inner:
        error["innererror"] = {"code": err.inner}
    return web.json_response({"error": error}, status=err.status, headers=headers)


def _permission(request: web.Request) -> str:
    return {"GET": "get", "PUT": "set", "PATCH": "set", "DELETE": "delete"}.get(request.method, "get")


def _valid_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise VaultError(
            400, "BadParameter", f"The request URI contains an invalid name: {name}", inner="InvalidName"
        )
    return name


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as err:
        raise VaultError(400, "BadParameter", "The request body is not valid JSON.") from err
    if not isinstance(body, dict):
        raise VaultError(400, "BadParameter", "The request body must be a JSON object.")
    return body


def _attributes_in(body: dict[str, Any]) -> dict[str, Any]:
    attrs = body.get("attributes")
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise VaultError(400, "BadParameter", "Property 'attributes' must be an object.")
    for key in ("nbf", "exp"):
        value = attrs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise VaultError(400, "BadParameter", f"Property 'attributes.{key}' must be unix seconds.")
    if "enabled" in attrs and attrs["enabled"] is not None and not isinstance(attrs["enabled"], bool):
        raise VaultError(400, "BadParameter", "Property 'attributes.enabled' must be a boolean.")
    return {k: v for k, v in attrs.items() if k in ("enabled", "nbf", "exp") and v is not None}


def _tags_in(body: dict[str, Any]) -> dict[str, str] | None:
    tags = body.get("tags")
    if tags is None:
        return None
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise VaultError(400, "BadParameter", "Property 'tags' must be an object of strings.")
    if len(tags) > 15:
        raise VaultError(400, "BadParameter", "A secret can have at most 15 tags.")
    return {str(k): v for k, v in tags.items()}


def _decode_skiptoken(token: str | None) -> int:
    if not token:
        return 0
    try:
        padded = token + "=" * (-len(token) % 4)
        offset = json.loads(base64.urlsafe_b64decode(padded))["o"]
    except (ValueError, KeyError, TypeError) as err:
        raise VaultError(400, "BadParameter", "The $skiptoken is invalid.") from err
    if not isinstance(offset, int) or offset < 0:
        raise VaultError(400, "BadParameter", "The $skiptoken is invalid.")
    return offset


__all__ = ["KeyVaultStore", "VaultError"]
