"""Pure parsing of ADO payloads: swagger examples, KEDA-shaped job requests, timestamps."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core._ado_models import (
    collection,
    format_ado_time,
    format_scopes,
    parse_ado_time,
    parse_agent,
    parse_build,
    parse_connection_data,
    parse_created_pat,
    parse_deployment,
    parse_job_request,
    parse_pat_page,
    parse_pat_result,
    parse_scopes,
    pat_token_error,
)
from core.secret import Secret

SPECS = Path(__file__).resolve().parents[1] / "fixtures" / "specs" / "azure-devops"


def example(name: str) -> dict[str, Any]:
    doc = json.loads((SPECS / f"tokens-example-{name}.json").read_text(encoding="utf-8-sig"))
    responses = doc["responses"]
    return responses.get("200", responses.get("204"))["body"]  # type: ignore[no-any-return]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
        micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


# -- timestamps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("2020-12-01T23:46:23.32Z", utc(2020, 12, 1, 23, 46, 23, 320000)),
    ("2020-11-02T22:56:52.1033333Z", utc(2020, 11, 2, 22, 56, 52, 103333)),
    ("2022-09-28T11:20:32.0530499Z", utc(2022, 9, 28, 11, 20, 32, 53049)),
    ("2020-12-01T23:46:23Z", utc(2020, 12, 1, 23, 46, 23)),
    ("2020-12-01T23:46:23", utc(2020, 12, 1, 23, 46, 23)),
    ("2020-12-02T00:46:23.5+01:00", utc(2020, 12, 1, 23, 46, 23, 500000)),
    ("2020-12-01T20:16:23-0330", utc(2020, 12, 1, 23, 46, 23)),
])
def test_parse_ado_time_examples(text: str, expected: datetime) -> None:
    parsed = parse_ado_time(text)
    assert parsed == expected
    assert parsed is not None and parsed.tzinfo is UTC


@pytest.mark.parametrize("text", [None, "", "   ", "0001-01-01T00:00:00", "0001-01-01T00:00:00Z",
                                  "0001-01-01T00:00:00.0000000Z"])
def test_parse_ado_time_null_and_zero_time_are_none(text: str | None) -> None:
    assert parse_ado_time(text) is None


@pytest.mark.parametrize("text", ["yesterday", "2020-13-01T00:00:00Z", "2020-12-01", "2020-12-01T25:00:00Z",
                                  "2020-12-01T23:46:23.Z"])
def test_parse_ado_time_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not an ADO timestamp"):
        parse_ado_time(text)


@given(
    moment=st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9998, 12, 31),
                        timezones=st.just(UTC)),
    digits=st.integers(min_value=0, max_value=7),
    zulu=st.booleans(),
)
def test_parse_ado_time_round_trips_any_fraction_width(moment: datetime, digits: int, zulu: bool) -> None:
    frac7 = f"{moment.microsecond:06d}0"                  # ADO's 7-digit ticks
    fraction = f".{frac7[:digits]}" if digits else ""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + ("Z" if zulu else "")
    kept = min(digits, 6)
    expected_micro = int(frac7[:kept].ljust(6, "0")) if kept else 0
    assert parse_ado_time(text) == moment.replace(microsecond=expected_micro)


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9998, 12, 31),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                               timezone(-timedelta(hours=8))])))
def test_format_then_parse_keeps_milliseconds(moment: datetime) -> None:
    text = format_ado_time(moment)
    assert text.endswith("Z") and len(text.split(".")[1]) == 4
    expected = moment.astimezone(UTC).replace(microsecond=moment.microsecond // 1000 * 1000)
    assert parse_ado_time(text) == expected


def test_format_ado_time_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive"):
        format_ado_time(datetime(2026, 1, 1))


# -- scopes -------------------------------------------------------------------------------------


def test_scopes_are_space_separated() -> None:
    assert parse_scopes("vso.agentpools vso.build  vso.pipelineresources_use vso.release") == (
        "vso.agentpools", "vso.build", "vso.pipelineresources_use", "vso.release")
    assert parse_scopes("vso.build,vso.release") == ("vso.build", "vso.release")
    assert parse_scopes("") == () and parse_scopes(None) == ()
    assert format_scopes(["vso.agentpools", "vso.build"]) == "vso.agentpools vso.build"
    with pytest.raises(ValueError, match="scope"):
        format_scopes([" "])


# -- PAT Lifecycle API swagger examples ----------------------------------------------------------


def test_get_example() -> None:
    body = example("GetPat")
    assert pat_token_error(body) is None
    info = parse_pat_result(body)
    assert info.authorization_id == "3d3aca0c-9ad3-4b07-8334-08ec8b1ddc32"
    assert info.display_name == "analytics_token"
    assert info.scopes == ("vso.analytics",)
    assert info.valid_from == utc(2020, 10, 29, 17, 26, 46, 720000)
    assert info.valid_to == utc(2020, 12, 1, 23, 46, 23, 320000)
    assert info.target_accounts == ("38aaa865-2c70-4bf7-a308-0c6539c38c1a",)
    assert not info.is_global


def test_list_example() -> None:
    pats, token = parse_pat_page(example("ListPats"))
    assert token is None                                  # "" means the last page
    assert [p.display_name for p in pats] == ["all_access_token", "work_token", "new_token",
                                              "analytics_token"]
    assert pats[0].target_accounts is None and pats[0].is_global
    assert pats[0].scopes == ("app_token",)
    assert pats[1].valid_to == utc(2020, 11, 23, 4, 3, 55, 803333)


def test_create_example_carries_the_token_as_a_secret() -> None:
    created = parse_created_pat(example("CreatePat"))
    assert isinstance(created.token, Secret)
    assert created.token.reveal() == "dip55dwf4vpitomw63jzvomefmi2jluguprzwwqwuc6xq4fhocwq"
    assert created.info.authorization_id == "4ab5764f-4193-4f1d-b995-64144880b7d7"
    assert created.info.valid_from == utc(2020, 11, 2, 22, 56, 52, 103333)
    assert "dip55dwf" not in repr(created)


def test_update_example_turns_global() -> None:
    info = parse_pat_result(example("UpdatePat"))
    assert info.display_name == "updated_token"
    assert info.valid_to == utc(2020, 12, 25, 23, 46, 23, 320000)
    assert info.target_accounts is None


def test_create_without_token_is_malformed_and_does_not_echo_values() -> None:
    body = example("GetPat")                              # token: null
    with pytest.raises(ValueError, match=r"patToken\.token"):
        parse_created_pat(body)


def test_pat_token_error_reads_any_non_none_code() -> None:
    assert pat_token_error({"patToken": None, "patTokenError": "fullScopePatPolicyViolation"}) == (
        "fullScopePatPolicyViolation")
    assert pat_token_error({"patTokenError": "sessionTokenRequired"}) == "sessionTokenRequired"
    assert pat_token_error({"patTokenError": "none"}) is None
    assert pat_token_error({}) is None and pat_token_error(None) is None and pat_token_error([]) is None


def test_malformed_pat_names_the_field() -> None:
    with pytest.raises(ValueError, match="validFrom and validTo"):
        parse_pat_result({"patToken": {"authorizationId": "x", "validTo": "2020-12-01T00:00:00Z"}})
    with pytest.raises(ValueError, match="authorizationId"):
        parse_pat_result({"patToken": {"validFrom": "2020-12-01T00:00:00Z",
                                       "validTo": "2020-12-01T00:00:00Z"}})


# -- KEDA-shaped job requests -------------------------------------------------------------------

# KEDA's three job shapes (queued, running, finished; from its scaler tests) plus ADO's zero time
# for "not received yet", trimmed to the fields KEDA reads.
JOBREQUESTS = json.loads((Path(__file__).parents[1] / "fixtures/ado/keda-jobrequests.json").read_text())


def test_job_requests_count_queued_like_keda_2_20() -> None:
    jobs = [parse_job_request(j) for j in collection(JOBREQUESTS, "jobrequests")]
    assert [(j.request_id, j.is_queued) for j in jobs] == [
        (501, True), (502, False), (503, False), (504, True)]
    assert jobs[0].queue_time == utc(2024, 3, 1, 10, 0, 0, 890000)
    assert jobs[0].assign_time is None and jobs[0].result is None and jobs[0].pool_id == 12
    assert jobs[1].receive_time == utc(2024, 3, 1, 9, 59, 42, 53049)
    assert jobs[2].result == "succeeded"
    assert jobs[3].assign_time is not None and jobs[3].receive_time is None


def test_collection_accepts_the_wrapper_or_a_bare_list() -> None:
    assert collection({"count": 1, "value": [1]}, "x") == [1]
    assert collection([2], "x") == [2]
    with pytest.raises(ValueError, match="'value' list"):
        collection({"count": 0}, "pools")


# -- agents, builds, deployments, connectionData -------------------------------------------------


def test_agent_with_and_without_assigned_request() -> None:
    busy = parse_agent({"id": 5, "name": "demoTarget1", "version": "2.127.0", "enabled": True,
                        "status": "online", "createdOn": "2018-02-19T09:19:41.053Z",
                        "assignedRequest": {"requestId": 502}})
    idle = parse_agent({"id": 6, "name": "b", "enabled": False, "status": "offline"})
    assert (busy.id, busy.name, busy.status, busy.enabled, busy.assigned_request_id) == (
        5, "demoTarget1", "online", True, 502)
    assert idle.assigned_request_id is None and not idle.enabled


def test_build() -> None:
    build = parse_build({
        "id": 1201, "buildNumber": "20240301.3", "status": "completed", "result": "succeeded",
        "queueTime": "2024-03-01T06:00:00.1233333Z", "startTime": "2024-03-01T06:00:10.5Z",
        "finishTime": "2024-03-01T06:12:00Z",
        "definition": {"id": 31, "name": "daily-checks", "revision": 4, "type": "build",
                       "project": {"id": "p", "name": "Operations"}}})
    assert build.id == 1201 and build.result == "succeeded" and build.status == "completed"
    assert build.finish_time == utc(2024, 3, 1, 6, 12)
    assert (build.definition_id, build.definition_name) == (31, "daily-checks")


def test_deployment() -> None:
    dep = parse_deployment({
        "id": 77, "deploymentStatus": "succeeded", "operationStatus": "approved",
        "queuedOn": "2024-03-01T06:00:00Z", "startedOn": "2024-03-01T06:01:00.5Z", "completedOn": None,
        "release": {"id": 9, "name": "Release-9"}, "releaseDefinition": {"id": 3, "name": "infra"},
        "releaseEnvironment": {"id": 11, "name": "prod"}})
    assert (dep.id, dep.release_id, dep.release_name, dep.definition_id, dep.environment_name) == (
        77, 9, "Release-9", 3, "prod")
    assert dep.status == "succeeded" and dep.completed_on is None
    assert dep.started_on == utc(2024, 3, 1, 6, 1, 0, 500000)
    bare = parse_deployment({"id": 1})
    assert bare.release_id is None and bare.status == "undefined"


def test_connection_data() -> None:
    data = parse_connection_data({
        "authenticatedUser": {"id": "8f1c", "providerDisplayName": "patrol bot"},
        "authorizedUser": {"id": "8f1c"}, "instanceId": "inst-1", "deploymentType": "hosted"})
    assert (data.authenticated_user_id, data.authenticated_user_name, data.instance_id) == (
        "8f1c", "patrol bot", "inst-1")
