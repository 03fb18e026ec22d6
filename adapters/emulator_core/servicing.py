"""Small steps every emulated registry's servicer takes the same way.

Each takes the native values a servicer has read from its own messages, so the native
vocabulary (field names, refusal wording) stays in the registry's ``emulator.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

import grpc
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import Message

from adapters.client_core import from_rfc3339
from adapters.emulator_core.faults import batch_cut
from adapters.emulator_core.rejections import native_rules
from adapters.emulator_core.store import Rejection, Store

BATCH_ITEMS_CAP = 1000
"""Items one batch call may carry; a longer batch is refused whole (``BATCH_TOO_LARGE``).
It bounds how long one call holds the store's write lock, and so how long every other
caller of the registry waits; the clients split batches well below it."""

Item = TypeVar("Item")
Reply = TypeVar("Reply")
Result = TypeVar("Result", bound=Message)
Answer = TypeVar("Answer", bound=Message)


class BatchResponse(Protocol[Result]):
    """A native batch response: one result per item, each an answer or a refusal."""

    @property
    def results(self) -> RepeatedCompositeFieldContainer[Result]: ...


class Identified(Protocol):
    """A native batch item whose operation id is named ``operation_id``."""

    @property
    def operation_id(self) -> str: ...


def operation_id_of(item: Identified) -> str:
    """The operation id of an item that names it ``operation_id`` (see :func:`serve_batch`)."""
    return item.operation_id


def required_moment(text: str, message: str) -> datetime:
    """The RFC 3339 moment a native request must carry.

    Args:
        text: The native field's value.
        message: The refusal, in the registry's own words, when it is empty.

    Raises:
        ValueError: The field is empty (answered as ``INVALID_REQUEST``) or malformed.
    """
    moment = from_rfc3339(text)
    if moment is None:
        raise ValueError(message)
    return moment


def serve_batch(
    store: Store,
    items: Sequence[Item],
    serve: Callable[[Item], Reply],
    refuse: Callable[[Item, Rejection], Reply],
    operation_id: Callable[[Item], str] | None = None,
) -> list[Reply]:
    """Serve a batch RPC: every item as its single call, in one store transaction.

    Each item runs through ``serve``, the single call's own handling, so the rules, the
    refusals and the operation-id idempotency are the single call's; the store refuses
    an operation before it writes anything (:meth:`Store.batch`), so a refused item
    leaves nothing behind but its recorded refusal, and the next item goes on.

    Args:
        store: The registry's store.
        items: The native items, applied in order.
        serve: The single call's handling of one item (raises ``Rejection``, or
            ``ValueError`` for a native value that does not translate).
        refuse: The registry's answer for a refused item, in its own vocabulary.
        operation_id: The operation id an item carries, when the registry names it so:
            the store then reads the batch's op-log entries in one query.

    Returns:
        One reply per item, in order (fewer only when an injected mid-batch crash cut
        the batch: the call then loses its reply anyway).

    Raises:
        Rejection: ``BATCH_TOO_LARGE``: more than :data:`BATCH_ITEMS_CAP` items; nothing
            was applied.
    """
    if len(items) > BATCH_ITEMS_CAP:
        raise Rejection(
            "BATCH_TOO_LARGE",
            f"a batch carries at most {BATCH_ITEMS_CAP} items, not {len(items)}",
        )
    cut = batch_cut(len(items))
    applied = items if cut is None else items[:cut]
    replies: list[Reply] = []
    with store.batch([operation_id(item) for item in applied] if operation_id else ()):
        for item in applied:
            try:
                replies.append(serve(item))
            except Rejection as rejection:
                replies.append(refuse(item, rejection))
            except ValueError as exc:
                # Answered as the single call's native_rules would answer it.
                replies.append(refuse(item, Rejection("INVALID_REQUEST", str(exc))))
    return replies


def serve_batch_into(
    context: grpc.ServicerContext,
    store: Store,
    items: Sequence[Item],
    serve: Callable[[Item], Answer],
    response: BatchResponse[Result],
    answer_of: Callable[[Result], Answer],
    refusal_type: Callable[..., Message],
    operation_id: Callable[[Item], str] | None = None,
) -> None:
    """Serve a batch RPC (:func:`serve_batch`) into its native response.

    Args:
        context: The call's context: a refused batch ends the call as a rejected one.
        store: The registry's store.
        items: The native items, applied in order.
        serve: The single call's handling of one item.
        response: The batch response, empty; it receives one result per item. The
            caller makes and returns it: only its own type ties ``answer_of`` to the
            registry's result message, for the type checker.
        answer_of: A result's field for a served item's answer (``result.holding``).
        refusal_type: The registry's refusal message type (``pb.VcuRefusal``), built
            from a refused item's code and message into the result's ``refusal`` field.
        operation_id: The operation id an item carries (see :func:`serve_batch`).
    """
    # Each result is built inside the response: one built apart would be copied in,
    # which costs as much as building it.
    add = response.results.add

    def served(item: Item) -> None:
        answer = serve(item)
        answer_of(add()).CopyFrom(answer)

    def refused(item: Item, rejection: Rejection) -> None:
        add(refusal=refusal_type(code=rejection.code, message=rejection.message))

    with native_rules(context):
        serve_batch(store, items, served, refused, operation_id=operation_id)
