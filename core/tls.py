"""TLS for patrol's requests-based clients (Key Vault and the Entra credentials): one
``SSLContext`` per CA bundle per process.

Why: requests (azure-core's transport, which both azure-keyvault-secrets and azure-identity use)
hands urllib3 a CA *path*, and urllib3 then builds a new context and loads that bundle for
every new connection (urllib3 2.x ``connection._ssl_wrap_socket_and_match_hostname``); each
live connection keeps its own copy. With the public bundle a production process trusts
(certifi's, or ``REQUESTS_CA_BUNDLE``) that is ~1 MB of OpenSSL memory per connection (16
contexts: +17 MB RSS, measured with Python 3.11 / OpenSSL 3); with the sandbox's
one-certificate bundle ~100 KB. The exporter reads its Key Vault sinks over up to
``concurrency`` connections, and as many Entra token requests run at once when its cache is
cold, so the copies added up (docs/benchmarks.md).

:func:`requests_transport` is azure-core's ``RequestsTransport`` over a session whose adapter
(:class:`SharedContextAdapter`) gives urllib3 the shared context and no CA path, so nothing is
loaded per connection. Which bundle is trusted is unchanged: the ``connection_verify`` given,
else what requests would use (``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` when the environment
is trusted, else certifi's). ``connection_verify=False`` is left as requests does it.

The ADO clients use httpx, which has its own shared context (``core._ado_session.tls_context``).
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any

import requests
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.util.retry import Retry
from urllib3.util.ssl_ import create_urllib3_context

_contexts: dict[str, ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def tls_context(ca_bundle: str) -> ssl.SSLContext:
    """The process's one context verifying against ``ca_bundle`` (a file or a directory of
    certificates), built as urllib3 builds its own for a new connection, the bundle loaded once.

    Built under a lock (``functools.lru_cache`` may compute twice when threads race, and the
    exporter's first refresh opens its connections from several threads at once). Shared by
    every connection of every thread: urllib3 only sets ``verify_mode`` again on each
    connection, to the same value (``CERT_REQUIRED``)."""
    with _contexts_lock:
        context = _contexts.get(ca_bundle)
        if context is None:
            context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
            context.verify_mode = ssl.CERT_REQUIRED
            if os.path.isdir(ca_bundle):
                context.load_verify_locations(capath=ca_bundle)
            else:
                context.load_verify_locations(cafile=ca_bundle)
            _contexts[ca_bundle] = context
        return context


def forget_tls_contexts() -> None:
    """Drop the shared contexts (tests; connections already open keep theirs)."""
    with _contexts_lock:
        _contexts.clear()


class SharedContextAdapter(HTTPAdapter):
    """requests' adapter, but verifying with :func:`tls_context` instead of a CA path that
    urllib3 would load again for every new connection. ``verify=False`` is left as requests
    does it. Retries stay off, as in azure-core's own adapter (its pipeline retries)."""

    def __init__(self) -> None:
        super().__init__(max_retries=Retry(total=False, redirect=False, raise_on_status=False))

    def build_connection_pool_key_attributes(self, request: requests.PreparedRequest, verify: bool | str,
                                             cert: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if verify is not False and host_params.get("scheme") == "https":
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
            pool_kwargs["ssl_context"] = tls_context(verify if isinstance(verify, str) else DEFAULT_CA_BUNDLE_PATH)
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: bool | str, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        if verify is not False and url.lower().startswith("https"):
            conn.ca_certs = None                  # the pool's context already trusts the bundle
            conn.ca_cert_dir = None


def requests_transport(**connection: Any) -> RequestsTransport:
    """azure-core's requests transport (``connection`` as its keywords, e.g. ``connection_verify``)
    over a session whose adapter shares :func:`tls_context`. The transport owns the session:
    closing the client (or credential) that uses it closes the session."""
    session = requests.Session()
    adapter = SharedContextAdapter()
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter)
    return RequestsTransport(session=session, session_owner=True, **connection)
