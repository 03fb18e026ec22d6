"""Hypothesis strategies for any protobuf message, built from its descriptor.

Every field gets hostile values: strings of any length up to past the gateway's caps
with control and non-ASCII characters, integers across their whole wire range, enum
numbers the schema does not define, repeated fields from empty to past small caps, and
nested messages a few levels deep.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# Values the gateway gives meaning to, mixed in so some requests get past the first checks.
_MEANINGFUL = [
    "verra",
    "hkmo",
    "shenzhen",
    "national",
    "VCS",
    "hk-seller",
    "transfers/x",
    "migrations/x",
    "2024-01-01",
    "HKD",
    "9660-115597313-115618057-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0",
]


def _text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(_MEANINGFUL),
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="utf-8"), min_size=120, max_size=400),
    )


def _integer(kind: int) -> st.SearchStrategy[int]:
    low, high = _INT_RANGES[kind]
    return st.one_of(
        st.integers(min_value=max(low, -5), max_value=min(high, 5)),
        st.integers(min_value=max(low, 1990), max_value=min(high, 2110)),
        st.sampled_from([low, high]),
        st.integers(min_value=low, max_value=high),
    )


def _scalar(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        nested = field.message_type
        assert nested is not None
        if depth <= 0:
            return st.builds(GetMessageClass(nested))
        return messages(nested, depth - 1)
    if field.type == FieldDescriptor.TYPE_STRING:
        return _text()
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=96)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, width=32)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(min_value=-3, max_value=40)
    return _integer(field.type)


def messages(descriptor: Descriptor, depth: int = 3) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type with each field set or not, at any value."""
    cls = GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        value = _scalar(field, depth)
        if field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                continue  # maps: none in requests
            fields[field.name] = st.lists(value, max_size=4 if depth > 1 else 2)
        else:
            fields[field.name] = st.one_of(st.none(), value)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message: Message = cls()
        for name, strategy in fields.items():
            value = draw(strategy)
            if value is None:
                continue
            field = descriptor.fields_by_name[name]
            target = getattr(message, name)
            if field.is_repeated:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    for item in value:
                        target.add().CopyFrom(item)
                else:
                    target.extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                target.CopyFrom(value)
            else:
                # An unset oneof sibling stays unset; the last one drawn wins, as on the wire.
                setattr(message, name, value)
        return message

    return build()
