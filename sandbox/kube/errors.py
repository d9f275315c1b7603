"""Errors answered as ``Status`` objects, worded as apimachinery's ``errors.New*`` words them.

Guarantees: code, reason, message and details are those the real API server sends for the same
failure, because patrol's adapter maps them (through the real client) to its own error classes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.kube.types import JSON, ResourceType

# Status errors (apimachinery errors.New*)
# ---------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> JSON:
        body: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": self.message, "reason": self.reason}
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def status_details(rt: ResourceType, name: str) -> JSON:
    d: JSON = {"name": name}
    if rt.group:
        d["group"] = rt.group
    d["kind"] = rt.plural
    return d


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f"{rt.group_resource} {json.dumps(name)} not found", status_details(rt, name))


def conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409, "Conflict",
        f"Operation cannot be fulfilled on {rt.group_resource} {json.dumps(name)}: the object has been "
        "modified; please apply your changes to the latest version and try again",
        status_details(rt, name),
    )


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f"{rt.group_resource} {json.dumps(name)} already exists",
                    status_details(rt, name))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


@dataclass(frozen=True)
class FieldError:
    """A ``field.Error``: ``<field>: <Type>: <value>: <detail>``."""

    field: str
    type: str           # "Invalid value", "Required value", "Forbidden", ...
    detail: str = ""
    value: Any = None
    has_value: bool = False
    rendered: str | None = None      # the value exactly as Go prints it, when not a string


    @property
    def cause_reason(self) -> str:
        return {"Invalid value": "FieldValueInvalid", "Required value": "FieldValueRequired",
                "Forbidden": "FieldValueForbidden", "Unsupported value": "FieldValueNotSupported"
                }.get(self.type, "FieldValueInvalid")

    def body(self) -> str:
        s = self.type
        if self.has_value:
            v = self.value
            rendered = self.rendered if self.rendered is not None else (
                json.dumps(v) if isinstance(v, str) else str(v))
            s += f": {rendered}"
        if self.detail:
            s += f": {self.detail}"
        return s

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def invalid(qualified_kind: str, name: str, errors: Sequence[FieldError], group: str = "",
            kind: str = "") -> ApiError:
    agg = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    details: JSON = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if kind:
        details["kind"] = kind
    details["causes"] = [{"reason": e.cause_reason, "message": e.body(), "field": e.field} for e in errors]
    return ApiError(422, "Invalid", f"{qualified_kind} {json.dumps(name)} is invalid: {agg}", details)


def invalid_for(rt: ResourceType, name: str, errors: Sequence[FieldError]) -> ApiError:
    return invalid(rt.qualified_kind, name, errors, group=rt.group, kind=rt.kind)


class DecodeError(Exception):
    """The body could not be turned into a typed object (Go's decode step)."""

def no_route() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def method_not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed",
                    "the server does not allow this method on the requested resource", {})


def bad_rv(rv: str) -> ApiError:
    return bad_request(f'invalid resource version: strconv.ParseUint: parsing "{rv}": invalid syntax')


def cannot_handle(rt: ResourceType, exc: Exception) -> ApiError:
    """transformDecodeError: how a body the decoder refused is reported (400)."""
    return bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {exc}')


def precondition_failed(rt: ResourceType, name: str, what: str) -> ApiError:
    return ApiError(409, "Conflict", f"Operation cannot be fulfilled on {rt.group_resource} "
                    f"{json.dumps(name)}: Precondition failed: {what}", status_details(rt, name))
