"""A secure gateway's metrics endpoint speaks TLS and asks for a client certificate."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gateway.security.layout import TlsLayout
from tests.integration.security.conftest import running_secure_gateway


def _https(pki: TlsLayout, role: str | None) -> urllib.request.OpenerDirector:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    if role is not None:
        context.load_cert_chain(str(pki.client_cert(role)), str(pki.client_key(role)))
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))


def test_metrics_need_tls_and_a_client_certificate_of_the_ca(
    pki: TlsLayout, tmp_path: Path
) -> None:
    with running_secure_gateway(
        pki, f"sqlite:///{tmp_path}/g.db", metrics_listen="127.0.0.1:0"
    ) as gateway:
        url = f"https://localhost:{gateway.server.metrics_port}/metrics"
        with _https(pki, "auditor").open(url, timeout=10) as answer:
            assert answer.status == 200
            assert b"carbonlink_transfers_unfinished" in answer.read()
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _https(pki, None).open(url, timeout=10).read()
        plain = f"http://127.0.0.1:{gateway.server.metrics_port}/metrics"
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(plain, timeout=10).read()
