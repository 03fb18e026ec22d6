"""gRPC TLS credentials from PEM files: mutual TLS on every connection.

The gateway's server requires a client certificate issued by its configured CA; its
channels to registries present the gateway's certificate and trust the registries' CA;
emulators serve TLS and require the gateway's certificate the same way.
"""

from __future__ import annotations

from pathlib import Path

import grpc


def _read(path: Path | str) -> bytes:
    return Path(path).read_bytes()


def server_credentials(cert: Path | str, key: Path | str, ca: Path | str) -> grpc.ServerCredentials:
    """TLS server credentials that require a client certificate signed by ``ca``.

    Raises:
        OSError: A file cannot be read.
    """
    return grpc.ssl_server_credentials(
        [(_read(key), _read(cert))], root_certificates=_read(ca), require_client_auth=True
    )


def channel_credentials(
    ca: Path | str, cert: Path | str, key: Path | str
) -> grpc.ChannelCredentials:
    """Mutual-TLS channel credentials: trust ``ca``, present ``cert``/``key``.

    Raises:
        OSError: A file cannot be read.
    """
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert)
    )
