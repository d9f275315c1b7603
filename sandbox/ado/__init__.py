"""A faithful local Azure DevOps: the org (dev.azure.com), vssps and vsrm paths patrol and KEDA use.

Where to look: :mod:`~sandbox.ado.model` holds the world's state and what ADO does to it over
time (PATs expiring, revoked, retired; jobs assigned); :mod:`~sandbox.ado.records` its records;
:mod:`~sandbox.ado.auth` who may call;
:mod:`~sandbox.ado.pats_api`, :mod:`~sandbox.ado.agents_api` and :mod:`~sandbox.ado.builds_api`
the wire format of each API; :mod:`~sandbox.ado.app` the routing; :mod:`~sandbox.ado.timefmt`
ADO's date formats. This package re-exports what the rest of the sandbox and the tests import.
"""

from sandbox.ado.model import (
    ADO_AUDIENCES,
    ADO_RESOURCE_ID,
    EXPIRED_MESSAGE,
    GLOBAL_PAT_CUTOFF,
    AdoWorld,
    PrincipalLike,
)
from sandbox.ado.records import Agent, Build, JobRequest, Pat, PatAuth, PatPolicy, Pool
from sandbox.ado.timefmt import ado_time, format_ado_datetime, format_ticks_datetime, parse_datetime

__all__ = [
    "ADO_AUDIENCES",
    "ADO_RESOURCE_ID",
    "EXPIRED_MESSAGE",
    "GLOBAL_PAT_CUTOFF",
    "AdoWorld",
    "Agent",
    "Build",
    "JobRequest",
    "Pat",
    "PatAuth",
    "PatPolicy",
    "Pool",
    "PrincipalLike",
    "ado_time",
    "format_ado_datetime",
    "format_ticks_datetime",
    "parse_datetime",
]
