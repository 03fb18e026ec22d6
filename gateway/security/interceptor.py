"""The authentication and authorization interceptor of the gateway service.

For every call to ``carbonlink.v1.LinkageGateway`` (health and reflection stay open) it
reads the bearer token, verifies it, spends the call's cost of the caller's rate budget
(one, or one per transfer of a batch),
checks the RPC's roles and the accounts the request moves, and for a signed RPC checks
the instruction signature and claims its nonce; the handler then runs with the
signature bound to the provenance events it appends. It sits inside the error-mapping
interceptor, which turns the typed errors raised here into status codes with details.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Any

import grpc
import structlog

from gateway.handlers import SERVICE_PREFIX, GatewayCallInterceptor, StreamBehavior, UnaryBehavior
from gateway.security.instructions import SIGNED_METHODS, InstructionVerifier
from gateway.security.policy import acting_as, authorize
from gateway.security.ratelimit import RateLimiter, StreamSlots
from gateway.security.tokens import Principal, TokenVerifier, certificate_thumbprint
from registry_bridge.errors import Unauthenticated
from registry_bridge.event_log import signed_instruction

_logger = structlog.get_logger(__name__)
_BEARER = "bearer "


def rate_cost(method: str, request: Any) -> int:
    """What a call spends of its caller's rate budget: one, and a batch one per transfer,
    so that batching is no way around the limit."""
    if method == "SubmitTransfers":
        return max(1, len(request.transfers))
    return 1


class SecurityInterceptor(GatewayCallInterceptor):
    """Bearer JWT, rate limit, roles, account scope and instruction signature per call;
    open streams capped per client."""

    def __init__(
        self,
        tokens: TokenVerifier,
        limiter: RateLimiter,
        instructions: InstructionVerifier,
        streams: StreamSlots,
        *,
        require_bound_tokens: bool = False,
    ) -> None:
        self._tokens = tokens
        self._limiter = limiter
        self._instructions = instructions
        self._streams = streams
        self._require_bound_tokens = require_bound_tokens

    def _admit(
        self, full_method: str, request: Any, context: grpc.ServicerContext
    ) -> tuple[Principal, Any]:
        """Check the call; returns the caller and the signature to record (or None for
        unsigned RPCs)."""
        principal = self._principal(context)
        structlog.contextvars.bind_contextvars(client=principal.subject)
        method = full_method[len(SERVICE_PREFIX) :]
        self._limiter.take(principal.subject, rate_cost(method, request))
        authorize(method, principal, request)
        if method not in SIGNED_METHODS:
            return principal, None
        signed_by = self._instructions.verify(full_method, request, principal)
        _logger.info("instruction_signature_verified", key_id=signed_by["key_id"])
        return principal, signed_by

    def _principal(self, context: grpc.ServicerContext) -> Principal:
        values = [
            value
            for key, value in context.invocation_metadata() or ()
            if key == "authorization" and isinstance(value, str)
        ]
        if not values:
            raise Unauthenticated("no bearer token: send 'authorization: Bearer <JWT>'")
        if len(values) > 1 or not values[0][: len(_BEARER)].lower() == _BEARER:
            raise Unauthenticated("authorization must be one 'Bearer <JWT>' header")
        principal = self._tokens.verify(values[0][len(_BEARER) :].strip())
        self._check_binding(principal, context)
        return principal

    def _check_binding(self, principal: Principal, context: grpc.ServicerContext) -> None:
        """A token bound to a client certificate (RFC 8705) is good only on a connection
        made with that certificate: a token copied off one client is of no use to another
        holder of a certificate of the same CA."""
        bound = principal.certificate_thumbprint
        if bound is None:
            if self._require_bound_tokens:
                raise Unauthenticated(
                    "bearer token is bound to no client certificate (cnf x5t#S256), which "
                    "this gateway requires"
                )
            return
        presented = context.auth_context().get("x509_pem_cert") or []
        if not presented:
            raise Unauthenticated(
                "bearer token is bound to a client certificate; the call presented none"
            )
        if not hmac.compare_digest(certificate_thumbprint(presented[0]), bound):
            raise Unauthenticated("bearer token is bound to another client certificate")

    def _unary(self, behavior: UnaryBehavior, full_method: str) -> UnaryBehavior:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            principal, signed_by = self._admit(full_method, request, context)
            with acting_as(principal):
                if signed_by is None:
                    return behavior(request, context)
                with signed_instruction(signed_by):
                    return behavior(request, context)

        return wrapped

    def _stream(self, behavior: StreamBehavior, full_method: str) -> StreamBehavior:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            principal, _ = self._admit(full_method, request, context)
            with self._streams.holding(principal.subject), acting_as(principal):
                yield from behavior(request, context)

        return wrapped
