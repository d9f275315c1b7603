"""Every ADO client of a process verifies TLS with one shared context.

httpx builds a new ``SSLContext`` per client, loading the whole CA bundle each time (about
1 MB of OpenSSL allocations). The worker makes a client per saga step; heaptrack of a live worker
in the soak counted ~95 contexts in 10 minutes, and their freed memory fragmented the heap until
RSS had grown ~15 MB. These tests count the CA-bundle loads directly on the standard library's
``ssl.SSLContext``.
"""

from __future__ import annotations

import ssl

from core._ado_session import http_client, tls_context
from core.ado import AdoClient, PatLifecycleClient
from core.secret import Secret


def test_many_ado_clients_load_the_ca_bundle_once(ca_loads: list[object]) -> None:
    for i in range(20):
        AdoClient("https://dev.azure.com/example", Secret(f"pat-{i}"), auth="pat").close()
        PatLifecycleClient("https://vssps.dev.azure.com/example", lambda: Secret("bearer")).close()
    assert len(ca_loads) == 1


def test_the_shared_context_verifies_like_httpx_default(ca_loads: list[object]) -> None:
    context = tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.get_ca_certs() or context.cert_store_stats()["x509_ca"] > 0
    with http_client() as first, http_client() as second:
        assert first is not second
    assert tls_context() is context and len(ca_loads) == 1
