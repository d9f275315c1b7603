"""The fault matrix of issue 10 as data: every external call of the rotation saga and of the
exporter, crossed with {latency, 5xx, 429 + Retry-After, 401, connection refused, worker SIGKILL}.

Guarantees: every (call, fault) cell is exactly one :class:`Case` (run by a test in this
package, which asserts its :class:`Expect`) or one :class:`NotApplicable` (with the reason);
``tests/faults/test_matrix_table.py`` checks that, and that the "Fault matrix" section of
``docs/reliability.md`` is what :func:`markdown` prints, so the table and the tests never
drift. Print it with::

    PYTHONPATH=. .venv/bin/python -m tests.faults.matrix --markdown

A call is named by how the sandbox's fault table matches it (service, method, path regex,
searched in the path and the path + query): each regex matches patrol's requests only, never
those of the simulated KEDA, agents or pipeline, so a fault harms nobody but patrol.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from sandbox.scenarios import ScenarioParams

Component = Literal["saga", "exporter"]


@dataclass(frozen=True)
class Call:
    """One external call patrol makes, as the sandbox sees it."""

    id: str
    component: Component
    label: str                         # what a reader of the table sees
    service: str                       # sandbox service: ado, entra, keyvault, kube:<cluster>
    method: str | None
    path_regex: str
    token: str = ""                    # saga: the token whose rotation makes the call
    source: str = ""                   # exporter: the source (name prefix) that makes it
    host: str = ""                     # what "connection refused" closes: entra, vssps, org, kube, keyvault


class Fault(Enum):
    LATENCY = "latency"
    STATUS_5XX = "5xx"
    THROTTLE = "429"
    UNAUTHORIZED = "401"
    REFUSED = "refused"
    SIGKILL = "sigkill"


# How each column is made (the legend under the table says the same).
FAULT_HOW: dict[Fault, str] = {
    Fault.LATENCY: ("the request is held 0.5 s, then the connection is dropped unanswered (sandbox fault "
                    "`timeout`), as a client sees its read timeout fire; the server did not act"),
    Fault.STATUS_5XX: "503 twice, then normal answers (saga); 503 until cleared (exporter)",
    Fault.THROTTLE: "one 429 with `Retry-After: 1` and `X-RateLimit-*`",
    Fault.UNAUTHORIZED: "401 on every matching request until cleared",
    Fault.REFUSED: ("the client is pointed at a closed port for that host (every call to it is refused) "
                    "until the configuration is restored"),
    Fault.SIGKILL: ("a real `patrol worker` process is SIGKILLed while the sandbox holds the call (it answers, "
                    "and acts, 2 s after the call arrived, when the worker is gone); a new process starts on the "
                    "same state directory"),
}


class Expect(Enum):
    """What must happen; the tests assert each (see the module docstrings of the test files)."""

    # the saga
    RETRIED = "retried (request log: the fault, then a 2xx); the rotation succeeds"
    THROTTLED = "waits at least Retry-After, retried; the rotation succeeds"
    FAILS_CLEAN = ("the rotation fails before anything is delivered (no new PAT left active); after the "
                   "fault clears the next rotation succeeds")
    FAILS_SAFE = ("the rotation fails after delivery; every sink holds an active PAT, the previous one is "
                  "not revoked; the next rotation succeeds and revokes what is left")
    TOLERATED = "best effort: the failure is logged; the rotation succeeds"
    UNCONFIRMED = ("the rotation is done (the new PAT in every sink, the previous one revoked) but ends "
                   "failed at confirm, which cannot see KEDA's Events: a human checks the consumers")
    RESUMED = "the next worker resumes the rotation from the journal and it succeeds"
    PAUSED = ("the worker stops leading and pauses the rotation at the next step (nothing counted, every "
              "sink holds an active PAT); it leads again once the renewal succeeds, resumes the rotation and "
              "it succeeds")
    # the exporter
    SOURCE_UP = ("retried within the refresh (after Retry-After for a 429); the source stays up, its "
                 "values current")
    SOURCE_DOWN = "the source is down (its last values kept, the others up); up again once the fault clears"
    TOKEN_INVALID = ("`patrol_pat_valid` 0 for the probed tokens (ADO refuses them), the source up; 1 again "
                     "once the fault clears")


@dataclass(frozen=True)
class Case:
    call: Call
    fault: Fault
    expect: Expect

    @property
    def id(self) -> str:
        return f"{self.call.id}-{self.fault.value}"


@dataclass(frozen=True)
class NotApplicable:
    """A cell no case runs: the fault cannot happen there, or the case ``see`` runs that path."""

    call: Call
    fault: Fault
    reason: str
    see: str | None = None


# Names come from the sandbox's default world (no organisation or cluster name is written here).
WORLD = ScenarioParams()
CLUSTERS = tuple(c.name for c in WORLD.clusters)
# One cluster takes the faults: the other one shows a fault stays with its own sink.
FAULTED = WORLD.clusters[-1]
KUBE = f"kube:{FAULTED.name}"
ORG_PATS = r"(?i)/_apis/tokens/pats"
SECRET = rf"/namespaces/{FAULTED.namespace}/secrets/{FAULTED.secret}"
SCALEDJOB = rf"/namespaces/{FAULTED.namespace}/scaledjobs"
EVENTS = rf"/namespaces/{FAULTED.namespace}/events"
VAULT_SECRET = r"^/secrets/azure-devops-token"             # the daily-checks sink (sandbox/app.py)
# patrol's scope probe of vso.agentpools (`$top=1`); KEDA asks for `?poolID=`, agents `?poolName=`.
POOLS_PROBE = r"distributedtask/pools\?(%24|\$)top=1"

# -- the saga (the worker's calls, in the order a rotation makes them) --------------------------

ENTRA = Call("entra-token", "saga", "Entra token (patrol's Key Vault identity, the bot's sign-in)",
             "entra", "POST", r"/oauth2/v2\.0/token", token="daily-checks", host="entra")
SIGNIN = Call("kv-signin", "saga", "Key Vault: read the bot's sign-in secrets", "keyvault", "GET",
              r"^/secrets/(?!azure-devops-token)[^/?]+", token="daily-checks", host="keyvault")
SECRET_READ = Call("secret-read", "saga", "Kubernetes: read the Secret sink", KUBE, "GET", SECRET + "$",
                   token="keda", host="kube")
SCALEDJOB_READ = Call("scaledjob-read", "saga", "Kubernetes: read the ScaledJob", KUBE, "GET", SCALEDJOB,
                      token="keda", host="kube")
KV_GET = Call("kv-get", "saga", "Key Vault: read the sink secret", "keyvault", "GET", VAULT_SECRET,
              token="daily-checks", host="keyvault")
PATS_LIST = Call("pats-list", "saga", "ADO PAT API: list PATs", "ado", "GET", ORG_PATS, token="daily-checks",
                 host="vssps")
PATS_CREATE = Call("pats-create", "saga", "ADO PAT API: create the PAT", "ado", "POST", ORG_PATS,
                   token="daily-checks", host="vssps")
SECRET_PATCH = Call("secret-patch", "saga", "Kubernetes: write the Secret sink", KUBE, "PATCH", SECRET,
                    token="keda", host="kube")
KV_SET = Call("kv-set", "saga", "Key Vault: set the sink secret (new version)", "keyvault", "PUT",
              VAULT_SECRET, token="daily-checks", host="keyvault")
PROBE = Call("probe", "saga", "ADO: probe the new PAT's scopes (verify)", "ado", "GET", POOLS_PROBE,
             token="daily-checks", host="org")
JOBS_LIST = Call("jobs-list", "saga", "Kubernetes: list the agent Jobs (drain)", KUBE, "GET",
                 rf"/namespaces/{FAULTED.namespace}/jobs", token="keda", host="kube")
DEFINITIONS = Call("definitions", "saga", "ADO: find the pipeline's runs (drain)", "ado", "GET",
                   r"build/definitions", token="daily-checks", host="org")
EVENTS_LIST = Call("events-list", "saga", "Kubernetes: list KEDA's Events (revoke, confirm)", KUBE, "GET",
                   EVENTS, token="keda", host="kube")
PATS_REVOKE = Call("pats-revoke", "saga", "ADO PAT API: revoke the previous PAT", "ado", "DELETE", ORG_PATS,
                   token="keda", host="vssps")
LEASE = Call("lease", "saga",
             "Kubernetes: renew the worker's Lease (`worker.lease`; failing from delivery on, until cleared)",
             KUBE, "PUT", rf"/namespaces/{FAULTED.namespace}/leases/", token="keda", host="kube")
EVENT_CREATE = Call("event-create", "saga", "Kubernetes: record the PatRotated Event", KUBE, "POST", EVENTS,
                    token="keda", host="kube")

SAGA_CALLS = (ENTRA, SIGNIN, SECRET_READ, SCALEDJOB_READ, KV_GET, PATS_LIST, PATS_CREATE, SECRET_PATCH,
              KV_SET, PROBE, JOBS_LIST, DEFINITIONS, EVENTS_LIST, PATS_REVOKE, EVENT_CREATE, LEASE)

# -- the exporter (one source per call family) ---------------------------------------------------

X_ENTRA = Call("x-entra-token", "exporter", "Entra token (the PAT listing's bot sign-in)", "entra", "POST",
               r"/oauth2/v2\.0/token", source="pat-lifecycle/", host="entra")
X_PATS = Call("x-pats-list", "exporter", "ADO PAT API: list PATs (`pat-lifecycle/<org>`)", "ado", "GET",
              ORG_PATS, source="pat-lifecycle/", host="vssps")
X_PROBE = Call("x-probe", "exporter", "ADO: probe each sink's token (`validity/<org>`)", "ado", "GET",
               POOLS_PROBE, source="validity/", host="org")
X_AGENTS = Call("x-agents", "exporter", "ADO: agents of the pools (`agent-pools/<org>`)", "ado", "GET",
                r"distributedtask/pools/\d+/agents\?includeAssignedRequest", source="agent-pools/", host="org")
X_BUILDS = Call("x-builds", "exporter", "ADO: the pipeline's runs (`pipeline/<project>/<definition>`)",
                "ado", "GET", r"build/builds\?definitions=", source="pipeline/", host="org")
X_SECRETS = Call("x-secrets", "exporter", "Kubernetes: read the Secret sinks (`kubernetes/<cluster>`)",
                 KUBE, "GET", SECRET, source=f"kubernetes/{FAULTED.name}", host="kube")
X_SCALEDJOBS = Call("x-scaledjobs", "exporter", "Kubernetes: read the ScaledJobs (`keda/<cluster>`)", KUBE,
                    "GET", SCALEDJOB, source=f"keda/{FAULTED.name}", host="kube")
X_EVENTS = Call("x-events", "exporter", "Kubernetes: list KEDA's Events (`keda/<cluster>`)", KUBE, "GET",
                EVENTS, source=f"keda/{FAULTED.name}", host="kube")
X_KV = Call("x-kv-get", "exporter", "Key Vault: read the sink secret (`keyvault/<vault>`)", "keyvault", "GET",
            VAULT_SECRET, source="keyvault/", host="keyvault")

EXPORTER_CALLS = (X_ENTRA, X_PATS, X_PROBE, X_AGENTS, X_BUILDS, X_SECRETS, X_SCALEDJOBS, X_EVENTS, X_KV)
CALLS = SAGA_CALLS + EXPORTER_CALLS

F = Fault
E = Expect
_SAME_HOST = ("connection refused is per host, not per call: the {host} host is refused in `{row}-refused`, "
              "where the rotation meets it first")
_EXPORTER_KILL = ("the exporter keeps no state: a killed exporter re-reads every source at start, and "
                  "there is no saga to resume (its sources' faults are the other columns)")


def _same_host(call: Call, row: Call) -> NotApplicable:
    return NotApplicable(call, F.REFUSED, _SAME_HOST.format(host=call.host, row=row.id),
                         see=f"{row.id}-{F.REFUSED.value}")


CASES: tuple[Case, ...] = (
    # Entra
    Case(ENTRA, F.LATENCY, E.RETRIED),
    Case(ENTRA, F.STATUS_5XX, E.RETRIED),
    Case(ENTRA, F.THROTTLE, E.THROTTLED),
    Case(ENTRA, F.UNAUTHORIZED, E.FAILS_CLEAN),
    Case(ENTRA, F.REFUSED, E.FAILS_CLEAN),
    # Key Vault: the bot's sign-in secrets
    Case(SIGNIN, F.STATUS_5XX, E.RETRIED),
    Case(SIGNIN, F.UNAUTHORIZED, E.FAILS_CLEAN),
    # Kubernetes: Secret read
    Case(SECRET_READ, F.LATENCY, E.RETRIED),
    Case(SECRET_READ, F.STATUS_5XX, E.RETRIED),
    Case(SECRET_READ, F.THROTTLE, E.THROTTLED),
    Case(SECRET_READ, F.UNAUTHORIZED, E.FAILS_CLEAN),
    Case(SECRET_READ, F.REFUSED, E.FAILS_CLEAN),
    # Kubernetes: ScaledJob read
    Case(SCALEDJOB_READ, F.STATUS_5XX, E.RETRIED),
    Case(SCALEDJOB_READ, F.UNAUTHORIZED, E.FAILS_CLEAN),
    # Key Vault: sink read
    Case(KV_GET, F.LATENCY, E.RETRIED),
    Case(KV_GET, F.STATUS_5XX, E.RETRIED),
    Case(KV_GET, F.THROTTLE, E.THROTTLED),
    Case(KV_GET, F.UNAUTHORIZED, E.FAILS_CLEAN),
    Case(KV_GET, F.REFUSED, E.FAILS_CLEAN),
    # PAT API: list
    Case(PATS_LIST, F.LATENCY, E.RETRIED),
    Case(PATS_LIST, F.STATUS_5XX, E.RETRIED),
    Case(PATS_LIST, F.THROTTLE, E.THROTTLED),
    Case(PATS_LIST, F.UNAUTHORIZED, E.FAILS_CLEAN),
    Case(PATS_LIST, F.REFUSED, E.FAILS_CLEAN),
    # PAT API: create
    Case(PATS_CREATE, F.LATENCY, E.RETRIED),
    Case(PATS_CREATE, F.STATUS_5XX, E.RETRIED),
    Case(PATS_CREATE, F.THROTTLE, E.THROTTLED),
    Case(PATS_CREATE, F.UNAUTHORIZED, E.FAILS_CLEAN),
    Case(PATS_CREATE, F.SIGKILL, E.RESUMED),
    # Kubernetes: Secret write
    Case(SECRET_PATCH, F.LATENCY, E.RETRIED),
    Case(SECRET_PATCH, F.STATUS_5XX, E.RETRIED),
    Case(SECRET_PATCH, F.THROTTLE, E.THROTTLED),
    Case(SECRET_PATCH, F.UNAUTHORIZED, E.FAILS_SAFE),
    Case(SECRET_PATCH, F.SIGKILL, E.RESUMED),
    # Key Vault: sink write
    Case(KV_SET, F.LATENCY, E.RETRIED),
    Case(KV_SET, F.STATUS_5XX, E.RETRIED),
    Case(KV_SET, F.THROTTLE, E.THROTTLED),
    Case(KV_SET, F.UNAUTHORIZED, E.FAILS_CLEAN),
    Case(KV_SET, F.SIGKILL, E.RESUMED),
    # ADO: probe the new PAT
    Case(PROBE, F.STATUS_5XX, E.RETRIED),
    Case(PROBE, F.UNAUTHORIZED, E.FAILS_SAFE),
    Case(PROBE, F.REFUSED, E.FAILS_SAFE),
    # Kubernetes: agent Jobs (drain)
    Case(JOBS_LIST, F.STATUS_5XX, E.RETRIED),
    # ADO: pipeline runs (drain)
    Case(DEFINITIONS, F.STATUS_5XX, E.RETRIED),
    # Kubernetes: Events (revoke baseline, confirm)
    Case(EVENTS_LIST, F.STATUS_5XX, E.RETRIED),
    Case(EVENTS_LIST, F.UNAUTHORIZED, E.UNCONFIRMED),
    # PAT API: revoke
    Case(PATS_REVOKE, F.LATENCY, E.RETRIED),
    Case(PATS_REVOKE, F.STATUS_5XX, E.RETRIED),
    Case(PATS_REVOKE, F.THROTTLE, E.THROTTLED),
    Case(PATS_REVOKE, F.UNAUTHORIZED, E.FAILS_SAFE),
    Case(PATS_REVOKE, F.SIGKILL, E.RESUMED),
    # Kubernetes: record the Event
    Case(EVENT_CREATE, F.UNAUTHORIZED, E.TOLERATED),
    # Kubernetes: the Lease (made to fail right after delivery)
    Case(LEASE, F.LATENCY, E.PAUSED),
    Case(LEASE, F.STATUS_5XX, E.PAUSED),
    Case(LEASE, F.THROTTLE, E.PAUSED),
    Case(LEASE, F.UNAUTHORIZED, E.PAUSED),
    # -- the exporter
    Case(X_ENTRA, F.STATUS_5XX, E.SOURCE_DOWN),
    Case(X_ENTRA, F.UNAUTHORIZED, E.SOURCE_DOWN),
    Case(X_ENTRA, F.REFUSED, E.SOURCE_DOWN),
    Case(X_PATS, F.LATENCY, E.SOURCE_UP),
    Case(X_PATS, F.STATUS_5XX, E.SOURCE_DOWN),
    Case(X_PATS, F.THROTTLE, E.SOURCE_UP),
    Case(X_PATS, F.UNAUTHORIZED, E.SOURCE_DOWN),
    Case(X_PATS, F.REFUSED, E.SOURCE_DOWN),
    Case(X_PROBE, F.LATENCY, E.SOURCE_UP),
    Case(X_PROBE, F.STATUS_5XX, E.SOURCE_DOWN),
    Case(X_PROBE, F.THROTTLE, E.SOURCE_UP),
    Case(X_PROBE, F.UNAUTHORIZED, E.TOKEN_INVALID),
    Case(X_PROBE, F.REFUSED, E.SOURCE_DOWN),
    Case(X_AGENTS, F.LATENCY, E.SOURCE_UP),
    Case(X_AGENTS, F.STATUS_5XX, E.SOURCE_DOWN),
    Case(X_AGENTS, F.THROTTLE, E.SOURCE_UP),
    Case(X_AGENTS, F.UNAUTHORIZED, E.SOURCE_DOWN),
    Case(X_BUILDS, F.LATENCY, E.SOURCE_UP),
    Case(X_BUILDS, F.STATUS_5XX, E.SOURCE_DOWN),
    Case(X_BUILDS, F.THROTTLE, E.SOURCE_UP),
    Case(X_BUILDS, F.UNAUTHORIZED, E.SOURCE_DOWN),
    Case(X_SECRETS, F.LATENCY, E.SOURCE_UP),
    Case(X_SECRETS, F.STATUS_5XX, E.SOURCE_DOWN),
    Case(X_SECRETS, F.THROTTLE, E.SOURCE_UP),
    Case(X_SECRETS, F.UNAUTHORIZED, E.SOURCE_DOWN),
    Case(X_SECRETS, F.REFUSED, E.SOURCE_DOWN),
    Case(X_SCALEDJOBS, F.LATENCY, E.SOURCE_UP),
    Case(X_SCALEDJOBS, F.STATUS_5XX, E.SOURCE_DOWN),
    Case(X_SCALEDJOBS, F.THROTTLE, E.SOURCE_UP),
    Case(X_SCALEDJOBS, F.UNAUTHORIZED, E.SOURCE_DOWN),
    Case(X_EVENTS, F.STATUS_5XX, E.SOURCE_DOWN),
    Case(X_EVENTS, F.UNAUTHORIZED, E.SOURCE_DOWN),
    Case(X_KV, F.LATENCY, E.SOURCE_UP),
    Case(X_KV, F.STATUS_5XX, E.SOURCE_DOWN),
    Case(X_KV, F.THROTTLE, E.SOURCE_UP),
    Case(X_KV, F.UNAUTHORIZED, E.SOURCE_DOWN),
    Case(X_KV, F.REFUSED, E.SOURCE_DOWN),
)

def _same_path(call: Call, fault: Fault, row: Call, why: str) -> NotApplicable:
    return NotApplicable(call, fault, f"the same client and retry path as `{row.id}-{fault.value}` ({why})",
                         see=f"{row.id}-{fault.value}")


_KUBE_CLIENT = "core.kube.KubeCluster: urllib3 retries a dropped GET, the saga's API backoff the rest"
_KV_CLIENT = "core.keyvault over azure-core, then the saga's API backoff"
_ADO_CLIENT = "core._ado_session's backoff, Retry-After honoured"

NOT_APPLICABLE: tuple[NotApplicable, ...] = (
    # Entra
    NotApplicable(ENTRA, F.SIGKILL, "the first call of a rotation, before anything is created: a worker killed "
                                    "there leaves only the plan journaled, and the next one starts over "
                                    "(`pats-create-sigkill` is the first kill with an effect)"),
    # the bot's sign-in secrets
    _same_path(SIGNIN, F.LATENCY, KV_GET, _KV_CLIENT),
    _same_path(SIGNIN, F.THROTTLE, KV_GET, _KV_CLIENT),
    _same_host(SIGNIN, KV_GET),
    NotApplicable(SIGNIN, F.SIGKILL, "read before anything is created: as `entra-token` x sigkill"),
    # Secret read
    NotApplicable(SECRET_READ, F.SIGKILL, "a read: killed in plan, nothing was changed; killed in verify or "
                                          "revoke, the journal holds what `pats-revoke-sigkill` resumes"),
    # ScaledJob read
    _same_path(SCALEDJOB_READ, F.LATENCY, SECRET_READ, _KUBE_CLIENT),
    _same_path(SCALEDJOB_READ, F.THROTTLE, SECRET_READ, _KUBE_CLIENT),
    _same_host(SCALEDJOB_READ, SECRET_READ),
    NotApplicable(SCALEDJOB_READ, F.SIGKILL, "a read in plan and switch (a refresh switch writes nothing): "
                                             "resumed as after `secret-patch-sigkill`, the call before it"),
    # Key Vault sink read
    NotApplicable(KV_GET, F.SIGKILL, "a read (plan, verify, revoke): resumed as after `kv-set-sigkill`"),
    # PAT list
    NotApplicable(PATS_LIST, F.SIGKILL, "a read before create: nothing exists yet to resume "
                                        "(`pats-create-sigkill` is the first call with an effect)"),
    # PAT create
    _same_host(PATS_CREATE, PATS_LIST),
    # Secret write
    _same_host(SECRET_PATCH, SECRET_READ),
    # Key Vault write
    _same_host(KV_SET, KV_GET),
    # probe
    _same_path(PROBE, F.LATENCY, PATS_LIST, _ADO_CLIENT),
    _same_path(PROBE, F.THROTTLE, PATS_LIST, _ADO_CLIENT),
    NotApplicable(PROBE, F.SIGKILL, "a read in verify, after delivery: resumed as after "
                                    "`secret-patch-sigkill`"),
    # Jobs (drain)
    _same_path(JOBS_LIST, F.LATENCY, SECRET_READ, _KUBE_CLIENT),
    _same_path(JOBS_LIST, F.THROTTLE, SECRET_READ, _KUBE_CLIENT),
    NotApplicable(JOBS_LIST, F.UNAUTHORIZED, "not run: a drain round that cannot list the Jobs counts them as "
                                             "running (`jobs-list-5xx` shows the round waiting), so a lasting "
                                             "401 keeps the previous PAT until the drain maximum (the Jobs' "
                                             "activeDeadlineSeconds, when none can still run), then revokes"),
    _same_host(JOBS_LIST, SECRET_READ),
    NotApplicable(JOBS_LIST, F.SIGKILL, "the drain's start is journaled (`delivered-at`): a kill during the "
                                        "drain resumes the same drain, as after `pats-revoke-sigkill`"),
    # build definitions (drain)
    _same_path(DEFINITIONS, F.LATENCY, PATS_LIST, _ADO_CLIENT),
    _same_path(DEFINITIONS, F.THROTTLE, PATS_LIST, _ADO_CLIENT),
    NotApplicable(DEFINITIONS, F.UNAUTHORIZED, "not run: as `jobs-list` x 401, a drain round that cannot list "
                                               "the runs waits, up to the pipeline's timeout"),
    _same_host(DEFINITIONS, PROBE),
    NotApplicable(DEFINITIONS, F.SIGKILL, "as `jobs-list` x sigkill"),
    # Events
    _same_path(EVENTS_LIST, F.LATENCY, SECRET_READ, _KUBE_CLIENT),
    _same_path(EVENTS_LIST, F.THROTTLE, SECRET_READ, _KUBE_CLIENT),
    _same_host(EVENTS_LIST, SECRET_READ),
    NotApplicable(EVENTS_LIST, F.SIGKILL, "first listed at the revoke step, to take KEDA's baseline before the "
                                          "revoke: a kill there is a kill just before the revoke, as "
                                          "`pats-revoke-sigkill`", see="pats-revoke-sigkill"),
    # revoke
    _same_host(PATS_REVOKE, PATS_LIST),
    # Event create
    NotApplicable(EVENT_CREATE, F.LATENCY, "best effort, not retried: any failure is `event-create-401`'s path",
                  see="event-create-401"),
    NotApplicable(EVENT_CREATE, F.STATUS_5XX, "best effort, not retried: any failure is `event-create-401`'s "
                                              "path", see="event-create-401"),
    NotApplicable(EVENT_CREATE, F.THROTTLE, "best effort, not retried: any failure is `event-create-401`'s path",
                  see="event-create-401"),
    _same_host(EVENT_CREATE, SECRET_READ),
    NotApplicable(EVENT_CREATE, F.SIGKILL, "the last call: every effect is done; the resumed rotation only "
                                           "confirms and records again, as after `pats-revoke-sigkill`"),
    # Lease
    NotApplicable(LEASE, F.REFUSED, "a replica that cannot reach the Lease's API server never leads: it starts "
                                    "nothing (the webhook answers 503); once leading, a renewal that fails is "
                                    "`lease-5xx`", see="lease-5xx"),
    NotApplicable(LEASE, F.SIGKILL, "a killed leader stops renewing: its Lease expires and the next worker leads "
                                    "and resumes, as after `pats-revoke-sigkill` (two replicas: tests/e2e "
                                    "test_two_workers_one_lease)", see="pats-revoke-sigkill"),
    # -- the exporter
    NotApplicable(X_ENTRA, F.LATENCY, "azure-identity retries a dropped token request (azure-core); the "
                                      "source's own retry is `x-pats-list-latency`", see="x-pats-list-latency"),
    NotApplicable(X_ENTRA, F.THROTTLE, "Entra's 429 takes the same azure-core retry and MSAL throttle as its "
                                       "503", see="x-entra-token-5xx"),
    NotApplicable(X_AGENTS, F.REFUSED, "same host as `x-probe` (the organization URL)", see="x-probe-refused"),
    NotApplicable(X_BUILDS, F.REFUSED, "same host as `x-probe` (the organization URL)", see="x-probe-refused"),
    NotApplicable(X_SCALEDJOBS, F.REFUSED, "same host as `x-secrets` (the API server)", see="x-secrets-refused"),
    NotApplicable(X_EVENTS, F.LATENCY, "same client and source as `x-scaledjobs-latency`",
                  see="x-scaledjobs-latency"),
    NotApplicable(X_EVENTS, F.THROTTLE, "same client and source as `x-scaledjobs-429`", see="x-scaledjobs-429"),
    NotApplicable(X_EVENTS, F.REFUSED, "same host as `x-secrets` (the API server)", see="x-secrets-refused"),
    *(NotApplicable(call, F.SIGKILL, _EXPORTER_KILL) for call in EXPORTER_CALLS),
)


def cell(call: Call, fault: Fault) -> Case | NotApplicable:
    found = [c for c in (*CASES, *NOT_APPLICABLE) if c.call == call and c.fault == fault]
    if len(found) != 1:
        raise LookupError(f"{call.id} x {fault.value}: {len(found)} entries, expected exactly 1")
    return found[0]


_SHORT: dict[Expect, str] = {
    E.RETRIED: "retried ✓", E.THROTTLED: "waits, retried ✓", E.FAILS_CLEAN: "fails clean, next ✓",
    E.FAILS_SAFE: "fails safe, next ✓", E.TOLERATED: "tolerated ✓", E.UNCONFIRMED: "unconfirmed ✓",
    E.RESUMED: "resumed ✓", E.PAUSED: "paused, resumed ✓",
    E.SOURCE_UP: "up ✓", E.SOURCE_DOWN: "down, recovers ✓",
    E.TOKEN_INVALID: "valid 0, recovers ✓",
}


def markdown() -> str:
    """The "Fault matrix" section body of docs/reliability.md (the table and its legend)."""
    faults = list(Fault)
    lines = ["| component | call | " + " | ".join(f.value for f in faults) + " |",
             "|---|---|" + "---|" * len(faults)]
    for call in CALLS:
        cells = []
        for fault in faults:
            entry = cell(call, fault)
            if isinstance(entry, Case):
                cells.append(_SHORT[entry.expect])
            else:
                cells.append(f"see `{entry.see}`" if entry.see else "n/a")
        lines.append(f"| {call.component} | {call.label} | " + " | ".join(cells) + " |")
    lines += ["", f"{len(CASES)} cases run; {len(NOT_APPLICABLE)} cells run no case of their own: *see* names "
              "the case that runs the same path, *n/a* a fault that cannot happen there (reasons below).", "",
              "Columns (how each fault is made):", ""]
    lines += [f"- **{f.value}**: {FAULT_HOW[f]}." for f in faults]
    lines += ["", "Outcomes (what each case asserts besides the invariants above):", ""]
    lines += [f"- **{_SHORT[e]}**: {e.value}." for e in Expect]
    lines += ["", "Cells without a case of their own, and why:", ""]
    lines += [f"- `{n.call.id}` x {n.fault.value}: {n.reason}." for n in NOT_APPLICABLE
              if not (n.fault is F.SIGKILL and n.call.component == "exporter")]
    lines.append(f"- every exporter call x sigkill: {_EXPORTER_KILL}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.matrix",
                                     description="Print the fault matrix of issue 10.")
    parser.add_argument("--markdown", action="store_true", help="the table for docs/reliability.md")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
    else:
        for case in CASES:
            print(f"{case.id}: {case.expect.value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
