"""`patrol rotate` asking a worker: the client and the CLI against two real worker HTTP servers
(a leader and a standby) behind a stand-in for their Kubernetes Service, which sends each new
connection to the replica the test chooses, as kube-proxy sends it to either endpoint."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from rotation_fakes import make_config
from test_webhook_server import TOKEN, World

from core.errors import ConfigError, UnavailableError
from core.secret import Secret
from remediation import cli
from remediation.remote import UNAVAILABLE_RETRIES, WorkerClient
from remediation.server import WorkerServer


@contextmanager
def serving(server: WorkerServer) -> Iterator[str]:
    """Serve one WorkerServer on loopback from a background thread; yields its URL."""
    ready = threading.Event()
    port: list[int] = []
    holder: dict[str, Any] = {}

    async def main() -> None:
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), asyncio.Event()
        async with server.serving("127.0.0.1", 0) as bound:
            port.append(bound)
            ready.set()
            await holder["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"http://127.0.0.1:{port[0]}"
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)


class Service:
    """Forwards request ``i`` to ``backends[route[i]]`` (the last route repeats)."""

    def __init__(self, backends: list[str], route: list[int]) -> None:
        self.backends, self.route, self.sent = backends, route, 0
        self.seen: list[int] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                index = service.route[min(service.sent, len(service.route) - 1)]
                service.sent += 1
                service.seen.append(index)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                request = urllib.request.Request(service.backends[index] + self.path, data=body,
                                                 method=self.command, headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=10) as resp:
                        status, payload, extra = resp.status, resp.read(), dict(resp.headers)
                except urllib.error.HTTPError as exc:
                    status, payload, extra = exc.code, exc.read(), dict(exc.headers)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if "Location" in extra:
                    self.send_header("Location", extra["Location"])
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _forward

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> Service:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


STANDBY, LEADER = 0, 1


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[World, World, list[str]]]:
    standby = World(tmp_path / "a", accepting=lambda: "not the lease holder", leader=lambda: "worker-1")
    leader = World(tmp_path / "b", leader=lambda: "worker-1")
    leader.work.release.set()
    try:
        with serving(standby.server) as a, serving(leader.server) as b:
            yield standby, leader, [a, b]
    finally:
        standby.close()
        leader.close()


def test_the_client_retries_a_standby_until_it_reaches_the_leader(
        replicas: tuple[World, World, list[str]]) -> None:
    standby, leader, urls = replicas
    naps: list[float] = []
    with Service(urls, [STANDBY, STANDBY, LEADER, STANDBY, LEADER]) as service:
        client = WorkerClient(service.url, Secret(TOKEN), sleep=naps.append)
        answer = client.start("keda", reason="e2e")
        assert answer.status == 202 and answer.reason == "accepted"
        assert leader.dispatcher.wait_idle(5)
        record = client.rotation(str(answer.body["rotation_id"]))    # the standby: 503, then the leader
        assert record.status == 200 and record.body["outcome"] == "succeeded"
        assert service.seen == [STANDBY, STANDBY, LEADER, STANDBY, LEADER]
    assert naps == [1.0, 1.0, 1.0]
    assert standby.journal.count() == 0 and leader.journal.count() == 1
    assert standby.sample("patrol_rotation_requests_total", code="503") == 2


def test_the_client_gives_up_after_its_retries_and_names_the_leader(
        replicas: tuple[World, World, list[str]]) -> None:
    _, _, urls = replicas
    with Service(urls, [STANDBY]) as service:
        answer = WorkerClient(service.url, Secret(TOKEN), sleep=lambda _s: None).start("keda", reason="x")
        assert (answer.status, answer.body["leader"]) == (503, "worker-1")
        assert service.sent == 1 + UNAVAILABLE_RETRIES


def cli_args(**extra: Any) -> argparse.Namespace:
    values: dict[str, Any] = {"token": "keda", "json": False, "compromised": False, "no_wait": False,
                              "worker_url": None}
    values.update(extra)
    return argparse.Namespace(**values)


ENV = {"PATROL_WEBHOOK_TOKEN": TOKEN}


def test_patrol_rotate_through_the_service_follows_the_rotation_to_its_end(
        replicas: tuple[World, World, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    _, leader, urls = replicas
    with Service(urls, [STANDBY, LEADER, STANDBY, LEADER]) as service:
        out = io.StringIO()
        args = cli_args(worker_url=service.url, json=True)
        code = cli.rotate_through_worker(args, make_config(), ENV, "rotate now", holder="worker-1", out=out,
                                         where="patrol/patrol-worker", sleep=lambda _s: None)
        assert code == cli.EXIT_OK, capsys.readouterr().err
    doc = json.loads(out.getvalue())
    [record] = leader.journal.recent("keda")
    assert (doc["outcome"], doc["rotation"]["id"]) == ("succeeded", record.id)
    assert record.trigger == "manual" and record.reason == "POST /rotations: rotate now"
    assert TOKEN not in out.getvalue() + capsys.readouterr().err


def test_patrol_rotate_no_wait_returns_once_started(replicas: tuple[World, World, list[str]]) -> None:
    _, leader, urls = replicas
    out = io.StringIO()
    code = cli.rotate_through_worker(cli_args(worker_url=urls[LEADER], no_wait=True), make_config(), ENV, "r",
                                     holder="worker-1", out=out, where="x", sleep=lambda _s: None)
    assert code == cli.EXIT_OK
    [record] = leader.journal.recent("keda")
    assert f"(rotation {record.id})" in out.getvalue() and "succeeded" not in out.getvalue()


@pytest.mark.parametrize(("what", "env", "url", "message"), [
    ("no url", ENV, None, "no worker URL is set"),
    ("no bearer", {}, "LEADER", "needs the webhook bearer token"),
    ("wrong bearer", {"PATROL_WEBHOOK_TOKEN": "nope"}, "LEADER", "refused the bearer token"),
    ("nobody listening", ENV, "http://127.0.0.1:9", "cannot reach the worker at http://127.0.0.1:9"),
])
def test_patrol_rotate_refusals_say_what_to_do(replicas: tuple[World, World, list[str]],
                                               capsys: pytest.CaptureFixture[str], what: str,
                                               env: dict[str, str], url: str | None, message: str) -> None:
    _, leader, urls = replicas
    args = cli_args(worker_url=urls[LEADER] if url == "LEADER" else url)
    code = cli.rotate_through_worker(args, make_config(), env, "r", holder="worker-1", out=io.StringIO(),
                                     where="patrol/patrol-worker", sleep=lambda _s: None)
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILURE and message in err, err
    assert "Traceback" not in err and TOKEN not in err
    assert leader.journal.count() == 0


def test_a_running_rotation_is_named_and_a_bad_url_is_a_config_error(
        replicas: tuple[World, World, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    _, leader, urls = replicas
    leader.work.release.clear()                       # the first rotation keeps running
    first = WorkerClient(urls[LEADER], Secret(TOKEN)).start("keda", reason="first")
    code = cli.rotate_through_worker(cli_args(worker_url=urls[LEADER]), make_config(), ENV, "r",
                                     holder="worker-1", out=io.StringIO(), where="x", sleep=lambda _s: None)
    assert code == cli.EXIT_FAILURE
    assert f"(rotation {first.body['rotation_id']})" in capsys.readouterr().err
    leader.work.release.set()
    with pytest.raises(ConfigError, match="--worker-url"):
        cli.rotate_through_worker(cli_args(worker_url="patrol-worker:9878"), make_config(), ENV, "r",
                                  holder=None, out=io.StringIO(), where="x")
    with pytest.raises(UnavailableError, match="cannot reach"):
        WorkerClient("http://127.0.0.1:9", Secret(TOKEN)).rotation("abc")
