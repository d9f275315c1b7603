"""PAT expiry: one PAT Lifecycle API listing per organization, matched to configured tokens.

Cost grows with organizations, not tokens: one paged listing of the bot's active PATs serves
every token of the organization. The listing is kept whole in the snapshot and matched at
collect time against the *current* sink readings, so a rotation that changes what a sink holds
is reflected as soon as the sink is re-read, without waiting for the next listing.

Matching, per token, in order:

1. the ``authorizationId`` patrol recorded in the token's sinks (Key Vault tag, Secret
   annotation); several sinks holding different PATs report the earliest expiry (the copy that
   breaks first);
2. else the newest active PAT named ``patrol-<token>-...`` (patrol's display-name convention);
3. else the expiry written in a sink (Key Vault ``exp``, Secret annotation ``patrol.io/expiry``),
   again the earliest, with ``source`` saying which.

``patrol_pat_renewal_timestamp_seconds`` is that expiry minus the token's ``renew_before``.

A token patrol cannot tie to a PAT (a hand-pasted token: no ``authorizationId`` in any sink, no
PAT named by patrol's convention) is *unmanaged*: ``patrol_pat_managed`` is 0 and the alert
``PatUnmanaged`` asks the operator to run ``patrol adopt``. Its expiry series is then absent,
not guessed (rule 3 still reports an expiry a sink records): a guessed expiry would feed the
renewal and expiry alerts, and the worker would rotate on a guess. ``patrol_pat_valid`` keeps
reporting whether the token authenticates. ``patrol_pat_global`` is 1 for a token whose PAT is
a global (all organizations) PAT, which stopped authenticating on 2026-12-01.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from core import config
from core.ado import PatInfo
from exporter.fanout import Fanout
from exporter.sinks import SinkBoard
from exporter.source import SourceCollector

EXPIRY = "patrol_pat_expiry_timestamp_seconds"
RENEWAL = "patrol_pat_renewal_timestamp_seconds"
MANAGED = "patrol_pat_managed"
GLOBAL = "patrol_pat_global"


class PatLister(Protocol):
    """:class:`core.ado.PatLifecycleClient` as the exporter uses it."""

    def list(self, display_filter: Literal["active", "revoked", "expired", "all"] = "active", *,
             name_prefix: str | None = None) -> builtins.list[PatInfo]: ...


@dataclass(frozen=True)
class Expiry:
    when: datetime
    source: Literal["lifecycle-api", "keyvault", "annotation"]


def display_name_prefix(token: str) -> str:
    return f"patrol-{token}-"


def held_pats(token: config.Token, pats: Mapping[str, PatInfo] | None,
              board: SinkBoard) -> tuple[PatInfo, ...]:
    """The active PATs the token's sinks hold, as far as patrol can tell: the ``authorizationId``
    recorded in the sinks, else the newest PAT named by patrol's convention (rules 1 and 2)."""
    if pats is None:
        return ()
    readings = [r for r in (board.get(s.id) for s in token.sinks) if r is not None]
    named = tuple(pats[r.authorization_id] for r in readings
                  if r.authorization_id and r.authorization_id in pats)
    if named:
        return named
    prefix = display_name_prefix(token.name)
    by_name = [p for p in pats.values() if p.display_name.startswith(prefix)]
    if by_name:
        return (max(by_name, key=lambda p: (p.valid_from, p.valid_to)),)
    return ()


def is_managed(token: config.Token, pats: Mapping[str, PatInfo] | None, board: SinkBoard) -> bool | None:
    """Whether patrol knows which PAT the token's sinks hold; None while no sink has been read
    holding a token (nothing to adopt yet, or not read yet)."""
    readings = [r for r in (board.get(s.id) for s in token.sinks) if r is not None]
    if not any(r.value is not None for r in readings):
        return None
    if any(r.authorization_id for r in readings):
        return True
    return bool(held_pats(token, pats, board))


def match_expiry(token: config.Token, pats: Mapping[str, PatInfo] | None,
                 board: SinkBoard) -> Expiry | None:
    """The token's expiry by the rules in the module docstring (pure but for the board read)."""
    readings = [r for r in (board.get(s.id) for s in token.sinks) if r is not None]
    held = held_pats(token, pats, board)
    if held:
        return Expiry(min(p.valid_to for p in held), "lifecycle-api")
    fallbacks = [r for r in readings if r.expires_at is not None]
    if fallbacks:
        when, source = min((r.expires_at, r.expiry_source) for r in fallbacks if r.expires_at is not None)
        return Expiry(when, source)
    return None


class PatExpiry(SourceCollector):
    """Source ``pat-lifecycle/<organization>``."""

    def __init__(self, organization: str, tokens: Sequence[config.Token], pats: PatLister, *,
                 board: SinkBoard, fanout: Fanout, interval: float,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(f"pat-lifecycle/{organization}", interval, clock=clock, monotonic=monotonic)
        self.organization = organization
        self.tokens = tuple(t for t in tokens if t.organization == organization)
        self._pats = pats
        self._board = board
        self._fanout = fanout
        self._listing: Mapping[str, PatInfo] | None = None     # None until a listing succeeded

    def fetch(self) -> None:
        listing = self._fanout.call(lambda: self._pats.list("active"))
        self._listing = {p.authorization_id: p for p in listing}

    def samples(self) -> Iterable[Metric]:
        listing = self._listing
        expiry = GaugeMetricFamily(EXPIRY, "PAT validTo as a Unix timestamp; source says where it was read",
                                   labels=["token", "organization", "source"])
        renewal = GaugeMetricFamily(RENEWAL, "When rotation of the PAT is due: expiry minus renew_before",
                                    labels=["token", "organization"])
        managed = GaugeMetricFamily(MANAGED, "1 if patrol knows which PAT the token's sinks hold; "
                                    "0: a hand-pasted token, run patrol adopt", labels=["token", "organization"])
        global_ = GaugeMetricFamily(GLOBAL, "1 if the token's PAT is valid for all organizations (a global "
                                    "PAT, retired 2026-12-01)", labels=["token", "organization"])
        for token in self.tokens:
            known = is_managed(token, listing, self._board)
            if known is not None:
                managed.add_metric([token.name, self.organization], 1.0 if known else 0.0)
            held = held_pats(token, listing, self._board)
            if held:
                global_.add_metric([token.name, self.organization],
                                   1.0 if any(p.is_global for p in held) else 0.0)
            found = match_expiry(token, listing, self._board)
            if found is None:
                continue
            when = found.when.timestamp()
            expiry.add_metric([token.name, self.organization, found.source], when)
            renewal.add_metric([token.name, self.organization], when - token.renew_before.total_seconds())
        return (expiry, renewal, managed, global_)
