"""The sandbox Entra and Key Vault, served over real TLS on a background event loop for contract tests.

The real azure-identity/MSAL and azure-keyvault-secrets clients are synchronous, so the servers run
on their own loop in a daemon thread (as they would inside ``patrol sandbox``), and every touch of
server state from a test goes through :meth:`IdentityWorld.call`, which runs it on that loop.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from sandbox.entra import Entra
from sandbox.keyvault import KeyVaultStore
from sandbox.tls import Tls, make_tls

T = TypeVar("T")

TENANT = "8f0b1c2d-3e4f-4a5b-9c6d-7e8f9a0b1c2d"
PUBLIC_CLIENT = "0d3e2f6a-1b2c-4d5e-8f90-a1b2c3d4e5f6"
APP_CLIENT = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d9e"
APP_SECRET = "app-secret-value"
USER = "bot@sandbox.example"
PASSWORD = "correct horse battery staple"
ADO_SCOPE = "499b84ac-1321-427f-aa17-267ca6975798/.default"
ADO_RESOURCE = "499b84ac-1321-427f-aa17-267ca6975798"
VAULT_SCOPE = "https://vault.azure.net/.default"


@dataclass(frozen=True)
class Seen:
    """One request a server received (path with query), for asserting what the real client sent."""

    service: str
    method: str
    path_qs: str
    status: int


@dataclass
class IdentityWorld:
    tls: Tls
    entra: Entra
    kv: KeyVaultStore
    authority: str
    vault_url: str
    loop: asyncio.AbstractEventLoop
    seen: list[Seen] = field(default_factory=list)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn on the server loop (where all sandbox state lives) and return its result."""

        async def run() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    def credential_kwargs(self) -> dict[str, Any]:
        """The settings every azure-identity credential needs against this local authority
        (docs/external-apis.md), without azure-core's retries so failures show at once."""
        return {
            "authority": self.authority,
            "disable_instance_discovery": True,
            "connection_verify": self.tls.ca_pem_path,
            "retry_total": 0,
        }

    def requests(self, service: str, method: str | None = None, contains: str = "") -> list[Seen]:
        return [
            s
            for s in list(self.seen)
            if s.service == service and (method is None or s.method == method) and contains in s.path_qs
        ]


def authority_port_hook(authority: str) -> Callable[[Any], None]:
    """azure-core ``raw_request_hook`` putting the authority's port back on port-less URLs.

    MSAL builds the user-realm discovery URL from the host name only, so against an authority on a
    non-443 port the password grant would call https://127.0.0.1/common/userrealm/... (port 443).
    """
    a = urlsplit(authority)

    def hook(pipeline_request: Any) -> None:
        request = pipeline_request.http_request
        u = urlsplit(request.url)
        if u.scheme == "https" and u.hostname == a.hostname and u.port is None and a.port not in (None, 443):
            request.url = urlunsplit(u._replace(netloc=a.netloc))

    return hook


def _recorder(service: str, seen: list[Seen]) -> Any:
    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        seen.append(Seen(service, request.method, request.path_qs, response.status))
        return response

    return record


@contextmanager
def serve_identity(directory: str, **entra_options: Any) -> Iterator[IdentityWorld]:
    """Start Entra and Key Vault on 127.0.0.1:0 over TLS; seed one user, one public and one app client."""
    tls = make_tls(directory)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="identity-world", daemon=True)
    thread.start()
    seen: list[Seen] = []
    ports: dict[str, int] = {}
    entra = Entra(TENANT, **entra_options)
    kv = KeyVaultStore(entra, base_url_getter=lambda: f"https://127.0.0.1:{ports['kv']}")
    runners: list[web.AppRunner] = []

    async def start() -> None:
        entra.add_user(USER, PASSWORD)
        entra.add_public_client(PUBLIC_CLIENT)
        entra.add_confidential_client(APP_CLIENT, APP_SECRET)
        for name, app in (
            ("entra", entra.app([_recorder("entra", seen)])),
            ("kv", kv.app([_recorder("keyvault", seen)])),
        ):
            runner = web.AppRunner(app, shutdown_timeout=1)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context).start()
            runners.append(runner)
            ports[name] = runner.addresses[0][1]
        entra.authority_url = f"https://127.0.0.1:{ports['entra']}"

    async def stop() -> None:
        for runner in runners:
            await runner.cleanup()
        # TLS transports finish closing (close_notify) on later loop iterations.
        await asyncio.sleep(0.1)

    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield IdentityWorld(
            tls=tls,
            entra=entra,
            kv=kv,
            authority=f"https://127.0.0.1:{ports['entra']}",
            vault_url=f"https://127.0.0.1:{ports['kv']}",
            loop=loop,
            seen=seen,
        )
    finally:
        # A credential that saw an error response keeps it (and so its pooled TLS connection) until the
        # credential is garbage-collected (urllib3 2 closes pools by finalizer); collect before the
        # servers stop, or their half of such connections is left unclosed.
        gc.collect()
        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
