"""Builds, build definitions (``/{org}/{project}/_apis/build/…``) and releases and deployments
(``/vsrm/{org}/{project}/_apis/release/…``), as the daily-checks pipeline metrics read them.

Guarantees: shapes follow the Build and Release swagger (docs/external-apis.md, "Builds,
releases and rate limits"): .NET-tick dates,
``x-ms-continuationtoken`` paging, ADO's 400 wording for bad query values.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sandbox.ado.auth import Auth
from sandbox.ado.model import AdoWorld
from sandbox.ado.records import Build, Project, Release
from sandbox.ado.timefmt import format_ado_datetime, format_ticks_datetime, parse_datetime
from sandbox.ado.wire import (
    BUILD_SCOPES,
    RELEASE_SCOPES,
    Answer,
    ado_error,
    decode_token,
    encode_token,
    identity_ref,
    int_param,
    json_response,
    list_response,
)


class BuildsApi:
    """Handlers for builds, definitions, releases and deployments."""

    def __init__(self, world: AdoWorld, auth: Auth) -> None:
        self.w = world
        self.auth = auth

    def _project_of(self, m: re.Match[str]) -> Project:
        project = self.w._project(m.group("project"))
        if project is None:
            raise Answer(ado_error(404, f"TF200016: The following project does not exist: "
                                          f"{m.group('project')}. Verify that the name of the project is "
                                          "correct and that the project exists on the specified Azure "
                                          "DevOps Server.", "ProjectDoesNotExistWithNameException",
                                     namespace="Microsoft.TeamFoundation.Core.WebApi"))
        return project

    def _project_ref(self, project: Project) -> dict[str, Any]:
        return {"id": project.id, "name": project.name,
                "url": f"{self.w.base_url}/_apis/projects/{project.id}", "state": "wellFormed",
                "revision": 11, "visibility": "private",
                "lastUpdateTime": format_ticks_datetime(self.w._pools[1].created_on)}

    def _definition_json(self, project: Project, def_id: int) -> dict[str, Any]:
        url = f"{self.w.base_url}/{project.id}/_apis/build/Definitions/{def_id}?revision=1"
        web_url = f"{self.w.base_url}/{project.id}/_build/definition?definitionId={def_id}"
        queue = {"_links": {}, "id": 1, "name": "Default", "pool": {"id": 1, "name": "Default"}}
        return {"_links": {"self": {"href": url}, "web": {"href": web_url}},
                "quality": "definition", "authoredBy": identity_ref(self.w), "drafts": [], "queue": queue,
                "id": def_id, "name": project.definitions[def_id], "url": url,
                "uri": f"vstfs:///Build/Definition/{def_id}", "path": "\\", "type": "build",
                "queueStatus": "enabled", "revision": 1,
                "createdDate": format_ticks_datetime(self.w._pools[1].created_on),
                "project": self._project_ref(project)}

    async def list_definitions(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self.auth.require_pat(request, BUILD_SCOPES)
        project = self._project_of(m)
        name = request.query.get("name")
        ids = sorted(project.definitions)
        if name is not None:
            rx = re.compile("^" + re.escape(name).replace(r"\*", ".*") + "$", re.IGNORECASE)
            ids = [i for i in ids if rx.match(project.definitions[i])]
        return list_response([self._definition_json(project, i) for i in ids])

    def _build_json(self, project: Project, build: Build) -> dict[str, Any]:
        base = f"{self.w.base_url}/{project.id}"
        url = f"{base}/_apis/build/Builds/{build.id}"
        body: dict[str, Any] = {
            "_links": {"self": {"href": url},
                       "web": {"href": f"{base}/_build/results?buildId={build.id}"},
                       "timeline": {"href": f"{url}/Timeline"},
                       "badge": {"href": f"{base}/_apis/build/status/{build.definition_id}"}},
            "properties": {}, "tags": [], "validationResults": [],
            "plans": [{"planId": build.plan_id}], "triggerInfo": {},
            "id": build.id, "buildNumber": build.number, "status": build.status,
        }
        if build.result is not None:
            body["result"] = build.result
        body["queueTime"] = format_ticks_datetime(build.queue_time)
        if build.start_time is not None:
            body["startTime"] = format_ticks_datetime(build.start_time)
        if build.finish_time is not None:
            body["finishTime"] = format_ticks_datetime(build.finish_time)
        definition = self._definition_json(project, build.definition_id)
        body.update({
            "url": url,
            "definition": {k: definition[k] for k in ("drafts", "id", "name", "url", "uri", "path", "type",
                                                     "queueStatus", "revision", "project")},
            "buildNumberRevision": int(build.number.rsplit(".", 1)[1]),
            "project": self._project_ref(project), "uri": f"vstfs:///Build/Build/{build.id}",
            "sourceBranch": "refs/heads/master", "sourceVersion": hashlib.sha1(  # noqa: S324 - a fake commit id
                str(build.id).encode()).hexdigest(),
            "queue": {"id": 1, "name": "Default", "pool": {"id": 1, "name": "Default"}},
            "priority": "normal", "reason": "schedule",
            "requestedFor": identity_ref(self.w), "requestedBy": identity_ref(self.w),
            "lastChangedDate": format_ticks_datetime(
                build.finish_time or build.start_time or build.queue_time),
            "lastChangedBy": identity_ref(self.w), "orchestrationPlan": {"planId": build.plan_id},
            "logs": {"id": 0, "type": "Container", "url": f"{url}/logs"},
            "repository": {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, project.name)), "type": "TfsGit",
                           "clean": None, "checkoutSubmodules": False},
            "retainedByRelease": False, "triggeredByBuild": None, "appendCommitMessageToRunName": True,
        })
        return body

    async def list_builds(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self.auth.require_pat(request, BUILD_SCOPES)
        project = self._project_of(m)
        q = request.query
        builds = [b for b in self.w._builds.values() if b.project.lower() == project.name.lower()]
        if q.get("definitions"):
            try:
                wanted = {int(x) for x in q["definitions"].split(",") if x.strip()}
            except ValueError:
                raise Answer(ado_error(400, "The value for 'definitions' must be a list of integers.",
                                         "ArgumentException", namespace="System")) from None
            builds = [b for b in builds if b.definition_id in wanted]
        status = q.get("statusFilter")
        if status and status.lower() != "all":
            builds = [b for b in builds if b.status.lower() == status.lower()]
        result = q.get("resultFilter")
        if result:
            builds = [b for b in builds if (b.result or "none").lower() == result.lower()]
        order = (q.get("queryOrder") or "queueTimeDescending").lower()
        keys: dict[str, Callable[[Build], float]] = {
            "finishtime": lambda b: b.finish_time or 0.0,
            "queuetime": lambda b: b.queue_time,
            "starttime": lambda b: b.start_time or 0.0,
        }
        key = next((k for name, k in keys.items() if order.startswith(name)), keys["queuetime"])
        time_key = key
        if q.get("minTime"):
            lo = self._time_param(q["minTime"], "minTime")
            builds = [b for b in builds if time_key(b) >= lo]
        if q.get("maxTime"):
            hi = self._time_param(q["maxTime"], "maxTime")
            builds = [b for b in builds if time_key(b) <= hi]
        builds.sort(key=lambda b: (key(b), b.id), reverse=order.endswith("descending"))
        top = int_param(request, "$top", 1000) or 1000
        offset = decode_token(q["continuationToken"]) if q.get("continuationToken") else 0
        page = builds[offset:offset + top]
        headers = {}
        if offset + top < len(builds):
            headers["x-ms-continuationtoken"] = encode_token(offset + top)
        return list_response([self._build_json(project, b) for b in page], headers=headers)

    @staticmethod
    def _time_param(value: str, name: str) -> float:
        try:
            return parse_datetime(value)
        except ValueError:
            raise Answer(ado_error(400, f"The value '{value}' is not valid for parameter '{name}'.",
                                     "ArgumentException", namespace="System")) from None

    async def get_build(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self.auth.require_pat(request, BUILD_SCOPES)
        project = self._project_of(m)
        build = self.w._builds.get(int(m.group("build")))
        if build is None or build.project.lower() != project.name.lower():
            raise Answer(ado_error(404, f"The requested build {m.group('build')} could not be found.",
                                     "BuildNotFoundException",
                                     namespace="Microsoft.TeamFoundation.Build.WebApi"))
        return json_response(self._build_json(project, build))

    # --- vsrm: releases ----------------------------------------------------------------------

    def _release_json(self, project: Project, release: Release) -> dict[str, Any]:
        url = f"{self.w.vsrm_base_url}/{project.id}/_apis/Release/releases/{release.id}"
        return {"id": release.id, "name": release.name, "status": release.status,
                "createdOn": format_ado_datetime(release.created_on),
                "modifiedOn": format_ado_datetime(release.created_on),
                "modifiedBy": identity_ref(self.w), "createdBy": identity_ref(self.w),
                "variables": {}, "variableGroups": [],
                "releaseDefinition": {"id": release.definition_id, "name": release.definition_name,
                                      "path": "\\", "projectReference": None, "url": url, "_links": {}},
                "releaseDefinitionRevision": 1, "description": "", "reason": "schedule",
                "releaseNameFormat": "Release-$(rev:r)", "keepForever": False,
                "definitionSnapshotRevision": 1, "logsContainerUrl": f"{url}/logs", "url": url,
                "_links": {"self": {"href": url}}, "tags": [], "triggeringArtifactAlias": None,
                "projectReference": {"id": project.id, "name": None}, "properties": {}}

    async def releases(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self.auth.require_pat(request, RELEASE_SCOPES)
        project = self._project_of(m)
        releases = [r for r in self.w._releases.values() if r.project.lower() == project.name.lower()]
        releases.sort(key=lambda r: r.id, reverse=True)
        top = int_param(request, "$top", 50) or 50
        return list_response([self._release_json(project, r) for r in releases[:top]])

    async def deployments(self, request: web.Request, m: re.Match[str]) -> web.Response:
        self.auth.require_pat(request, RELEASE_SCOPES)
        project = self._project_of(m)
        deps = [d for d in self.w._deployments.values() if d.project.lower() == project.name.lower()]
        status = request.query.get("deploymentStatus")
        if status and status.lower() != "all":
            deps = [d for d in deps if d.status.lower() == status.lower()]
        deps.sort(key=lambda d: d.id, reverse=True)
        top = int_param(request, "$top", 50) or 50
        out = []
        for d in deps[:top]:
            release = self.w._releases.get(d.release_id)
            out.append({
                "id": d.id, "release": self._release_json(project, release) if release else None,
                "releaseDefinition": {"id": release.definition_id, "name": release.definition_name}
                if release else None,
                "deploymentStatus": d.status, "operationStatus": d.operation_status, "attempt": 1,
                "reason": "automated", "startedOn": format_ado_datetime(d.started_on),
                "completedOn": format_ado_datetime(d.completed_on) if d.completed_on else None,
                "queuedOn": format_ado_datetime(d.started_on), "requestedBy": identity_ref(self.w),
                "projectReference": {"id": project.id, "name": project.name},
            })
        return list_response(out)

