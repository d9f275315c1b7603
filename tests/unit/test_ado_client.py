"""core.ado's two clients over httpx.MockTransport: wire shape, error translation, retries."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.ado import AdoClient, PatLifecycleClient
from core.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermanentError,
    PolicyViolationError,
    ServerError,
    ThrottledError,
    UnauthorizedError,
    UnavailableError,
)
from core.retry import Backoff
from core.secret import Secret

SPECS = Path(__file__).resolve().parents[1] / "fixtures" / "specs" / "azure-devops"
ORG = "https://dev.azure.com/fabrikam"
VSSPS = "https://vssps.dev.azure.com/fabrikam"
PAT_VALUE = "q7zx3k2mnb5vcx4lkjhgfdsapoiuytrewqmnbvcxzlkjhgfdsa42"      # 52 chars, PAT-shaped
ACCESS_TOKEN = "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJib3QifQ.c2lnbmF0dXJl-access"
BACKOFF = Backoff(delays=(0.5, 1.0, 2.0))

Handler = Callable[[httpx.Request], httpx.Response]


def example_body(name: str) -> Any:
    doc = json.loads((SPECS / f"tokens-example-{name}.json").read_text(encoding="utf-8-sig"))
    return next(iter(doc["responses"].values()))["body"]


@dataclass
class FakeTime:
    """A clock and a sleep that advances it; every sleep and request lands in one timeline."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.timeline.append(f"sleep {seconds:g}")
        self.now += seconds


@dataclass
class Server:
    """Answers requests from a script of handlers (the last one repeats) and records them."""

    script: list[Handler]
    time: FakeTime
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.time.timeline.append(f"{request.method} {request.url.path}")
        handler = self.script[min(len(self.requests) - 1, len(self.script) - 1)]
        return handler(request)


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None,
          text: str | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        if body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=body, headers=headers)
    return handler


def fail(exc_type: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("boom", request=request)
    return handler


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_pats(fake_time: FakeTime) -> Iterator[Callable[..., tuple[PatLifecycleClient, Server]]]:
    clients: list[httpx.Client] = []

    def make(*script: Handler,
             provider: Callable[[], Secret] | None = None) -> tuple[PatLifecycleClient, Server]:
        server = Server(list(script), fake_time)
        http = httpx.Client(transport=httpx.MockTransport(server))
        clients.append(http)
        pats = PatLifecycleClient(VSSPS, provider or (lambda: Secret(ACCESS_TOKEN)), client=http,
                                  backoff=BACKOFF, sleep=fake_time.sleep, clock=fake_time.clock)
        return pats, server

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def make_ado(fake_time: FakeTime) -> Iterator[Callable[..., tuple[AdoClient, Server]]]:
    clients: list[httpx.Client] = []

    def make(*script: Handler, credential: Secret | Callable[[], Secret] | None = None,
             **kwargs: Any) -> tuple[AdoClient, Server]:
        server = Server(list(script), fake_time)
        http = httpx.Client(transport=httpx.MockTransport(server))
        clients.append(http)
        ado = AdoClient(kwargs.pop("url", ORG), credential or Secret(PAT_VALUE), client=http, backoff=BACKOFF,
                        sleep=fake_time.sleep, clock=fake_time.clock, **kwargs)
        return ado, server

    yield make
    for c in clients:
        c.close()


def assert_common_headers(request: httpx.Request) -> None:
    assert request.headers["X-TFS-FedAuthRedirect"] == "Suppress"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"].startswith("ado-patrol/")


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def assert_no_secret(exc: BaseException, *values: str) -> None:
    for link in chain(exc):
        for value in values:
            assert value not in str(link), f"secret in str({type(link).__name__})"
            assert value not in repr(link), f"secret in repr({type(link).__name__})"


# =============================================================================================
# PAT Lifecycle API


def test_list_follows_continuation_tokens_and_repeats_the_filter(make_pats: Any) -> None:
    listing = example_body("ListPats")
    page1 = {"continuationToken": "page-2-token", "patTokens": listing["patTokens"][:2]}
    page2 = {"continuationToken": "", "patTokens": listing["patTokens"][2:]}
    pats, server = make_pats(reply(body=page1), reply(body=page2))

    result = pats.list("all")

    assert [p.display_name for p in result] == ["all_access_token", "work_token", "new_token",
                                                "analytics_token"]
    first, second = server.requests
    assert first.url.path == "/fabrikam/_apis/tokens/pats"
    assert dict(first.url.params) == {"displayFilterOption": "all", "api-version": "7.1-preview.1"}
    assert dict(second.url.params) == {"displayFilterOption": "all", "api-version": "7.1-preview.1",
                                       "continuationToken": "page-2-token"}
    for request in server.requests:
        assert_common_headers(request)
        assert request.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert pats.requests_made == 2


def test_list_filters_by_display_name_prefix_client_side(make_pats: Any) -> None:
    pats, server = make_pats(reply(body=example_body("ListPats")))
    assert [p.display_name for p in pats.list(name_prefix="new_")] == ["new_token"]
    assert dict(server.requests[0].url.params)["displayFilterOption"] == "active"


def test_list_stops_when_the_server_repeats_a_continuation_token(make_pats: Any) -> None:
    pats, server = make_pats(reply(body={"continuationToken": "same", "patTokens": []}))
    with pytest.raises(ServerError, match="continuation token repeated"):
        pats.list()
    assert len(server.requests) == 2


def test_get_reads_one_pat_and_calls_the_provider_per_request(make_pats: Any) -> None:
    tokens = iter([f"{ACCESS_TOKEN}-1", f"{ACCESS_TOKEN}-2"])
    pats, server = make_pats(reply(body=example_body("GetPat")), provider=lambda: Secret(next(tokens)))

    info = pats.get("3d3aca0c-9ad3-4b07-8334-08ec8b1ddc32")
    pats.get("3d3aca0c-9ad3-4b07-8334-08ec8b1ddc32")

    assert info.display_name == "analytics_token" and info.scopes == ("vso.analytics",)
    assert dict(server.requests[0].url.params) == {"authorizationId": "3d3aca0c-9ad3-4b07-8334-08ec8b1ddc32",
                                                   "api-version": "7.1-preview.1"}
    assert [r.headers["Authorization"] for r in server.requests] == [
        f"Bearer {ACCESS_TOKEN}-1", f"Bearer {ACCESS_TOKEN}-2"]


def test_get_missing_pat_is_not_found(make_pats: Any) -> None:
    pats, _ = make_pats(reply(404, body={"message": "not here"}))
    with pytest.raises(NotFoundError, match="HTTP 404: not here"):
        pats.get("nope")


def test_create_posts_the_request_shape_and_returns_a_secret(make_pats: Any) -> None:
    pats, server = make_pats(reply(body=example_body("CreatePat")))

    created = pats.create("patrol-keda-r1", ["vso.agentpools", "vso.build"],
                          datetime(2026, 12, 1, 23, 46, 23, 319000, tzinfo=UTC))

    request = server.requests[0]
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"displayName": "patrol-keda-r1",
                                           "scope": "vso.agentpools vso.build",
                                           "validTo": "2026-12-01T23:46:23.319Z", "allOrgs": False}
    assert dict(request.url.params) == {"api-version": "7.1-preview.1"}
    assert isinstance(created.token, Secret)
    assert created.token.reveal() == "dip55dwf4vpitomw63jzvomefmi2jluguprzwwqwuc6xq4fhocwq"
    assert created.info.valid_to == datetime(2020, 12, 1, 23, 46, 23, 320000, tzinfo=UTC)
    assert "dip55dwf" not in repr(created) and "dip55dwf" not in str(created)


def test_create_refuses_a_naive_valid_to(make_pats: Any) -> None:
    pats, server = make_pats(reply(body=example_body("CreatePat")))
    with pytest.raises(ValueError, match="naive"):
        pats.create("x", ["vso.build"], datetime(2026, 1, 1))
    assert server.requests == []


@pytest.mark.parametrize("status", [200, 400, 409])
def test_pat_token_error_is_a_policy_violation_with_200_or_4xx(make_pats: Any, status: int) -> None:
    body = {"patToken": None, "patTokenError": "fullScopePatPolicyViolation"}
    pats, server = make_pats(reply(status, body=body))
    with pytest.raises(PolicyViolationError) as caught:
        pats.create("x", ["app_token"], datetime(2026, 1, 1, tzinfo=UTC))
    assert caught.value.code == "fullScopePatPolicyViolation"
    assert caught.value.status == status
    assert len(server.requests) == 1                      # a policy answer is never retried


def test_unknown_pat_token_error_still_raises_with_the_raw_code(make_pats: Any) -> None:
    pats, _ = make_pats(reply(200, body={"patToken": None, "patTokenError": "sessionTokenRequired"}))
    with pytest.raises(PolicyViolationError) as caught:
        pats.get("id")
    assert caught.value.code == "sessionTokenRequired"


def test_create_is_not_retried_after_a_server_error(make_pats: Any, fake_time: FakeTime) -> None:
    pats, server = make_pats(reply(500), reply(body=example_body("CreatePat")))
    with pytest.raises(ServerError):
        pats.create("x", ["vso.build"], datetime(2026, 1, 1, tzinfo=UTC))
    assert len(server.requests) == 1 and fake_time.sleeps == []


def test_create_is_retried_when_throttled_or_never_sent(make_pats: Any, fake_time: FakeTime) -> None:
    pats, server = make_pats(reply(429, headers={"Retry-After": "2"}), fail(httpx.ConnectError),
                             reply(body=example_body("CreatePat")))
    created = pats.create("x", ["vso.build"], datetime(2026, 1, 1, tzinfo=UTC))
    assert created.info.authorization_id == "4ab5764f-4193-4f1d-b995-64144880b7d7"
    assert len(server.requests) == 3 and fake_time.sleeps == [2.0, 1.0]


def test_update_sends_authorization_id_and_only_what_changes(make_pats: Any) -> None:
    pats, server = make_pats(reply(body=example_body("UpdatePat")))
    info = pats.update("3d3aca0c-9ad3-4b07-8334-08ec8b1ddc32",
                       valid_to=datetime(2020, 12, 25, 23, 46, 23, 319000, tzinfo=UTC))
    request = server.requests[0]
    assert request.method == "PUT"
    assert json.loads(request.content) == {"authorizationId": "3d3aca0c-9ad3-4b07-8334-08ec8b1ddc32",
                                           "validTo": "2020-12-25T23:46:23.319Z"}
    assert info.display_name == "updated_token"
    pats.update("id", display_name="n", scopes=["vso.release"])
    assert json.loads(server.requests[1].content) == {"authorizationId": "id", "displayName": "n",
                                                      "scope": "vso.release"}


@pytest.mark.parametrize("answer", [
    reply(204),
    reply(200),
    reply(200, body={}),
    reply(200, body={"patToken": None, "patTokenError": "none"}),
    reply(404),
    reply(404, body={"patToken": None, "patTokenError": "authorizationNotFound"}),
    reply(200, body={"patToken": None, "patTokenError": "authorizationNotFound"}),
    reply(400, body={"patToken": None, "patTokenError": "tokenNotFound"}),
], ids=["204", "200-empty", "200-{}", "200-none", "404", "404-code", "200-code", "400-tokenNotFound"])
def test_revoke_is_idempotent(make_pats: Any, answer: Handler) -> None:
    pats, server = make_pats(answer)
    assert pats.revoke("cf42cc9f-f170-4375-92ba-c13d58a6545f") is None
    request = server.requests[0]
    assert request.method == "DELETE"
    assert dict(request.url.params) == {"authorizationId": "cf42cc9f-f170-4375-92ba-c13d58a6545f",
                                        "api-version": "7.1-preview.1"}


def test_revoke_swagger_example_answer(make_pats: Any) -> None:
    doc = json.loads((SPECS / "tokens-example-RevokePat.json").read_text(encoding="utf-8-sig"))
    pats, _ = make_pats(reply(204))
    assert "204" in doc["responses"]
    pats.revoke(doc["parameters"]["authorizationId"])


def test_revoke_other_refusals_raise(make_pats: Any) -> None:
    pats, _ = make_pats(reply(400, body={"patToken": None, "patTokenError": "invalidAuthorizationId"}))
    with pytest.raises(PolicyViolationError, match="invalidAuthorizationId"):
        pats.revoke("not-a-uuid")


def test_pat_api_answering_a_sign_in_page_is_unauthorized(make_pats: Any) -> None:
    page = "<html><head><title>Sign In</title></head><body>...</body></html>"
    pats, _ = make_pats(reply(203, text=page, headers={"Content-Type": "text/html; charset=utf-8"}))
    with pytest.raises(UnauthorizedError, match="203") as caught:
        pats.list()
    assert_no_secret(caught.value, ACCESS_TOKEN)


# =============================================================================================
# Authentication and error translation (AdoClient)


def test_pat_basic_header_has_an_empty_user_name(make_ado: Any) -> None:
    ado, server = make_ado(reply(body={"count": 1, "value": [{"id": 1, "name": "p"}]}),
                           credential=Secret("abcdefgh12\n"))
    ado.find_pool("p")
    header = server.requests[0].headers["Authorization"]
    assert header == "Basic OmFiY2RlZmdoMTI="
    assert base64.b64decode(header.removeprefix("Basic ")) == b":abcdefgh12"


def test_bearer_auth_calls_the_provider_each_time(make_ado: Any) -> None:
    tokens = iter(["bearer-one-xyz", "bearer-two-xyz"])
    ado, server = make_ado(reply(body={"value": [{"id": 1, "name": "p"}]}),
                           credential=lambda: Secret(next(tokens)), auth="bearer")
    ado.find_pool("p")
    ado.find_pool("p")
    assert [r.headers["Authorization"] for r in server.requests] == ["Bearer bearer-one-xyz",
                                                                     "Bearer bearer-two-xyz"]


@pytest.mark.parametrize("answer", [
    reply(203, text="<html>Sign in</html>", headers={"Content-Type": "text/html"}),
    reply(203, body={"value": []}),
    reply(200, text="<!DOCTYPE html><html>Sign in</html>",
          headers={"Content-Type": "text/html; charset=utf-8"}),
], ids=["203-html", "203-json", "200-html"])
def test_sign_in_pages_are_unauthorized(make_ado: Any, answer: Handler) -> None:
    ado, server = make_ado(answer)
    with pytest.raises(UnauthorizedError) as caught:
        ado.list_agents(1)
    assert len(server.requests) == 1                      # permanent: no retry
    assert_no_secret(caught.value, PAT_VALUE)


def test_401_carries_the_decoded_service_error_header(make_ado: Any) -> None:
    headers = {"X-TFS-ServiceError":
               "Access%20Denied%3A%20The%20Personal%20Access%20Token%20used%20has%20expired.",
               "WWW-Authenticate": 'Basic realm="https://tfsprodweu5.visualstudio.com/"'}
    ado, _ = make_ado(reply(401, headers=headers))
    with pytest.raises(UnauthorizedError) as caught:
        ado.list_agents(3)
    assert "Access Denied: The Personal Access Token used has expired." in str(caught.value)
    assert caught.value.status == 401 and caught.value.service == "ado"
    assert_no_secret(caught.value, PAT_VALUE)


@pytest.mark.parametrize(("status", "message"), [
    (401, "TF400813: The user '' is not authorized to access this resource."),
    (403, "VS30063: You are not authorized to access https://dev.azure.com."),
])
def test_401_and_403_carry_the_json_message(make_ado: Any, status: int, message: str) -> None:
    body = {"$id": "1", "innerException": None, "message": message,
            "typeName": "Microsoft.TeamFoundation.Framework.Server.UnauthorizedRequestException, x",
            "typeKey": "UnauthorizedRequestException", "errorCode": 0, "eventId": 3000}
    ado, _ = make_ado(reply(status, body=body))
    with pytest.raises(UnauthorizedError, match=message.split(":", maxsplit=1)[0]) as caught:
        ado.list_agents(3)
    assert caught.value.status == status


def test_token_echoed_by_the_server_never_reaches_the_exception(make_ado: Any) -> None:
    basic = base64.b64encode(f":{PAT_VALUE}".encode()).decode()
    headers = {"X-TFS-ServiceError": f"bad%20token%20{PAT_VALUE}"}
    ado, _ = make_ado(reply(401, body={"message": f"Authorization: Basic {basic} / {PAT_VALUE}"},
                            headers=headers))
    with pytest.raises(UnauthorizedError) as caught:
        ado.list_agents(3)
    assert_no_secret(caught.value, PAT_VALUE, basic)


@pytest.mark.parametrize(("status", "error"), [
    (404, NotFoundError), (400, BadRequestError), (405, BadRequestError),
])
def test_other_4xx_are_permanent(make_ado: Any, status: int, error: type[Exception]) -> None:
    ado, server = make_ado(reply(status, body={"message": "nope"}))
    with pytest.raises(error, match=f"HTTP {status}: nope"):
        ado.list_agents(3)
    assert len(server.requests) == 1


def test_409_is_a_conflict_and_retried(make_ado: Any, fake_time: FakeTime) -> None:
    ado, server = make_ado(reply(409, body={"message": "busy"}))
    with pytest.raises(ConflictError):
        ado.list_agents(3)
    assert len(server.requests) == BACKOFF.attempts and fake_time.sleeps == [0.5, 1.0, 2.0]


def test_429_is_retried_after_retry_after(make_ado: Any, fake_time: FakeTime) -> None:
    blocked = reply(429, body={"message": "TF400733: The request has been canceled: Request was blocked"},
                    headers={"Retry-After": "7", "X-RateLimit-Remaining": "0"})
    ado, server = make_ado(blocked, reply(body={"value": []}, headers={"X-RateLimit-Remaining": "150"}))

    assert ado.list_agents(3) == []

    assert fake_time.sleeps == [7.0]
    assert len(server.requests) == 2 and ado.requests_made == 2
    assert ado.rate_limit_remaining == 150


def test_429_exhausted_is_throttled_with_the_delay(make_ado: Any, fake_time: FakeTime) -> None:
    ado, _ = make_ado(reply(429, headers={"Retry-After": "3"}))
    with pytest.raises(ThrottledError) as caught:
        ado.list_agents(3)
    assert caught.value.delay == 3.0
    assert fake_time.sleeps == [3.0, 3.0, 3.0]


def test_retry_after_is_capped_by_the_backoff(make_ado: Any, fake_time: FakeTime) -> None:
    ado, _ = make_ado(reply(429, headers={"Retry-After": "86400"}), reply(body={"value": []}))
    ado.list_agents(3)
    assert fake_time.sleeps == [BACKOFF.max_delay]


def test_delayed_200_slows_the_next_request(make_ado: Any, fake_time: FakeTime) -> None:
    delayed = reply(body={"value": []}, headers={"Retry-After": "2", "X-RateLimit-Delay": "1.25",
                                                 "X-RateLimit-Remaining": "0"})
    ado, _ = make_ado(delayed, reply(body={"value": []}))

    ado.list_agents(1)
    assert fake_time.sleeps == [] and ado.throttle_until == 1002.0 and ado.rate_limit_remaining == 0
    ado.list_agents(2)
    ado.list_agents(3)                                    # the wait is over: no second sleep

    assert fake_time.timeline == ["GET /fabrikam/_apis/distributedtask/pools/1/agents", "sleep 2",
                                  "GET /fabrikam/_apis/distributedtask/pools/2/agents",
                                  "GET /fabrikam/_apis/distributedtask/pools/3/agents"]


def test_rate_limit_delay_alone_slows_the_next_request(make_ado: Any, fake_time: FakeTime) -> None:
    ado, _ = make_ado(reply(body={"value": []}, headers={"X-RateLimit-Delay": "0.75"}),
                      reply(body={"value": []}))
    ado.list_agents(1)
    fake_time.now += 0.5                                  # part of the wait has passed already
    ado.list_agents(2)
    assert fake_time.sleeps == [pytest.approx(0.25)]


def test_5xx_is_retried_then_succeeds(make_ado: Any, fake_time: FakeTime) -> None:
    ado, server = make_ado(reply(503), reply(500, body={"message": "oops"}), reply(body={"value": []}))
    assert ado.list_agents(3) == []
    assert fake_time.sleeps == [0.5, 1.0] and len(server.requests) == 3


def test_5xx_exhausted_is_a_server_error(make_ado: Any, fake_time: FakeTime) -> None:
    ado, server = make_ado(reply(502, body={"message": "bad gateway"}))
    with pytest.raises(ServerError, match="HTTP 502: bad gateway") as caught:
        ado.list_agents(3)
    assert caught.value.status == 502
    assert len(server.requests) == BACKOFF.attempts == ado.requests_made
    assert fake_time.sleeps == [0.5, 1.0, 2.0]


def test_503_retry_after_is_honoured(make_ado: Any, fake_time: FakeTime) -> None:
    ado, _ = make_ado(reply(503, headers={"Retry-After": "4"}), reply(body={"value": []}))
    ado.list_agents(3)
    assert fake_time.sleeps == [4.0]


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError])
def test_transport_errors_are_unavailable(make_ado: Any, fake_time: FakeTime,
                                          exc_type: type[httpx.TransportError]) -> None:
    ado, server = make_ado(fail(exc_type))
    with pytest.raises(UnavailableError) as caught:
        ado.list_agents(3)
    assert isinstance(caught.value.__cause__, exc_type)
    assert len(server.requests) == BACKOFF.attempts and len(fake_time.sleeps) == BACKOFF.attempts - 1
    assert_no_secret(caught.value, PAT_VALUE)


def test_transport_error_then_success(make_ado: Any) -> None:
    ado, _ = make_ado(fail(httpx.ReadTimeout), reply(body={"value": [{"id": 9, "name": "p"}]}))
    assert ado.find_pool("p").id == 9


def test_malformed_json_is_a_server_error(make_ado: Any) -> None:
    ado, _ = make_ado(reply(200, text="not json", headers={"Content-Type": "application/json"}))
    with pytest.raises(ServerError, match="expected a JSON body"):
        ado.list_agents(1)
    ado2, _ = make_ado(reply(200, body={"value": [{"name": "no id"}]}))
    with pytest.raises(ServerError, match=r"malformed answer.*id"):
        ado2.list_agents(1)


def test_every_request_carries_the_common_headers(make_ado: Any, make_pats: Any) -> None:
    ado, server = make_ado(reply(body={"value": [], "authenticatedUser": {"id": "u"}}))
    ado.list_agents(1)
    ado.list_job_requests(1)
    ado.latest_builds("P", 1)
    ado.latest_release_deployments("P")
    ado.connection_data()
    pats, pat_server = make_pats(reply(204))
    pats.revoke("x")
    for request in [*server.requests, *pat_server.requests]:
        assert_common_headers(request)
    for request in server.requests:
        assert request.headers["Authorization"].startswith("Basic ")


def test_client_created_internally_is_closed(fake_time: FakeTime) -> None:
    with AdoClient(ORG, Secret(PAT_VALUE), sleep=fake_time.sleep) as ado:
        assert ado.requests_made == 0
    with PatLifecycleClient(VSSPS, lambda: Secret(ACCESS_TOKEN)) as pats:
        assert pats.requests_made == 0


def test_passed_in_client_is_left_open(fake_time: FakeTime) -> None:
    http = httpx.Client(transport=httpx.MockTransport(reply(body={"value": []})))
    with AdoClient(ORG, Secret(PAT_VALUE), client=http) as ado:
        ado.list_agents(1)
    assert not http.is_closed
    http.close()


# =============================================================================================
# Organization reads


def test_find_pool(make_ado: Any) -> None:
    pools = {"count": 1, "value": [{"id": 44, "name": "contoso agents", "isHosted": False,
                                    "poolType": "automation", "size": 3}]}
    ado, server = make_ado(reply(body=pools))
    pool = ado.find_pool("contoso agents")
    assert (pool.id, pool.name) == (44, "contoso agents")
    request = server.requests[0]
    assert request.url.path == "/fabrikam/_apis/distributedtask/pools"
    assert dict(request.url.params) == {"poolName": "contoso agents", "api-version": "7.1"}


def test_find_pool_none_or_several(make_ado: Any) -> None:
    ado, _ = make_ado(reply(body={"count": 0, "value": []}))
    with pytest.raises(NotFoundError, match="'p' not found"):
        ado.find_pool("p")
    ado2, _ = make_ado(reply(body={"count": 2, "value": [{"id": 1, "name": "p"}, {"id": 2, "name": "p"}]}))
    with pytest.raises(PermanentError, match="found 2 agent pools"):
        ado2.find_pool("p")
    ado3, _ = make_ado(reply(body={"count": 2, "value": [{"id": 1, "name": "P"}, {"id": 2, "name": "p"}]}))
    assert ado3.find_pool("p").id == 2                    # case-insensitive server, exact match wins


def test_list_agents(make_ado: Any) -> None:
    agents = {"count": 2, "value": [
        {"id": 5, "name": "agent-a", "version": "3.240.1", "enabled": True, "status": "online",
         "assignedRequest": {"requestId": 890659, "queueTime": "2024-03-01T10:00:00Z"}},
        {"id": 6, "name": "agent-b", "enabled": True, "status": "offline"}]}
    ado, server = make_ado(reply(body=agents))
    result = ado.list_agents(44)
    assert [(a.id, a.status, a.assigned_request_id) for a in result] == [(5, "online", 890659),
                                                                           (6, "offline", None)]
    request = server.requests[0]
    assert request.url.path == "/fabrikam/_apis/distributedtask/pools/44/agents"
    assert dict(request.url.params) == {"includeAssignedRequest": "true", "api-version": "7.1"}


def test_list_job_requests_as_keda_calls_it(make_ado: Any) -> None:
    jobrequests = json.loads((Path(__file__).parents[1] / "fixtures/ado/keda-jobrequests.json").read_text())
    ado, server = make_ado(reply(body=jobrequests))
    jobs = ado.list_job_requests(12)
    assert sum(j.is_queued for j in jobs) == 2
    request = server.requests[0]
    assert request.url.path == "/fabrikam/_apis/distributedtask/pools/12/jobrequests"
    assert dict(request.url.params) == {"$top": "250"}    # no api-version, exactly KEDA's poll
    ado.list_job_requests(12, top=10)
    assert dict(server.requests[1].url.params) == {"$top": "10"}


def test_find_build_definition(make_ado: Any) -> None:
    definitions = {"count": 1, "value": [{"id": 31, "name": "daily-checks", "path": "\\"}]}
    ado, server = make_ado(reply(body=definitions))
    assert ado.find_build_definition("Platform Operations", "daily-checks") == 31
    request = server.requests[0]
    assert request.url.raw_path.startswith(b"/fabrikam/Platform%20Operations/_apis/build/definitions?")
    assert dict(request.url.params) == {"name": "daily-checks", "api-version": "7.1"}
    assert ado.find_build_definition("P", 17) == 17
    assert ado.find_build_definition("P", "23") == 23
    assert len(server.requests) == 1                      # ids need no lookup


def test_find_build_definition_none_or_several(make_ado: Any) -> None:
    ado, _ = make_ado(reply(body={"count": 0, "value": []}))
    with pytest.raises(NotFoundError):
        ado.find_build_definition("P", "gone")
    ado2, _ = make_ado(reply(body={"count": 2, "value": [{"id": 1}, {"id": 2}]}))
    with pytest.raises(PermanentError, match="definition id instead"):
        ado2.find_build_definition("P", "dup")


def test_latest_builds(make_ado: Any) -> None:
    builds = {"count": 1, "value": [{
        "id": 1201, "buildNumber": "20240301.3", "status": "completed", "result": "failed",
        "queueTime": "2024-03-01T06:00:00.1233333Z", "startTime": "2024-03-01T06:00:10.5Z",
        "finishTime": "2024-03-01T06:12:00Z", "definition": {"id": 31, "name": "daily-checks"}}]}
    ado, server = make_ado(reply(body=builds))
    [build] = ado.latest_builds("Operations", 31)
    assert (build.id, build.result, build.definition_name) == (1201, "failed", "daily-checks")
    request = server.requests[0]
    assert request.url.path == "/fabrikam/Operations/_apis/build/builds"
    assert dict(request.url.params) == {"definitions": "31", "$top": "1",
                                        "queryOrder": "finishTimeDescending",
                                        "statusFilter": "completed", "api-version": "7.1"}
    ado.latest_builds("Operations", 31, top=5, result_filter="succeeded")
    assert dict(server.requests[1].url.params)["resultFilter"] == "succeeded"
    assert dict(server.requests[1].url.params)["$top"] == "5"


def test_latest_release_deployments_go_to_vsrm(make_ado: Any) -> None:
    deployments = {"count": 1, "value": [{"id": 77, "deploymentStatus": "succeeded",
                                          "release": {"id": 9, "name": "Release-9"},
                                          "releaseDefinition": {"id": 3, "name": "infra"},
                                          "completedOn": "2024-03-01T06:20:00Z"}]}
    ado, server = make_ado(reply(body=deployments))
    [dep] = ado.latest_release_deployments("Operations", 3)
    assert (dep.id, dep.status, dep.definition_name) == (77, "succeeded", "infra")
    request = server.requests[0]
    assert request.url.host == "vsrm.dev.azure.com"
    assert request.url.path == "/fabrikam/Operations/_apis/release/deployments"
    assert dict(request.url.params) == {"$top": "1", "queryOrder": "descending", "definitionId": "3",
                                        "api-version": "7.1"}


def test_vsrm_url_explicit_or_missing(make_ado: Any) -> None:
    ado, server = make_ado(reply(body={"value": []}), url="http://127.0.0.1:9/sandbox-org",
                           vsrm_url="http://127.0.0.1:9/vsrm/sandbox-org/")
    ado.latest_release_deployments("P")
    assert server.requests[0].url.path == "/vsrm/sandbox-org/P/_apis/release/deployments"
    ado2, _ = make_ado(reply(body={"value": []}), url="http://127.0.0.1:9/sandbox-org")
    with pytest.raises(ValueError, match="vsrm_url"):
        ado2.latest_release_deployments("P")


def test_connection_data(make_ado: Any) -> None:
    ado, server = make_ado(reply(body={"authenticatedUser": {"id": "u-1", "providerDisplayName": "bot"},
                                       "instanceId": "i-1"}))
    data = ado.connection_data()
    assert (data.authenticated_user_id, data.authenticated_user_name, data.instance_id) == (
        "u-1", "bot", "i-1")
    request = server.requests[0]
    assert request.url.path == "/fabrikam/_apis/connectionData"
    assert dict(request.url.params) == {"connectOptions": "1", "lastChangeId": "-1", "lastChangeId64": "-1",
                                        "api-version": "7.1-preview.1"}


# =============================================================================================
# Probes


def routed(routes: dict[str, Handler]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        for suffix, answer in routes.items():
            if request.url.path.endswith(suffix):
                return answer(request)
        return httpx.Response(404, json={"message": f"no route {request.url.path}"})
    return handler


DAILY = ["vso.agentpools", "vso.build", "vso.pipelineresources_use", "vso.release"]


def test_probe_daily_checks_scopes_all_ok(make_ado: Any) -> None:
    ado, server = make_ado(routed({"/pools": reply(body={"value": [{"id": 1, "name": "p"}]}),
                                   "/build/builds": reply(body={"count": 0, "value": []}),
                                   "/release/releases": reply(body={"count": 0, "value": []})}))
    result = ado.probe(DAILY, project="Operations")
    assert result.ok and result.scopes == dict.fromkeys(DAILY, True)
    assert result.unverified == ("vso.pipelineresources_use",)
    assert "vso.pipelineresources_use: UNVERIFIED" in result.detail
    calls = {(r.url.host, r.url.path): dict(r.url.params) for r in server.requests}
    assert calls == {
        ("dev.azure.com", "/fabrikam/_apis/distributedtask/pools"): {"$top": "1", "api-version": "7.1"},
        ("dev.azure.com", "/fabrikam/Operations/_apis/build/builds"): {
            "$top": "1", "api-version": "7.1"},
        ("vsrm.dev.azure.com", "/fabrikam/Operations/_apis/release/releases"): {
            "$top": "1", "api-version": "7.1"},
    }


def test_probe_reports_a_scope_that_does_not_authenticate(make_ado: Any) -> None:
    denied = reply(401, body={"message": "VS30063: You are not authorized to access https://dev.azure.com."})
    ado, _ = make_ado(routed({"/pools": reply(body={"value": []}), "/build/builds": denied,
                              "/release/releases": reply(body={"value": []})}))
    result = ado.probe("vso.agentpools vso.build vso.release", project="P")
    assert not result.ok
    assert result.scopes == {"vso.agentpools": True, "vso.build": False, "vso.release": True}
    assert "VS30063" in result.detail


def test_probe_keda_scope_with_expired_pat(make_ado: Any) -> None:
    expired = reply(401, headers={"X-TFS-ServiceError": "Access%20Denied%3A%20The%20Personal%20Access%20Token"
                                                        "%20used%20has%20expired."})
    ado, server = make_ado(expired)
    result = ado.probe(["vso.agentpools_manage"])
    assert result == result.__class__(ok=False, scopes={"vso.agentpools_manage": False},
                                      detail=result.detail, unverified=())
    assert "has expired" in result.detail and PAT_VALUE not in result.detail
    assert len(server.requests) == 1


def test_probe_without_project_falls_back_to_connection_data(make_ado: Any) -> None:
    ado, server = make_ado(routed({"/connectionData": reply(body={"authenticatedUser": {"id": "u"}})}))
    result = ado.probe(["vso.build", "vso.pipelineresources_use"])
    assert result.ok and set(result.unverified) == {"vso.build", "vso.pipelineresources_use"}
    assert [r.url.path for r in server.requests] == ["/fabrikam/_apis/connectionData"]   # asked once


def test_probe_unverified_scope_fails_when_nothing_authenticates(make_ado: Any) -> None:
    ado, _ = make_ado(reply(203, text="<html/>", headers={"Content-Type": "text/html"}))
    result = ado.probe(["vso.agentpools", "vso.pipelineresources_use"])
    assert result.scopes == {"vso.agentpools": False, "vso.pipelineresources_use": False}
    assert not result.ok


def test_probe_lets_transient_errors_through(make_ado: Any) -> None:
    ado, _ = make_ado(reply(503))
    with pytest.raises(ServerError):
        ado.probe(["vso.agentpools"])


def test_probe_of_nothing_is_not_ok(make_ado: Any) -> None:
    ado, server = make_ado(reply(body={"value": []}))
    result = ado.probe([])
    assert not result.ok and result.scopes == {} and server.requests == []
