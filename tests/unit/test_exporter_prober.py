"""The exporter's production clients hold one prober (one connection pool) per organization."""

from __future__ import annotations

from core import config
from exporter.assembly import CoreClients
from tests.unit.exporter_world import daily_token, keda_token, make_config


def test_one_prober_per_organization_reused_until_the_clients_close() -> None:
    cfg = make_config(keda_token(), daily_token())
    org: config.Organization = cfg.organizations[0]
    clients = CoreClients(cfg, {})
    try:
        first = clients.prober(org)
        assert clients.prober(org) is first            # every cycle's probes share one pool
        clients.close()
        second = clients.prober(org)
        assert second is not first                     # closed and forgotten with the clients
    finally:
        clients.close()
