"""Each refusal a real tenant gives reaches a person, through real Prometheus.

The sandbox's Entra refuses the bot's sign-ins as a tenant does (``POST /entra/failures``: MFA
required, MFA enrollment required, Conditional Access block, consent missing, public client
flows disabled), and revokes its access tokens server-side so the exporter's cached token is
rejected and it must sign in again. For every refusal, in turn: the exporter's PAT Lifecycle
source goes down with the message that names the cause and its fix, Prometheus (the Debian
package, scraping every second, the shipped rules with ``for`` shortened to 1s) fires
``PatrolCredentialBroken`` labelled with *that* cause — not one already fixed — and once the
refusal is lifted the alert resolves. The message texts per cause are asserted in
tests/contract/test_credential_contract.py; here the point is that each one reaches the alert.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import httpx
import pytest

from core.config import load_config
from core.retry import Backoff
from exporter.assembly import CoreClients, Exporter, build
from exporter.server import make_app
from patrol.stack import MonitoringStack
from sandbox.app import SandboxThread
from tests.contract.loop_thread import LoopThread
from tests.e2e.test_prometheus_e2e import wait_for

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not MonitoringStack.available(),
                                 reason="Debian prometheus / prometheus-alertmanager not installed")]

QUICK = Backoff(delays=(0.1,))
# kind -> (the code and a piece of the fix the exporter's message must carry)
REFUSALS = {
    "mfa_required": ("AADSTS50076", "run `patrol login`"),
    "mfa_enrollment_required": ("AADSTS50079", "run `patrol login`"),
    "conditional_access_blocked": ("AADSTS53003", "exclude the bot account"),
    "consent_missing": ("AADSTS65001", "grant admin consent"),
    "public_client_flows_disabled": ("AADSTS7000218", "Allow public client flows"),
}


@dataclass
class Loop:
    sandbox: SandboxThread
    exporter: Exporter
    monitoring: MonitoringStack
    control: httpx.Client
    organization: str


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    with SandboxThread(str(tmp_path_factory.mktemp("sandbox")), "default") as sb:
        cfg = load_config(sb.ready["config"])
        # the PAT Lifecycle source refreshes every second: each refusal is met within a scrape
        cfg = replace(cfg, exporter=replace(cfg.exporter, pat_interval=timedelta(seconds=1)))
        clients = CoreClients(cfg, {}, backoff=QUICK, probe_backoff=QUICK)
        exporter = build(cfg, clients, watch_timeout=1, credentials=clients.credentials)
        server = LoopThread()
        monitoring: MonitoringStack | None = None
        control = httpx.Client(base_url=sb.ready["control_url"], timeout=10)
        try:
            exporter.start()
            assert exporter.refresher.wait_ready(30), exporter.refresher.pending
            port = server.serve(make_app(exporter.exposition, lambda: exporter.refresher.pending))
            monitoring = MonitoringStack(
                directory=tmp_path_factory.mktemp("monitoring"),
                targets={"patrol-exporter": f"127.0.0.1:{port}"},
                webhook_url="http://127.0.0.1:9/webhook/alertmanager",    # no worker: nothing rotates
                webhook_token_file=sb.ready["webhook_token_file"], alert_for="1s")
            monitoring.start()
            stack = monitoring
            wait_for("the credential to be seen working",
                     lambda: stack.query(f'patrol_credential_ok{{organization="{sb.params.org}"}} == 1'))
            yield Loop(sb, exporter, monitoring, control, sb.params.org)
        finally:
            control.delete("/entra/failures")
            control.close()
            if monitoring is not None:
                monitoring.stop()
            server.close()
            exporter.close()


def broken(loop: Loop) -> list[dict[str, Any]]:
    return [a for a in loop.monitoring.firing_alerts() if a["labels"]["alertname"] == "PatrolCredentialBroken"]


def refuse_then_fix(loop: Loop, kind: str) -> list[dict[str, Any]]:
    """Switch the refusal on, wait for its message and alert, lift it, wait for the resolve;
    returns the alerts seen firing for it."""
    code, fix = REFUSALS[kind]
    source = f"pat-lifecycle/{loop.organization}"
    assert not broken(loop), "an earlier refusal's alert is still firing"
    assert loop.control.post("/entra/failures", json={"kind": kind}).status_code == 201
    # the cached access token is revoked server-side: ADO rejects it, the exporter signs in again
    assert loop.control.post("/entra/failures", json={"kind": "access_tokens_revoked"}).status_code == 200

    def refused_message() -> str | None:
        reason = loop.exporter.source(source).health.reason
        return reason if reason is not None and code in reason else None

    message = wait_for(f"the exporter's message for {kind}", refused_message, timeout=45, every=0.3)
    assert fix in message, message
    assert loop.sandbox.ready["bot"]["password"] not in message
    alerts = wait_for(f"PatrolCredentialBroken{{cause={kind}}} firing",
                      lambda: [a for a in broken(loop) if a["labels"].get("cause") == kind], timeout=45, every=0.3)
    assert [a["labels"]["organization"] for a in alerts] == [loop.organization]
    assert alerts[0]["labels"]["severity"] == "critical"
    assert not [a for a in broken(loop) if a["labels"].get("cause") not in (kind, None)], broken(loop)

    assert loop.control.delete("/entra/failures").status_code == 204
    wait_for("the exporter to sign in again", lambda: loop.exporter.source(source).health.up, timeout=45, every=0.3)
    wait_for("PatrolCredentialBroken to resolve", lambda: not broken(loop), timeout=45, every=0.3)
    return alerts


def test_each_tenant_refusal_fires_the_alert_with_its_cause_then_resolves(loop: Loop) -> None:
    """One after another in one exporter process, as a tenant's troubles come, each alert naming
    its own cause while earlier causes still count in the last hour (one test, not one per kind:
    the suite resets the process's credential ledger between tests). Which cause the alert names
    when an old one was counted more often is pinned at a real refresh cadence by the promtool
    test in alerts/tests/credential.test.yml; at this test's 1 s refresh the new cause overtakes
    the old counts within seconds either way."""
    causes = [[a["labels"]["cause"] for a in refuse_then_fix(loop, kind)] for kind in REFUSALS]
    assert causes == [[kind] for kind in REFUSALS]
