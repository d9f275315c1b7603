"""core.ado.Prober and the cookie-free HTTP clients, over httpx.MockTransport.

Why cookies matter: the prober sends many PATs over one connection pool. If that pool kept
ADO's session cookies, a cookie set while one PAT was probed would ride along with the next
PAT's request, and the answer would say something about the wrong identity. Every client patrol
makes refuses cookies; these tests prove a ``Set-Cookie`` is never sent back.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest

from core.ado import AdoClient, PatLifecycleClient, Prober
from core.errors import ServerError
from core.retry import Backoff
from core.secret import Secret

ORG = "https://dev.azure.com/fabrikam"
VSSPS = "https://vssps.dev.azure.com/fabrikam"
GOOD = "goodgoodgoodgoodgoodgoodgoodgoodgoodgoodgoodgoodgood"
BAD = "badbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadb"
SESSION_COOKIE = "VstsSession=identity-of-the-first-caller; Path=/; Secure; HttpOnly"
DAILY = ["vso.agentpools", "vso.build", "vso.pipelineresources_use", "vso.release"]
BACKOFF = Backoff(delays=(0.5,))


def basic(pat: str) -> str:
    return "Basic " + base64.b64encode(f":{pat}".encode()).decode()


@dataclass
class Recorder:
    """A server that sets a session cookie on every answer and records what came back."""

    valid: set[str] = field(default_factory=lambda: {basic(GOOD)})
    requests: list[httpx.Request] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
        headers = {"Set-Cookie": SESSION_COOKIE, **self.headers}
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Basic ") and authorization not in self.valid:
            return httpx.Response(401, headers=headers)
        if "tokens/pats" in request.url.path:
            return httpx.Response(200, json={"patTokens": [], "continuationToken": ""}, headers=headers)
        return httpx.Response(200, json={"count": 0, "value": []}, headers=headers)

    def cookies_sent(self) -> list[str]:
        return [r.headers["Cookie"] for r in self.requests if "Cookie" in r.headers]


def test_the_recorder_sees_cookies_a_default_httpx_client_sends_back() -> None:
    """The control: without patrol's jar, httpx sends the session cookie back (so the tests
    below would catch a client that keeps cookies)."""
    server = Recorder()
    with httpx.Client(transport=httpx.MockTransport(server)) as http:
        http.get(f"{ORG}/_apis/distributedtask/pools")
        http.get(f"{ORG}/_apis/distributedtask/pools")
    assert server.cookies_sent() == ["VstsSession=identity-of-the-first-caller"]


def test_ado_client_never_sends_a_cookie_back() -> None:
    server = Recorder()
    with AdoClient(ORG, Secret(GOOD), transport=httpx.MockTransport(server)) as ado:
        ado.probe(["vso.agentpools"])
        ado.list_agents(1)
    assert len(server.requests) == 2 and server.cookies_sent() == []


def test_pat_lifecycle_client_never_sends_a_cookie_back() -> None:
    server = Recorder()
    with PatLifecycleClient(VSSPS, lambda: Secret("eyJ.bearer.token"), transport=httpx.MockTransport(server)) as pats:
        pats.list()
        pats.list()
    assert len(server.requests) == 2 and server.cookies_sent() == []


def test_a_cookie_set_while_one_pat_is_probed_never_rides_with_another() -> None:
    server = Recorder()
    with Prober(ORG, transport=httpx.MockTransport(server), backoff=BACKOFF) as prober:
        first = prober.probe(Secret(GOOD), ["vso.agentpools"])
        second = prober.probe(Secret(BAD), ["vso.agentpools"])
    assert first.ok and not second.ok
    assert [r.headers["Authorization"] for r in server.requests] == [basic(GOOD), basic(BAD)]
    assert server.cookies_sent() == []


def test_a_client_or_a_transport_not_both() -> None:
    with httpx.Client() as http, pytest.raises(ValueError, match="not both"):
        AdoClient(ORG, Secret(GOOD), client=http, transport=httpx.MockTransport(Recorder()))


# ---------------------------------------------------------------------------------------------
# The prober is AdoClient.probe over one pool


@dataclass
class Clock:
    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def routes(denied: set[str]) -> Callable[[httpx.Request], httpx.Response]:
    """Pools answer every PAT; builds refuse those in ``denied`` (VS30063, as ADO does)."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/build/builds") and request.headers["Authorization"] in denied:
            return httpx.Response(401, json={"message": "VS30063: You are not authorized"})
        return httpx.Response(200, json={"count": 0, "value": []})
    return handler


def test_a_probe_gives_what_ado_client_probe_gives() -> None:
    handler = routes({basic(BAD)})
    for pat in (GOOD, BAD):
        with AdoClient(ORG, Secret(pat), transport=httpx.MockTransport(handler), backoff=BACKOFF) as ado:
            expected = ado.probe(DAILY, project="Operations")
        with Prober(ORG, transport=httpx.MockTransport(handler), backoff=BACKOFF) as prober:
            got = prober.probe(Secret(pat), DAILY, project="Operations")
        assert got == expected
    assert not got.ok and got.scopes["vso.build"] is False and got.scopes["vso.agentpools"] is True


def test_the_vsrm_url_is_derived_or_taken_as_given() -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(f"{request.url.host}{request.url.path}")
        return httpx.Response(200, json={"value": []})

    with Prober(ORG, transport=httpx.MockTransport(handler)) as prober:
        prober.probe(Secret(GOOD), ["vso.release"], project="P")
    with Prober("http://127.0.0.1/sandbox-org", vsrm_url="http://127.0.0.1/vsrm/sandbox-org/",
                transport=httpx.MockTransport(handler)) as prober:
        prober.probe(Secret(GOOD), ["vso.release"], project="P")
    assert hosts == ["vsrm.dev.azure.com/fabrikam/P/_apis/release/releases",
                     "127.0.0.1/vsrm/sandbox-org/P/_apis/release/releases"]


def test_concurrent_probes_each_send_their_own_pat_and_get_their_own_answer() -> None:
    pats = [f"{i:02d}".ljust(52, "x") for i in range(40)]
    server = Recorder(valid={basic(p) for p in pats[::2]})
    with Prober(ORG, transport=httpx.MockTransport(server), backoff=BACKOFF) as prober, \
            ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: prober.probe(Secret(p), ["vso.agentpools_manage"]), pats))
        assert prober.requests_made == len(pats)                       # one pool counts them all
    assert [r.ok for r in results] == [i % 2 == 0 for i in range(len(pats))]
    assert sorted(r.headers["Authorization"] for r in server.requests) == sorted(basic(p) for p in pats)
    assert server.cookies_sent() == []


def test_a_slow_down_asked_during_one_probe_delays_the_next_one() -> None:
    clock = Clock()
    server = Recorder(valid={basic(GOOD), basic(BAD)}, headers={"Retry-After": "3"})
    with Prober(ORG, transport=httpx.MockTransport(server), backoff=BACKOFF, clock=clock,
                sleep=clock.sleep) as prober:
        prober.probe(Secret(GOOD), ["vso.agentpools"])
        assert prober.throttle_until == 1003.0 and clock.sleeps == []
        prober.probe(Secret(BAD), ["vso.agentpools"])                   # another PAT, same identity
    assert clock.sleeps == [3.0]


def test_an_outage_is_an_error_not_an_invalid_token() -> None:
    clock = Clock()
    with Prober(ORG, transport=httpx.MockTransport(lambda r: httpx.Response(503)), backoff=BACKOFF,
                clock=clock, sleep=clock.sleep) as prober, pytest.raises(ServerError):
        prober.probe(Secret(GOOD), ["vso.agentpools"])
    assert clock.sleeps == [0.5]                                        # retried per the backoff


def test_no_pat_value_in_a_probe_detail() -> None:
    expired = httpx.Response(401, headers={"X-TFS-ServiceError": "Access%20Denied%3A%20expired"})
    with Prober(ORG, transport=httpx.MockTransport(lambda r: expired)) as prober:
        result = prober.probe(Secret(BAD), ["vso.agentpools"])
    assert not result.ok and "expired" in result.detail and BAD not in result.detail
