"""Routing for the simulated ADO: one aiohttp app serves dev.azure.com, vssps and vsrm paths.

Guarantees: the three hosts are told apart by a path prefix (``/{org}/…``, ``/vssps/{org}/…``,
``/vsrm/{org}/…``) on one port; paths match case-insensitively, as ADO does (the docs spell
``_apis/Tokens/Pats``); an unknown organization is a 404 ``HostNotFoundException``, a known path
with another method a 405; every answer carries ADO's ``ActivityId``/``X-VSS-E2EID`` headers.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from sandbox.ado.agents_api import AgentsApi
from sandbox.ado.auth import Auth
from sandbox.ado.builds_api import BuildsApi
from sandbox.ado.model import SERVICE_OWNER, AdoWorld
from sandbox.ado.pats_api import PatsApi
from sandbox.ado.wire import Answer, Route, ado_error, json_response


class AdoApp:
    """Request handling for one AdoWorld: the route table and the headers every answer carries."""

    def __init__(self, world: AdoWorld) -> None:
        self.w = world
        self.auth = Auth(world)
        pats, agents, builds = PatsApi(world, self.auth), AgentsApi(world, self.auth), BuildsApi(world, self.auth)
        org = r"(?P<org>[^/]+)"
        proj = r"(?P<project>[^/]+)"
        routes: list[tuple[str, str, Route]] = [
            ("*", rf"^/vssps/{org}/_apis/tokens/pats/?$", pats.pats_api),
            ("GET", rf"^/vssps/{org}/_apis/connectiondata/?$", self.connection_data),
            ("GET", rf"^/vsrm/{org}/{proj}/_apis/release/releases/?$", builds.releases),
            ("GET", rf"^/vsrm/{org}/{proj}/_apis/release/deployments/?$", builds.deployments),
            ("GET", rf"^/{org}/_apis/connectiondata/?$", self.connection_data),
            ("GET", rf"^/{org}/_apis/distributedtask/pools/?$", agents.list_pools),
            ("GET", rf"^/{org}/_apis/distributedtask/pools/(?P<pool>\d+)/?$", agents.get_pool),
            ("GET", rf"^/{org}/_apis/distributedtask/pools/(?P<pool>\d+)/agents/?$", agents.list_agents),
            ("GET", rf"^/{org}/_apis/distributedtask/pools/(?P<pool>\d+)/agents/(?P<agent>\d+)/?$",
             agents.get_agent),
            ("GET", rf"^/{org}/_apis/distributedtask/pools/(?P<pool>\d+)/jobrequests/?$", agents.job_requests),
            ("GET", rf"^/{org}/{proj}/_apis/build/builds/?$", builds.list_builds),
            ("GET", rf"^/{org}/{proj}/_apis/build/builds/(?P<build>\d+)/?$", builds.get_build),
            ("GET", rf"^/{org}/{proj}/_apis/build/definitions/?$", builds.list_definitions),
        ]
        self.routes = [(m, re.compile(rx, re.IGNORECASE), h) for m, rx, h in routes]

    def build(self, middlewares: Iterable[Middleware]) -> web.Application:
        app = web.Application(middlewares=list(middlewares))
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.Response:
        path = request.path
        allowed: list[str] = []
        try:
            for method, rx, handler in self.routes:
                m = rx.match(path)
                if m is None:
                    continue
                if method not in ("*", request.method):
                    allowed.append(method)
                    continue
                if m.group("org").lower() != self.w.org.lower():
                    raise Answer(ado_error(
                        404, f"TF400813: The resource cannot be found: organization '{m.group('org')}'.",
                        "HostNotFoundException"))
                response = await handler(request, m)
                break
            else:
                if allowed:
                    raise Answer(ado_error(405, f"The requested resource does not support http method "
                                                  f"'{request.method}'.", "HttpMethodNotAllowedException"))
                raise Answer(ado_error(404, f"The controller for path '{path}' was not found or does "
                                              "not implement IController.", "ResourceNotFoundException"))
        except Answer as answer:
            response = answer.response
        response.headers.setdefault("ActivityId", str(uuid.uuid4()))
        response.headers.setdefault("X-TFS-ProcessId", "7d5ef2b0-1f3a-4c55-9c57-8f3c1b7b8d11")
        response.headers.setdefault("X-VSS-E2EID", str(uuid.uuid4()))
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    # --- org: connectionData ----------------------------------------------------------------

    async def connection_data(self, request: web.Request, m: re.Match[str]) -> web.Response:
        caller = self.auth.require_pat(request, None)
        user = self.w.user(caller.oid)
        identity = {
            "id": user.oid, "descriptor": f"Microsoft.IdentityModel.Claims.ClaimsIdentity;{user.upn}",
            "subjectDescriptor": "aad." + base64.urlsafe_b64encode(user.oid.encode()).decode().rstrip("="),
            "providerDisplayName": user.display_name, "isActive": True,
            "properties": {"Account": {"$type": "System.String", "$value": user.upn}},
            "resourceVersion": 2, "metaTypeId": 0,
        }
        return json_response({
            "authenticatedUser": identity, "authorizedUser": identity, "instanceId": self.w.org_id,
            "deploymentId": self.w.deployment_id, "deploymentType": "hosted",
            "locationServiceData": {"serviceOwner": SERVICE_OWNER,
                                    "defaultAccessMappingMoniker": "PublicAccessMapping",
                                    "lastChangeId": 1, "lastChangeId64": 1},
        })

    # --- org: pools, agents, job requests ---------------------------------------------------
