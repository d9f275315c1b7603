"""A loopback HTTP server that answers any status asked for, to get *real* azure-core responses.

Error-translation tests build azure-core exceptions the way the SDK does (``HttpResponseError(
response=...)``), and for that they need a genuine ``azure.core.rest.HttpResponse``: this server
plus :func:`azure_response` produce one over real HTTP, with no SDK internals and no mocks.
``GET /status/429?retry_after=7`` → 429, ``Retry-After: 7``, a Key Vault-shaped error body
(``shape=oauth``: Entra's ``{"error", "error_description"}`` instead).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from azure.core import PipelineClient
from azure.core.rest import HttpRequest, HttpResponse


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        status = int(parts.path.rsplit("/", 1)[-1])
        query = parse_qs(parts.query)
        code = query.get("code", ["SomeCode"])[0]
        message = query.get("message", ["something happened"])[0]
        doc: dict[str, object] = {"error": {"code": code, "message": message}}
        if query.get("shape") == ["oauth"]:                      # Entra's token-endpoint error shape
            doc = {"error": code, "error_description": message}
        body = json.dumps(doc).encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if "retry_after" in query:
            self.send_header("Retry-After", query["retry_after"][0])
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def status_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def azure_response(base_url: str, status: int, **query: str) -> HttpResponse:
    """A real azure-core response with ``status`` (body read, connection closed)."""
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    client: PipelineClient[HttpRequest, HttpResponse] = PipelineClient(base_url, policies=[])
    with client:
        response: HttpResponse = client.send_request(HttpRequest("GET", f"{base_url}/status/{status}?{qs}"))
        response.read()
        response.close()
    return response
