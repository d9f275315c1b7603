"""The PAT Lifecycle Management API (``/vssps/{org}/_apis/tokens/pats``), as ADO serves it.

Guarantees (docs/external-apis.md, "PAT Lifecycle API"): only a user-delegated Entra token may call it; errors come as
``{"patToken": null, "patTokenError": "<code>"}``; org policies clamp or refuse a lifetime, a
full-scope or a global PAT; a token value appears only in the create answer.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sandbox.ado.auth import Auth
from sandbox.ado.model import SCOPE_RX, AdoWorld, PrincipalLike
from sandbox.ado.records import Pat
from sandbox.ado.timefmt import ado_time, format_ado_datetime, parse_datetime
from sandbox.ado.wire import Answer, ado_error, decode_token, encode_token, json_response


class PatsApi:
    """Handlers for the PAT lifecycle routes."""

    def __init__(self, world: AdoWorld, auth: Auth) -> None:
        self.w = world
        self.auth = auth

    def _pat_json(self, pat: Pat, token: str | None = None) -> dict[str, Any]:
        return {"displayName": pat.display_name, "validTo": format_ado_datetime(pat.valid_to),
                "scope": pat.scope, "targetAccounts": None if pat.all_orgs else [self.w.org_id],
                "validFrom": format_ado_datetime(pat.valid_from), "authorizationId": pat.authorization_id,
                "token": token}

    def _pat_error(self, code: str) -> web.Response:
        return json_response({"patToken": None, "patTokenError": code}, status=self.w.policy.error_status)

    async def pats_api(self, request: web.Request, m: re.Match[str]) -> web.Response:
        version = request.query.get("api-version")
        principal = self.auth.require_entra_user(request)
        if version is not None and "preview" not in version.lower():
            raise Answer(ado_error(
                400, f'The requested version "{version}" of the resource is under preview. The -preview '
                     "flag must be supplied in the api-version for such requests. For example: "
                     f'"{version}-preview"', "VssInvalidPreviewVersionException"))
        if principal.upn and principal.oid not in self.w.users:
            self.w.register_user(principal.oid, principal.upn)
        if request.method == "GET":
            auth_id = next((v for k, v in request.query.items() if k.lower() == "authorizationid"), None)
            if auth_id is not None:
                return self._get_pat(principal, auth_id)
            return self._list_pats(request, principal)
        if request.method == "POST":
            return self._create_pat(principal, await self._body(request))
        if request.method == "PUT":
            return self._update_pat(principal, await self._body(request))
        if request.method == "DELETE":
            auth_id = next((v for k, v in request.query.items() if k.lower() == "authorizationid"), None)
            return self._revoke_pat(principal, auth_id)
        raise Answer(ado_error(405, "The requested resource does not support http method "
                                      f"'{request.method}'.", "HttpMethodNotAllowedException"))

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.text() or "null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise Answer(ado_error(400, "Value cannot be null.\r\nParameter name: request",
                                     "ArgumentNullException", namespace="System"))
        return body

    def _owned(self, principal: PrincipalLike, auth_id: str | None) -> Pat | web.Response:
        try:
            key = str(uuid.UUID(str(auth_id)))
        except ValueError:
            return self._pat_error("invalidAuthorizationId")
        pat = self.w._pats.get(key)
        if pat is None or pat.owner_oid != principal.oid:
            return self._pat_error("authorizationNotFound")
        return pat

    def _get_pat(self, principal: PrincipalLike, auth_id: str) -> web.Response:
        pat = self._owned(principal, auth_id)
        if isinstance(pat, web.Response):
            return pat
        return json_response({"patToken": self._pat_json(pat), "patTokenError": "none"})

    def _list_pats(self, request: web.Request, principal: PrincipalLike) -> web.Response:
        q = {k.lower(): v for k, v in request.query.items()}
        now = self.w.clock()
        display = q.get("displayfilteroption", "active").lower()
        if display not in ("active", "revoked", "expired", "all"):
            raise Answer(ado_error(400, f"The value '{display}' is not valid for parameter "
                                          "'displayFilterOption'.", "ArgumentException", namespace="System"))
        sort_by = q.get("sortbyoption", "displayDate").lower()
        if sort_by not in ("displayname", "displaydate", "status"):
            raise Answer(ado_error(400, f"The value '{sort_by}' is not valid for parameter 'sortByOption'.",
                                     "ArgumentException", namespace="System"))
        ascending = q.get("issortascending", "true").lower() != "false"
        try:
            top = min(max(int(q.get("$top") or 100), 1), 100)
        except ValueError:
            raise Answer(ado_error(400, "The value for '$top' must be an integer.", "ArgumentException",
                                     namespace="System")) from None
        pats = [p for p in self.w._pats.values() if p.owner_oid == principal.oid
                and (display == "all" or p.status(now) == display)]
        keys: dict[str, Callable[[Pat], Any]] = {
            "displayname": lambda p: (p.display_name.lower(), p.authorization_id),
            "displaydate": lambda p: (p.valid_to, p.authorization_id),
            "status": lambda p: (p.status(now), p.authorization_id),
        }
        pats.sort(key=keys[sort_by], reverse=not ascending)
        offset = decode_token(q["continuationtoken"]) if q.get("continuationtoken") else 0
        page = pats[offset:offset + top]
        more = offset + top < len(pats)
        return json_response({"continuationToken": encode_token(offset + top) if more else "",
                      "patTokens": [self._pat_json(p) for p in page]})

    def _check_request(self, *, scope: str, valid_to: float, all_orgs: bool, display_name: str,
                       valid_to_changed: bool = True,
                       valid_from: float | None = None) -> tuple[str | None, float]:
        """Validation + org policies shared by create and update; returns (error, validTo).

        The maximum lifespan counts from ``valid_from``: now for a create, the PAT's own validFrom
        for an update (the 7.2 swagger: ``PatTokenUpdateRequest.validTo`` is capped at validFrom
        + the maximum), so extending a PAT never buys it more than one policy lifetime."""
        now = self.w.clock()
        start = now if valid_from is None else valid_from
        policy = self.w.policy
        if not display_name.strip():
            return "displayNameRequired", valid_to
        if len(display_name) > 256:
            return "invalidDisplayName", valid_to
        scopes = scope.split()
        if not scopes or not all(SCOPE_RX.match(s) for s in scopes):
            return "invalidScope", valid_to
        if valid_to_changed and valid_to <= now:
            return "invalidValidTo", valid_to
        if policy.restrict_global and all_orgs:
            return "globalPatPolicyViolation", valid_to
        if policy.restrict_full_scope and "app_token" in scopes:
            return "fullScopePatPolicyViolation", valid_to
        if valid_to_changed and policy.max_lifespan is not None and valid_to - start > policy.max_lifespan:
            if policy.lifespan_mode == "reject":
                return "patLifespanPolicyViolation", valid_to
            valid_to = start + policy.max_lifespan
        return None, valid_to

    def _valid_to(self, raw: Any, default: float) -> float | None:
        if raw is None:
            return default
        try:
            return parse_datetime(str(raw))
        except ValueError:
            return None

    def _create_pat(self, principal: PrincipalLike, body: dict[str, Any]) -> web.Response:
        now = self.w.clock()
        valid_to = self._valid_to(body.get("validTo"), now + 30 * 86400)
        if valid_to is None:
            return self._pat_error("invalidValidTo")
        display = body.get("displayName")
        scope = body.get("scope")
        all_orgs = bool(body.get("allOrgs", False))
        if not isinstance(display, str):
            return self._pat_error("displayNameRequired")
        if not isinstance(scope, str):
            return self._pat_error("invalidScope")
        error, valid_to = self._check_request(scope=scope, valid_to=valid_to, all_orgs=all_orgs,
                                              display_name=display)
        if error is not None:
            return self._pat_error(error)
        granted = (self.w.policy.scope_override or scope).split()
        auth_id, token = self.w.issue_pat(principal.oid, display, granted, valid_to, all_orgs)
        return json_response({"patToken": self._pat_json(self.w._pats[auth_id], token), "patTokenError": "none"})

    def _update_pat(self, principal: PrincipalLike, body: dict[str, Any]) -> web.Response:
        if not body.get("authorizationId"):
            return self._pat_error("invalidAuthorizationId")
        pat = self._owned(principal, body.get("authorizationId"))
        if isinstance(pat, web.Response):
            return pat
        now = self.w.clock()
        if pat.status(now) == "revoked":
            return self._pat_error("authorizationNotFound")
        valid_to = self._valid_to(body.get("validTo"), pat.valid_to)
        if valid_to is None:
            return self._pat_error("invalidValidTo")
        if pat.status(now) == "expired" and valid_to > pat.valid_to:
            return self._pat_error("expiredPatCannotBeExtended")
        display = body.get("displayName", pat.display_name)
        scope = body.get("scope", pat.scope)
        all_orgs = bool(body.get("allOrgs", pat.all_orgs))
        if not isinstance(display, str):
            return self._pat_error("invalidDisplayName")
        if not isinstance(scope, str):
            return self._pat_error("invalidScope")
        changed_to = valid_to != pat.valid_to
        error, valid_to = self._check_request(scope=scope, valid_to=valid_to, all_orgs=all_orgs,
                                              display_name=display, valid_to_changed=changed_to,
                                              valid_from=pat.valid_from)
        if error is not None:
            return self._pat_error(error)
        pat.display_name, pat.scope, pat.all_orgs = display, " ".join(scope.split()), all_orgs
        if changed_to:
            pat.valid_to = ado_time(valid_to)
        return json_response({"patToken": self._pat_json(pat), "patTokenError": "none"})

    def _revoke_pat(self, principal: PrincipalLike, auth_id: str | None) -> web.Response:
        if auth_id is None:
            raise Answer(ado_error(400, "The authorizationId parameter is required.",
                                     "ArgumentNullException", namespace="System"))
        pat = self._owned(principal, auth_id)
        if isinstance(pat, web.Response):
            raise Answer(ado_error(404, f"No personal access token found with authorizationId {auth_id}.",
                                     "SessionTokenNotFoundException",
                                     namespace="Microsoft.VisualStudio.Services.DelegatedAuthorization"))
        self.w.revoke_pat(pat.authorization_id)
        return web.Response(status=204)
