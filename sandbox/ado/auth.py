"""Who is calling ADO: a Basic PAT, an Entra bearer, or nobody, and what ADO answers when it is
nobody it accepts.

Guarantees: a PAT is matched exactly as sent — no whitespace is stripped from it (a PAT with a
trailing space or newline is a different credential and gets 401, as real ADO does); a failure
is answered as ADO does for that client (203 + sign-in page unless ``X-TFS-FedAuthRedirect:
Suppress``, or 401 for a Basic PAT per ``basic_pat_failure``); the PAT lifecycle API accepts only
a user-delegated Entra token for the ADO resource.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote

from aiohttp import web

from sandbox.ado.model import ADO_AUDIENCES, EXPIRED_MESSAGE, TF400813, VS30063, AdoWorld, PrincipalLike
from sandbox.ado.wire import SIGN_IN_PAGE, Answer, Caller, ado_error


class Auth:
    """The authentication step of every ADO route, for one AdoWorld."""

    def __init__(self, world: AdoWorld) -> None:
        self.w = world


    @staticmethod
    def _suppressed(request: web.Request) -> bool:
        return request.headers.get("X-TFS-FedAuthRedirect", "").strip().lower() == "suppress"

    def _deny(self, request: web.Request, *, message: str | None = None, service_error: str | None = None,
              status: int = 401, basic_pat: bool = False) -> Answer:
        """An auth failure: 203 + HTML sign-in page unless the redirect is suppressed (or, for a
        Basic PAT, unless ``basic_pat_failure`` says real ADO answers 401 to it anyway)."""
        sign_in_page = not (basic_pat and self.w.basic_pat_failure == "401")
        if not self._suppressed(request) and status == 401 and sign_in_page:
            return Answer(web.Response(
                status=203, text=SIGN_IN_PAGE, content_type="text/html", charset="utf-8",
                headers={"X-TFS-FedAuthRealm": "https://app.vssps.visualstudio.com/",
                         "X-TFS-FedAuthIssuer": "https://app.vssps.visualstudio.com/",
                         "X-VSS-ResourceTenant": "00000000-0000-0000-0000-000000000000",
                         "Cache-Control": "no-cache"}))
        headers = {
            "WWW-Authenticate": 'Bearer authorization_uri=https://login.microsoftonline.com/common, '
                                'Basic realm="https://tfsprodweu2.app.visualstudio.com/", TFS-Federated',
            "X-TFS-FedAuthRealm": "https://app.vssps.visualstudio.com/",
            "X-TFS-FedAuthIssuer": "https://app.vssps.visualstudio.com/",
            "X-VSS-ResourceTenant": "00000000-0000-0000-0000-000000000000",
            "X-FRAME-OPTIONS": "SAMEORIGIN",
        }
        if service_error:
            headers["X-TFS-ServiceError"] = quote(service_error, safe="")
        if message is None and self.w.auth_failure_body == "json":
            message = service_error or TF400813.format(user="")
        if message is None:
            return Answer(web.Response(status=status, headers=headers))
        return Answer(ado_error(status, message, "UnauthorizedRequestException",
                                  namespace="Microsoft.TeamFoundation.Framework.Server", headers=headers))

    @staticmethod
    def _credential(request: web.Request) -> tuple[str, str] | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if not value:
            return None
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return ("basic", "")
            return ("basic", password or user)      # exactly as sent: ADO strips nothing
        if scheme.lower() == "bearer":
            return ("bearer", value)
        return (scheme.lower(), value)

    def _principal(self, token: str) -> PrincipalLike | None:
        principal = self.w.entra.principal_for(token)
        if principal is None:
            return None
        audience = principal.audience.rstrip("/").removesuffix("/.default").rstrip("/")
        return principal if audience in ADO_AUDIENCES else None

    def require_pat(self, request: web.Request, allowed: frozenset[str] | None) -> Caller:
        """Authenticate an org API call: Basic PAT (any user name) or an Entra user bearer."""
        cred = self._credential(request)
        if cred is None:
            raise self._deny(request)
        scheme, secret = cred
        if scheme == "bearer":
            principal = self._principal(secret)
            if principal is None or principal.kind != "user":
                raise self._deny(request)
            return Caller(oid=principal.oid, scopes=None)
        if scheme != "basic" or not secret:
            raise self._deny(request)
        auth = self.w.authenticate(secret)
        if auth.result == "expired":
            raise self._deny(request, service_error=EXPIRED_MESSAGE, basic_pat=True)
        if auth.result in ("revoked", "unknown", "global_retired"):
            # A decommissioned global PAT is refused like a revoked one; the exact body ADO gives
            # it after 2026-12-01 is not documented (UNVERIFIED), the 401 is.
            raise self._deny(request, basic_pat=True)
        assert auth.owner_oid is not None
        if allowed is not None and "app_token" not in auth.scopes and not (auth.scopes & allowed):
            raise self._deny(request, message=VS30063, service_error=VS30063, basic_pat=True)
        return Caller(oid=auth.owner_oid, scopes=auth.scopes, authorization_id=auth.authorization_id)

    def require_entra_user(self, request: web.Request) -> PrincipalLike:
        """The PAT lifecycle API: a user-delegated Entra token for the ADO resource, nothing else."""
        cred = self._credential(request)
        if cred is None or cred[0] != "bearer":
            raise self._deny(request)            # a PAT here: sign-in page / 401 (vsts-rest-api-specs #574)
        principal = self._principal(cred[1])
        if principal is None:
            raise self._deny(request)
        if principal.kind != "user":
            raise self._deny(
                request, status=403,
                message="Service principals and managed identities can't create or manage personal "
                        "access tokens. Use a user-delegated Microsoft Entra token.")
        return principal

