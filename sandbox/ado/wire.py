"""ADO's wire format shared by every route: error bodies, lists, paging tokens, identity refs.

Guarantees: every error body has ADO's ``{"$id", "message", "typeName", "typeKey", ...}`` shape
(docs/external-apis.md); a handler answers early by raising :class:`Answer`, never by returning
half-built responses.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sandbox.ado.model import AdoWorld
from sandbox.ado.records import User


class Answer(Exception):
    """Raised by a handler step to answer immediately (auth failures, 404s, 400s)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass(frozen=True)
class Caller:
    oid: str
    scopes: frozenset[str] | None      # None = an Entra token: everything the user may do
    authorization_id: str | None = None


Route = Callable[[web.Request, re.Match[str]], Awaitable[web.Response]]

POOLS_SCOPES = frozenset({"vso.agentpools", "vso.agentpools_manage"})
BUILD_SCOPES = frozenset({"vso.build", "vso.build_execute"})
RELEASE_SCOPES = frozenset({"vso.release", "vso.release_execute", "vso.release_manage"})

SIGN_IN_PAGE = """<!DOCTYPE html>
<html lang="en-US">
<head><meta charset="utf-8"><title>Azure DevOps Services | Sign In</title>
<meta http-equiv="X-UA-Compatible" content="IE=edge"></head>
<body><div id="signin">Sign in to your account to continue to Azure DevOps.</div>
<script type="text/javascript">window.location.href = "https://app.vssps.visualstudio.com/_signin?realm=dev.azure.com&reply_to=";</script>
</body></html>
"""


WEBAPI = "Microsoft.VisualStudio.Services.WebApi"


def ado_error(status: int, message: str, type_key: str, *, namespace: str = WEBAPI,
               headers: dict[str, str] | None = None) -> web.Response:
    body = {"$id": "1", "innerException": None, "message": message,
            "typeName": f"{namespace}.{type_key}, {namespace}", "typeKey": type_key,
            "errorCode": 0, "eventId": 3000}
    return web.Response(status=status, text=json.dumps(body), headers=headers,
                        content_type="application/json", charset="utf-8")


def list_response(values: list[dict[str, Any]], headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"count": len(values), "value": values}, headers=headers)


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), headers=headers,
                        content_type="application/json", charset="utf-8")


def flag(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("true", "1", "yes")


def int_param(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise Answer(ado_error(400, f"The value '{raw}' is not valid for parameter '{name}'.",
                                 "ArgumentException", namespace="System")) from None


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        return int(json.loads(base64.urlsafe_b64decode(padded))["o"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise Answer(ado_error(400, "The continuation token is not valid.",
                                 "InvalidContinuationTokenException")) from None


def identity_ref(world: AdoWorld, oid: str | None = None) -> dict[str, Any]:
    """An IdentityRef for a user (or the build service when ``oid`` is None)."""
    user = world.user(oid) if oid else User("00000000-0000-0000-0000-000000000000",
                                               "Project Collection Build Service", "Build Service")
    avatar = f"{world.base_url}/_apis/GraphProfile/MemberAvatars/{user.oid}"
    return {"displayName": user.display_name, "url": f"{world.base_url}/_apis/Identities/{user.oid}",
            "_links": {"avatar": {"href": avatar}},
            "id": user.oid, "uniqueName": user.upn,
            "imageUrl": f"{world.base_url}/_api/_common/identityImage?id={user.oid}",
            "descriptor": "aad." + user.oid.replace("-", "")[:20]}
