"""``patrol adopt`` against the sandbox's ``unadopted`` world, over real HTTP(S).

The seeded Secrets and Key Vault secret carry no patrol metadata (pasted by hand). Adopting
must label every sink with the PAT it holds without changing any token value or writing a new
Key Vault version, after which the exporter reports the real expiry from the PAT Lifecycle API
— with no rotation. Refusals write nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core.config import Config, load_config
from core.errors import ConflictError
from core.retry import Backoff
from exporter.assembly import CoreClients, build
from patrol.cli import main
from remediation.world import CoreWorld
from sandbox.app import SandboxThread
from sandbox.scenarios import KEDA_SCOPES, scenario

NS, SECRET, KEY = "azure-devops", "azure-devops-token", "token"
CLUSTERS = ("build-a", "build-b")
QUICK = Backoff(delays=(0.05,))


@pytest.fixture
def sb(tmp_path: Path) -> Iterator[SandboxThread]:
    with SandboxThread(str(tmp_path / "sandbox"), scenario("unadopted", pipeline_interval=None)) as thread:
        yield thread


def adopt(sb: SandboxThread, *args: str) -> int:
    return main(["adopt", *args, "--config", sb.ready["config"]], env={})


def secret(sb: SandboxThread, cluster: str) -> dict[str, Any]:
    obj: dict[str, Any] | None = sb.call(lambda: sb.world.clusters[cluster].get_object("v1", "secrets", NS, SECRET))
    assert obj is not None
    return obj


def vault_versions(sb: SandboxThread) -> list[dict[str, Any]]:
    versions: list[dict[str, Any]] = sb.call(lambda: sb.world.kv.versions("azure-devops-token"))
    return versions


def world_state(sb: SandboxThread) -> dict[str, Any]:
    """Everything adoption may touch, to prove a refusal wrote nothing."""
    pats = [{k: v for k, v in p.items() if k not in ("lastUsed", "uses")}   # KEDA keeps using them
            for p in sb.call(sb.world.ado.pats)]
    return {"secrets": {c: secret(sb, c) for c in CLUSTERS}, "vault": vault_versions(sb), "pats": pats}


def expiry_text(valid_to: float) -> str:
    return datetime.fromtimestamp(int(valid_to), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exporter_expiry(cfg: Config) -> dict[str, tuple[str, float]]:
    """token → (source, value) of patrol_pat_expiry_timestamp_seconds after one refresh,
    ``managed:<token>`` → ("", patrol_pat_managed) and ``valid:<sink>`` → ("", patrol_pat_valid)."""
    exporter = build(cfg, CoreClients(cfg, {}, backoff=QUICK, probe_backoff=QUICK), watch_timeout=1)
    try:
        for source in exporter.sources:
            if source.name.startswith(("keyvault/", "kubernetes/")):
                source.refresh()
        for source in exporter.sources:
            if source.name.startswith(("pat-lifecycle/", "validity/")):
                source.refresh()
        found: dict[str, tuple[str, float]] = {}
        for source in exporter.sources:
            for family in source.samples():
                if family.name == "patrol_pat_expiry_timestamp_seconds":
                    for s in family.samples:
                        found[s.labels["token"]] = (s.labels["source"], s.value)
                if family.name == "patrol_pat_managed":
                    for s in family.samples:
                        found["managed:" + s.labels["token"]] = ("", s.value)
                if family.name == "patrol_pat_valid":
                    for s in family.samples:
                        found["valid:" + s.labels["sink"]] = ("", s.value)
        return found
    finally:
        exporter.close()


def test_adopt_yes_labels_every_sink_and_the_exporter_reports_the_real_expiry(
        sb: SandboxThread, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(sb.ready["config"])
    seeded = sb.world.seeded
    keda_pat = sb.call(lambda: sb.world.ado.pat(seeded.keda_pat_id))
    daily_pat = sb.call(lambda: sb.world.ado.pat(seeded.daily_pat_id))
    values_before = {c: sb.call(lambda c=c: sb.world.clusters[c].secret_value(NS, SECRET, KEY)) for c in CLUSTERS}
    before = exporter_expiry(cfg)
    assert "keda" not in before                        # hand-pasted: patrol cannot tell its expiry
    assert before["managed:keda"] == ("", 0.0) and before["managed:daily-checks"] == ("", 0.0)
    validity = {k: v for k, v in before.items() if k.startswith("valid:")}
    assert len(validity) == 3 and set(validity.values()) == {("", 1.0)}   # still probed while unmanaged

    assert adopt(sb, "keda", "--yes") == 0
    out = capsys.readouterr().out
    assert f"keda adopted as {seeded.keda_pat_id}" in out
    assert not any(v and v in out for v in values_before.values())
    for cluster in CLUSTERS:
        obj = secret(sb, cluster)
        annotations = obj["metadata"]["annotations"]
        assert annotations["patrol.io/authorization-id"] == seeded.keda_pat_id
        assert annotations["patrol.io/expiry"] == expiry_text(keda_pat.valid_to)
        assert annotations["patrol.io/rotation"].startswith("adopted-")
        value = sb.call(lambda c=cluster: sb.world.clusters[c].secret_value(NS, SECRET, KEY))
        assert value == values_before[cluster]

    versions_before = vault_versions(sb)
    assert adopt(sb, "daily-checks", "--yes") == 0
    versions = vault_versions(sb)
    assert len(versions) == len(versions_before) == 1, "adoption wrote a new Key Vault version"
    latest = sb.call(lambda: sb.world.kv.latest("azure-devops-token"))
    assert latest["tags"]["authorizationId"] == seeded.daily_pat_id
    assert latest["attributes"]["exp"] == int(daily_pat.valid_to)

    expiry = exporter_expiry(cfg)
    assert expiry["keda"] == ("lifecycle-api", pytest.approx(keda_pat.valid_to, abs=1))
    assert expiry["daily-checks"] == ("lifecycle-api", pytest.approx(daily_pat.valid_to, abs=1))
    assert expiry["managed:keda"] == ("", 1.0) and expiry["managed:daily-checks"] == ("", 1.0)
    patrol_pats = [p for p in sb.call(sb.world.ado.pats) if p["displayName"].startswith("patrol-")]
    assert patrol_pats == [], "adoption must not rotate"

    # idempotent: a second run says so and changes nothing
    state = world_state(sb)
    assert adopt(sb, "keda", "--yes") == 0
    assert "already adopted" in capsys.readouterr().out
    assert world_state(sb) == state


def test_dry_run_shows_the_candidate_and_writes_nothing(sb: SandboxThread,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    state = world_state(sb)
    assert adopt(sb, "keda", "--dry-run") == 0
    out = capsys.readouterr().out
    assert sb.world.seeded.keda_pat_id in out
    assert "keda-seed" in out and "fits" in out and "dry run: nothing written" in out
    assert "ADO says the token belongs to the bot" in out
    assert world_state(sb) == state


def test_without_yes_and_without_a_terminal_nothing_is_written(sb: SandboxThread,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    state = world_state(sb)
    assert adopt(sb, "keda") == 1                      # pytest's stdin is not a terminal
    assert "not confirmed" in capsys.readouterr().err
    assert world_state(sb) == state


def test_two_fitting_pats_refuse_until_an_id_is_given(sb: SandboxThread,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    seeded = sb.world.seeded
    other, _ = sb.call(lambda: sb.world.ado.issue_pat(seeded.bot_oid, "hand-made-spare", list(KEDA_SCOPES),
                                                      time.time() + 3600))
    state = world_state(sb)
    assert adopt(sb, "keda", "--yes") == 1
    err = capsys.readouterr().err
    assert "2 active PATs of the bot fit" in err and "--authorization-id" in err
    assert world_state(sb) == state

    assert adopt(sb, "keda", "--authorization-id", seeded.keda_pat_id) == 0
    assert secret(sb, "build-a")["metadata"]["annotations"]["patrol.io/authorization-id"] == seeded.keda_pat_id
    assert other != seeded.keda_pat_id


def test_sinks_holding_different_tokens_are_refused(sb: SandboxThread,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    seeded = sb.world.seeded
    _, value = sb.call(lambda: sb.world.ado.issue_pat(seeded.bot_oid, "other", list(KEDA_SCOPES),
                                                      time.time() + 3600))
    sb.call(lambda: sb.world.clusters["build-b"].put_secret(NS, SECRET, {KEY: value}))
    state = world_state(sb)
    assert adopt(sb, "keda", "--yes") == 1
    err = capsys.readouterr().err
    assert "the sinks hold different tokens" in err
    assert value not in err
    assert world_state(sb) == state


def test_a_token_that_does_not_authenticate_is_refused(sb: SandboxThread,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    sb.call(lambda: sb.world.ado.revoke_pat(sb.world.seeded.keda_pat_id))
    state = world_state(sb)
    assert adopt(sb, "keda", "--yes") == 1
    assert "does not authenticate" in capsys.readouterr().err
    assert world_state(sb) == state


def test_no_fitting_pat_is_refused(sb: SandboxThread, capsys: pytest.CaptureFixture[str]) -> None:
    # The configured scopes no longer match the PAT in the sinks: no candidate at all.
    cfg_path = Path(sb.ready["config"])
    text = cfg_path.read_text(encoding="utf-8")
    cfg_path.write_text(text.replace("- vso.agentpools_manage", "- vso.agentpools"), encoding="utf-8")
    state = world_state(sb)
    assert adopt(sb, "keda", "--yes") == 1
    assert "no active PAT of the bot fits" in capsys.readouterr().err
    assert world_state(sb) == state


def test_the_core_writes_adoption_uses_touch_only_metadata(sb: SandboxThread) -> None:
    """KubeCluster.annotate_secret and KeyVault.update_properties over the real clients."""
    cfg = load_config(sb.ready["config"])
    with CoreWorld(cfg, env={}) as world:
        cluster = world.cluster("build-a")
        before = cluster.read_secret(NS, SECRET)
        after = cluster.annotate_secret(NS, SECRET, annotations={"patrol.io/authorization-id": "x"},
                                        resource_version=before.resource_version)
        assert after.annotations["patrol.io/authorization-id"] == "x"
        assert after.data == before.data and after.resource_version != before.resource_version
        with pytest.raises(ConflictError):
            cluster.annotate_secret(NS, SECRET, annotations={"patrol.io/authorization-id": "y"},
                                    resource_version=before.resource_version)
        assert cluster.read_secret(NS, SECRET).annotations["patrol.io/authorization-id"] == "x"

        vault = world.vault(sb.ready["keyvault_url"])
        props, value = vault.get_secret("azure-devops-token")
        when = datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)
        updated = vault.update_properties("azure-devops-token", props.version, expires_on=when,
                                          tags={"authorizationId": "z"})
        assert updated.version == props.version and updated.expires_on == when
        latest, latest_value = vault.get_secret("azure-devops-token")
        assert latest.version == props.version and latest.tags == {"authorizationId": "z"}
        assert latest_value == value
        assert len(vault.list_versions("azure-devops-token")) == 1


def test_the_exporter_flags_a_global_pat(sb: SandboxThread) -> None:
    seeded = sb.world.seeded
    auth_id, value = sb.call(lambda: sb.world.ado.issue_pat(seeded.bot_oid, "keda-global", list(KEDA_SCOPES),
                                                            time.time() + 3600, all_orgs=True))
    for cluster in CLUSTERS:
        sb.call(lambda c=cluster: sb.world.clusters[c].put_secret(
            NS, SECRET, {KEY: value}, annotations={"patrol.io/authorization-id": auth_id}))
    cfg = load_config(sb.ready["config"])
    exporter = build(cfg, CoreClients(cfg, {}, backoff=QUICK, probe_backoff=QUICK), watch_timeout=1)
    try:
        for prefix in ("kubernetes/", "pat-lifecycle/"):
            for source in exporter.sources:
                if source.name.startswith(prefix):
                    source.refresh()
        flags = {s.labels["token"]: s.value for source in exporter.sources for family in source.samples()
                 if family.name == "patrol_pat_global" for s in family.samples}
    finally:
        exporter.close()
    assert flags == {"keda": 1.0}                     # daily-checks' PAT is unknown: no series


def test_a_token_of_another_account_is_refused_even_when_a_bot_pat_would_fit(
        sb: SandboxThread, capsys: pytest.CaptureFixture[str]) -> None:
    # A person pasted their own PAT; the bot's seeded PAT has the same scopes and would "fit".
    alice = sb.call(lambda: sb.world.entra.add_user("alice@sandbox.onmicrosoft.com", "pw-alice-0123456789"))
    sb.call(lambda: sb.world.ado.register_user(alice, "alice@sandbox.onmicrosoft.com", "Alice"))
    _, value = sb.call(lambda: sb.world.ado.issue_pat(alice, "alice-keda", list(KEDA_SCOPES), time.time() + 3600))
    for cluster in CLUSTERS:
        sb.call(lambda c=cluster: sb.world.clusters[c].put_secret(NS, SECRET, {KEY: value}))
    state = world_state(sb)
    assert adopt(sb, "keda", "--yes") == 1
    err = capsys.readouterr().err
    assert f"belongs to Alice ({alice}), not to the bot" in err
    assert value not in err
    assert world_state(sb) == state


# --- adopt --json ---------------------------------------------------------------------------------

def adopt_json(sb: SandboxThread, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """Run ``patrol adopt --json``; its stdout must be exactly one JSON object and hold no token."""
    code = adopt(sb, *args, "--json")
    out = capsys.readouterr().out
    doc: dict[str, Any] = json.loads(out)
    values = {sb.call(lambda c=c: sb.world.clusters[c].secret_value(NS, SECRET, KEY)) for c in CLUSTERS}
    assert not any(v and v in out for v in values), "a token value in the JSON"
    return code, doc


def test_json_dry_run_lists_the_candidates_and_the_chosen_pat(sb: SandboxThread,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    seeded = sb.world.seeded
    state = world_state(sb)
    code, doc = adopt_json(sb, capsys, "keda", "--dry-run")
    assert code == 0
    assert (doc["token"], doc["outcome"], doc["authorization_id"]) == ("keda", "would-adopt", seeded.keda_pat_id)
    assert doc["written"] == [] and doc["refusal"] is None and doc["already_adopted"] is False
    assert doc["chosen"]["display_name"] == "keda-seed"
    assert [c["authorization_id"] for c in doc["candidates"] if c["fits"]] == [seeded.keda_pat_id]
    assert doc["probe"]["ok"] is True
    assert [s["id"] for s in doc["sinks"]] == [f"kubernetes-secret/{c}/{NS}/{SECRET}/{KEY}" for c in CLUSTERS]
    assert all(s["holds_token"] and s["recorded_authorization_id"] is None for s in doc["sinks"])
    assert world_state(sb) == state


def test_json_never_asks_and_writes_nothing_without_yes(sb: SandboxThread,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    state = world_state(sb)
    code, doc = adopt_json(sb, capsys, "keda")
    assert (code, doc["outcome"], doc["written"]) == (1, "not-confirmed", [])
    assert "--yes" in doc["message"]
    assert world_state(sb) == state


def test_json_yes_reports_every_sink_written_then_already_adopted(sb: SandboxThread,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    seeded = sb.world.seeded
    code, doc = adopt_json(sb, capsys, "keda", "--yes")
    assert (code, doc["outcome"], doc["authorization_id"]) == (0, "adopted", seeded.keda_pat_id)
    assert doc["written"] == [s["id"] for s in doc["sinks"]] and len(doc["written"]) == len(CLUSTERS)
    for cluster in CLUSTERS:
        assert secret(sb, cluster)["metadata"]["annotations"]["patrol.io/authorization-id"] == seeded.keda_pat_id

    state = world_state(sb)
    code, doc = adopt_json(sb, capsys, "keda", "--yes")
    assert (code, doc["outcome"], doc["written"], doc["already_adopted"]) == (0, "already-adopted", [], True)
    assert all(s["recorded_authorization_id"] == seeded.keda_pat_id for s in doc["sinks"])
    assert world_state(sb) == state


def test_json_refusal_gives_the_reason_and_the_exit_code_of_today(sb: SandboxThread,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    seeded = sb.world.seeded
    other, _ = sb.call(lambda: sb.world.ado.issue_pat(seeded.bot_oid, "hand-made-spare", list(KEDA_SCOPES),
                                                      time.time() + 3600))
    state = world_state(sb)
    code, doc = adopt_json(sb, capsys, "keda", "--yes")
    assert (code, doc["outcome"], doc["authorization_id"], doc["written"]) == (1, "refused", None, [])
    assert "2 active PATs of the bot fit" in doc["refusal"] and "--authorization-id" in doc["refusal"]
    assert doc["refusal"] in doc["message"]
    assert {c["authorization_id"] for c in doc["candidates"] if c["fits"]} == {seeded.keda_pat_id, other}
    assert world_state(sb) == state
