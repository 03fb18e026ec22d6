"""Security of the gateway: mutual TLS, bearer JWTs, roles, signed instructions, limits.

One module per concern: ``layout`` (where the development PKI's files live), ``certs``
(``carbonlink certs init``), ``tls`` (gRPC credentials), ``tokens`` (JWT verification),
``policy`` (roles per RPC, account scope), ``instructions`` (signed instructions),
``nonces`` (replay protection in the database), ``ratelimit``, ``interceptor`` and
``settings`` (wiring from the configuration).
"""
