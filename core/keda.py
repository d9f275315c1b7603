"""What KEDA's azure-pipelines scaler says when Azure DevOps refuses its credential.

KEDA reports every failed poll as a ``KEDAScalerFailed`` event whose message is the raw Go error
(API-CONTRACTS §4.2). The exporter counts the authentication failures among them and the worker
checks, after switching a consumer to a new PAT, that no new ones appear; both must agree on
what counts, so the classification lives here once.
"""

from __future__ import annotations

import re

AUTH_FAILURE_PATTERNS: tuple[re.Pattern[str], ...] = (
    # "the Azure DevOps REST API returned error. urlString: <url> status: 401 response: <body>"
    re.compile(r"\bstatus:?\s*(401|403|203)\b"),
    # a 2xx HTML sign-in page decoded as JSON (ADO without X-TFS-FedAuthRedirect: Suppress)
    re.compile(r"invalid character '<' looking for beginning of value"),
    re.compile(r"Cannot unmarshal ADO JobRequests API response"),
    # ADO's own refusal texts, when a 401 body is echoed: TF400813 (not authorized),
    # VS30063 (scope), and the expired-PAT service error
    re.compile(r"\bTF400813\b|\bVS30063\b|Personal Access Token used has expired"),
)


def is_auth_failure(message: str) -> bool:
    """Whether a ``KEDAScalerFailed`` message says ADO did not accept the credential."""
    return any(p.search(message) for p in AUTH_FAILURE_PATTERNS)
