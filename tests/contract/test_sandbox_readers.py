"""Key Vault readers against the sandbox's real ADO over HTTP, and the ``harm`` counters they feed.

Facts modelled (sources in sandbox/readers.py): the ``AzureKeyVault`` pipeline task skips a secret
whose current version is disabled or expired (``filterDisabledAndExpiredSecrets`` in
microsoft/azure-pipelines-tasks ``Tasks/AzureKeyVaultV2/operations/KeyVault.ts``) and passes the
value on unchanged; a job reads it once, at its start. An External-Secrets-style reader keeps the
value it fetched until its next ``refreshInterval``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.app import SandboxThread
from sandbox.entra import Entra
from sandbox.keyvault import KeyVaultStore
from sandbox.pipeline import PipelineSpec
from sandbox.readers import read_like_azure_keyvault_task
from sandbox.scenarios import DAILY_CHECKS_SCOPES, scenario

pytestmark = pytest.mark.contract

SECRET = "azure-devops-token"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def _state(http: httpx.Client, sb: SandboxThread) -> dict[str, Any]:
    body: dict[str, Any] = http.get(f"{sb.ready['control_url']}/state").json()
    return body


def _rotate(sb: SandboxThread, *, revoke_old: bool) -> str:
    """What patrol's rotation does to the Key Vault sink: a new PAT, a new secret version, and
    (when asked) the old PAT revoked right away. Returns the new PAT's id."""
    world = sb.world

    def rotate() -> str:
        old = world.ado.pat_id_for_value(world.kv.latest_value(SECRET) or "")
        new_id, token = world.ado.issue_pat(world.seeded.bot_oid, "rotated", list(DAILY_CHECKS_SCOPES),
                                            time.time() + 600)
        world.kv.set_secret(SECRET, token, exp=int(time.time() + 600), tags={"authorizationId": new_id})
        if revoke_old and old is not None:
            world.ado.revoke_pat(old)
        return str(new_id)

    return str(sb.call(rotate))


# ---------------------------------------------------------------- the AzureKeyVault task's read


def test_the_task_read_skips_disabled_and_expired_current_versions() -> None:
    now = 1_800_000_000.0
    kv = KeyVaultStore(Entra("t"), base_url_getter=lambda: "https://vault", clock=lambda: now)
    assert read_like_azure_keyvault_task(kv, SECRET, now) is None                 # absent
    kv.set_secret(SECRET, "first\n", exp=int(now + 60))
    assert read_like_azure_keyvault_task(kv, SECRET, now) == "first\n"            # passed on as-is
    assert read_like_azure_keyvault_task(kv, SECRET, now + 60) is None            # expires == now: skipped
    kv.set_secret(SECRET, "second", enabled=False)
    assert read_like_azure_keyvault_task(kv, SECRET, now) is None                 # no fallback to "first"
    kv.set_secret(SECRET, "")
    assert read_like_azure_keyvault_task(kv, SECRET, now) is None                 # empty sets no variable
    kv.set_secret(SECRET, "third")
    assert read_like_azure_keyvault_task(kv, SECRET, now) == "third"


# ---------------------------------------------------------------- the daily-checks pipeline


QUIET = {"job_interval": None, "pipeline_interval": None, "keyvault_reader_refresh": None}


@pytest.fixture
def quiet(tmp_path: Path) -> Iterator[SandboxThread]:
    with SandboxThread(str(tmp_path), scenario("default", **QUIET)) as sb:
        yield sb


def _run_with_rotation(sb: SandboxThread, *, revoke_old: bool, spec: PipelineSpec) -> str:
    """One pipeline run with a rotation 0.3 s into it."""
    actors = sb.world.actors
    assert actors is not None

    async def scenario_run() -> str:
        run = asyncio.get_running_loop().create_task(actors.run_pipeline_once(spec))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(_rotate, sb, revoke_old=revoke_old)
        return await run

    result: str = sb.call(scenario_run)
    return result


SPEC = PipelineSpec(project="Operations", definition="daily-checks", interval=3600, duration=1.0)


def test_a_run_keeps_the_value_it_read_and_fails_when_it_is_revoked_mid_run(
    quiet: SandboxThread, http: httpx.Client
) -> None:
    assert _run_with_rotation(quiet, revoke_old=True, spec=SPEC) == "failed"
    state = _state(http, quiet)
    pipeline = state["actors"]["pipeline"]
    assert pipeline["failed"] == 1 and "HTTP 401" in pipeline["last_error"]
    assert state["harm"]["pipeline_runs_failed"] == 1
    # The next run reads the new version at its start and succeeds.
    assert quiet.call(quiet.world.actors.run_pipeline_once, SPEC) == "succeeded"   # type: ignore[union-attr]
    builds = [b for b in _state(http, quiet)["builds"] if b["status"] == "completed"][-2:]
    assert [b["result"] for b in builds] == ["failed", "succeeded"]


def test_a_run_survives_a_rotation_that_leaves_the_old_pat_valid(quiet: SandboxThread, http: httpx.Client) -> None:
    assert _run_with_rotation(quiet, revoke_old=False, spec=SPEC) == "succeeded"
    assert _state(http, quiet)["harm"]["pipeline_runs_failed"] == 0


def test_a_run_is_in_progress_in_ado_while_it_lasts(quiet: SandboxThread, http: httpx.Client) -> None:
    actors = quiet.world.actors
    assert actors is not None

    async def observe() -> list[str | None]:
        run = asyncio.get_running_loop().create_task(actors.run_pipeline_once(SPEC))
        await asyncio.sleep(0.3)
        during = quiet.world.ado.builds()[-1].status
        await run
        return [during, quiet.world.ado.builds()[-1].status]

    assert quiet.call(observe) == ["inProgress", "completed"]


def test_a_disabled_current_version_fails_the_run_without_an_ado_call(
    quiet: SandboxThread, http: httpx.Client
) -> None:
    quiet.call(lambda: quiet.world.kv.set_secret(SECRET, "not-used", enabled=False))
    assert quiet.call(quiet.world.actors.run_pipeline_once, SPEC) == "failed"      # type: ignore[union-attr]
    state = _state(http, quiet)
    assert "not downloaded" in state["actors"]["pipeline"]["last_error"]
    assert state["harm"]["pipeline_runs_failed"] == 1


# ---------------------------------------------------------------- the External-Secrets-style reader


def _reader_world(tmp_path: Path, refresh: float) -> SandboxThread:
    params = scenario("default", job_interval=None, pipeline_interval=None, keyvault_reader_refresh=refresh,
                      keyvault_reader_call_interval=0.1)
    return SandboxThread(str(tmp_path), params)


def _wait(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_reader_fails_until_its_refresh_when_the_old_pat_is_revoked_at_once(
    tmp_path: Path, http: httpx.Client
) -> None:
    with _reader_world(tmp_path, refresh=1.5) as sb:
        _wait(lambda: (_state(http, sb)["actors"]["keyvault_reader"] or {}).get("calls", 0) >= 2)
        before = _state(http, sb)["actors"]["keyvault_reader"]["refreshes"]
        _rotate(sb, revoke_old=True)
        _wait(lambda: _state(http, sb)["harm"]["secret_reader_failures"] >= 1)
        # After its next refresh it holds the new value and its calls succeed again.
        _wait(lambda: _state(http, sb)["actors"]["keyvault_reader"]["refreshes"] > before)
        time.sleep(0.3)
        settled = _state(http, sb)["harm"]["secret_reader_failures"]
        time.sleep(0.5)
        state = _state(http, sb)
        assert state["harm"]["secret_reader_failures"] == settled
        assert state["actors"]["keyvault_reader"]["calls"] > 5


def test_the_reader_is_unharmed_when_the_old_pat_outlives_its_refresh(tmp_path: Path, http: httpx.Client) -> None:
    with _reader_world(tmp_path, refresh=0.5) as sb:
        _wait(lambda: (_state(http, sb)["actors"]["keyvault_reader"] or {}).get("calls", 0) >= 2)
        old = sb.call(sb.world.ado.pat_id_for_value, sb.call(sb.world.kv.latest_value, SECRET))
        _rotate(sb, revoke_old=False)
        time.sleep(1.2)                                     # more than one refresh interval
        sb.call(sb.world.ado.revoke_pat, old)
        time.sleep(0.5)
        state = _state(http, sb)
        assert state["harm"]["secret_reader_failures"] == 0
        assert state["actors"]["keyvault_reader"]["refreshes"] >= 2


def test_state_reports_harm_as_integers_and_no_reader_when_switched_off(
    quiet: SandboxThread, http: httpx.Client
) -> None:
    state = _state(http, quiet)
    harm = state["harm"]
    # Other actor families add their own keys; these two are the readers'.
    assert harm["pipeline_runs_failed"] == 0 and harm["secret_reader_failures"] == 0
    assert all(isinstance(v, int) for v in harm.values())
    assert state["actors"]["keyvault_reader"] is None
