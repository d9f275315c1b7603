"""Tenant conditions a real Entra tenant imposes on a sign-in, switchable for tests: MFA required,
Conditional Access blocks, missing consent, public client flows disabled.

Guarantees: each condition answers exactly as Entra's token endpoint does for it (status,
``error``, ``AADSTS`` code in ``error_codes`` and ``error_description``, ``suberror``, and
``claims`` where Entra sends one); a condition applies only to the grants it affects in reality,
so the way out a real operator has (device-code sign-in for MFA, an interactive consent) works
here too. Nothing here holds a credential.

Sources for the shapes (docs/external-apis.md, "Entra sign-in as the bot"):

* Microsoft Learn "Microsoft Entra authentication and authorization error codes"
  (reference-error-codes): 50076 UserStrongAuthClientAuthNRequired, 50079
  UserStrongAuthEnrollmentRequired, 53003 BlockedByConditionalAccess, 65001
  DelegationDoesNotExist, 7000218 InvalidClient (``client_assertion`` or ``client_secret``
  required: what a public client gets when the app registration does not allow public client
  flows).
* Microsoft Learn "Microsoft identity platform and OAuth 2.0 ROPC": ROPC cannot satisfy MFA or
  consent; those answer an error instead of a token.
* Real ROPC answers for 50076 (``az login --username``, Azure CLI issues; Microsoft Q&A):
  ``{"error": "invalid_grant", ..., "error_codes": [50076], ..., "suberror": "basic_action"}``.
  MSAL's suberror values (``basic_action``, ``additional_action``, ``message_only``,
  ``consent_required``, ``user_password_expired``, ``bad_token``, ``client_mismatch``) tell a
  client whether an interactive sign-in can fix the condition.
* Conditional Access blocks carry ``claims`` naming the policies (``capolids``), and
  ``suberror: message_only`` (nothing the user can do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

FailureKind = Literal["mfa_required", "mfa_enrollment_required", "conditional_access_blocked",
                      "consent_missing", "public_client_flows_disabled"]
USER_KINDS: tuple[FailureKind, ...] = ("mfa_required", "mfa_enrollment_required", "conditional_access_blocked",
                                       "consent_missing")
CLIENT_KINDS: tuple[FailureKind, ...] = ("public_client_flows_disabled",)
ALL_PUBLIC_CLIENTS = "*"
# A fixed, made-up Conditional Access policy id for the claims challenge of a 53003 answer.
CA_POLICY_ID = "6f7b1c3e-0d2a-4c55-9b8e-2f6a1d9c4e70"

Grant = Literal["password", "refresh_token", "device_code"]


@dataclass(frozen=True)
class TenantError:
    """One token-endpoint error, in the fields Entra answers with."""

    status: int
    error: str
    code: int
    description: str
    suberror: str | None = None
    claims: str | None = None


@dataclass
class TenantConditions:
    """Which conditions are on, for which users (by object id) and which public clients."""

    users: dict[str, set[FailureKind]] = field(default_factory=dict)
    clients: set[str] = field(default_factory=set)          # client ids, or ALL_PUBLIC_CLIENTS

    def set_user(self, oid: str, kind: FailureKind) -> None:
        if kind not in USER_KINDS:
            raise ValueError(f"{kind!r} is not a user condition; user conditions: {', '.join(USER_KINDS)}")
        self.users.setdefault(oid, set()).add(kind)

    def set_client(self, client_id: str) -> None:
        self.clients.add(client_id)

    def clear(self, kind: FailureKind | None = None) -> None:
        """Turn one kind of condition off everywhere (or every condition, with None)."""
        if kind is None or kind in CLIENT_KINDS:
            self.clients.clear()
        for kinds in self.users.values():
            if kind is None:
                kinds.clear()
            else:
                kinds.discard(kind)

    def to_list(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"kind": k, "user_oid": oid}
                                     for oid, kinds in sorted(self.users.items()) for k in sorted(kinds)]
        out += [{"kind": "public_client_flows_disabled", "client_id": c} for c in sorted(self.clients)]
        return out

    def check_client(self, client_id: str, *, public: bool) -> TenantError | None:
        """Client authentication: a public client whose registration does not allow public client
        flows is treated as confidential, so Entra asks for the secret it does not have."""
        if public and (client_id in self.clients or ALL_PUBLIC_CLIENTS in self.clients):
            return TenantError(401, "invalid_client", 7000218,
                               "The request body must contain the following parameter: 'client_assertion' or "
                               "'client_secret'.")
        return None

    def check_user(self, oid: str, *, grant: Grant, interactive: bool, client_id: str,
                   resource: str) -> TenantError | None:
        """After the user's credentials are accepted: a Conditional Access block stops every
        grant; MFA and missing consent stop what comes from a non-interactive sign-in (ROPC, or a
        refresh token ROPC issued), while a device-code sign-in does MFA and shows the consent
        prompt in the browser, so it and the refresh tokens it issues pass (``interactive``)."""
        kinds = self.users.get(oid, set())
        if "conditional_access_blocked" in kinds:
            claims = json.dumps({"access_token": {"capolids": {"essential": True, "values": [CA_POLICY_ID]}}},
                                separators=(",", ":"))
            return TenantError(400, "invalid_grant", 53003,
                               "Access has been blocked by Conditional Access policies. The access policy does "
                               "not allow token issuance.", suberror="message_only", claims=claims)
        if not interactive and "mfa_enrollment_required" in kinds:
            return TenantError(400, "invalid_grant", 50079,
                               "Due to a configuration change made by your administrator, or because you moved "
                               "to a new location, you must enroll in multi-factor authentication to access "
                               f"'{resource}'.", suberror="basic_action")
        if not interactive and "mfa_required" in kinds:
            return TenantError(400, "invalid_grant", 50076,
                               "Due to a configuration change made by your administrator, or because you moved "
                               "to a new location, you must use multi-factor authentication to access "
                               f"'{resource}'.", suberror="basic_action")
        if not interactive and "consent_missing" in kinds:
            return TenantError(400, "invalid_grant", 65001,
                               f"The user or administrator has not consented to use the application with ID "
                               f"'{client_id}' named 'patrol'. Send an interactive authorization request for "
                               "this user and resource.", suberror="consent_required")
        return None
