"""Status dicts <-> control API messages, by the messages' descriptors.

The runtime builds its status as a dict (it is also the crash record, status.json), and the
CLI's tables read dicts; the wire carries DeploymentStatus. A key the message does not declare
is refused (ConversionError) rather than dropped, so a field added to the status without its
proto field fails the tests instead of vanishing on the way to `boxer status`. An unset optional
field reads back as None, as the dict had it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = ["ConversionError", "from_dict", "to_dict"]


class ConversionError(ValueError):
    """A dict does not fit the message: an undeclared key or a value of the wrong type."""


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def from_dict(message: Message, data: Mapping[str, Any], where: str = "", *,
              skipped: list[str] | None = None) -> Message:
    """Fill `message` from `data` (None values leave fields unset) and return it. A key the
    message does not declare raises ConversionError, or with `skipped` is left out and its path
    appended there (the server: a status field without its proto field must not stop `boxer
    status`; the test of the two keeps them in step)."""
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        field = fields.get(key)
        if field is None:
            if skipped is not None:
                skipped.append(path)
                continue
            raise ConversionError(f"{path}: not a field of {message.DESCRIPTOR.full_name}")
        if value is None:
            continue
        try:
            if _is_map(field):
                target = getattr(message, key)
                value_field = field.message_type.fields_by_name["value"]
                for k, v in value.items():
                    if value_field.message_type is not None:
                        from_dict(target[k], v, f"{path}.{k}", skipped=skipped)
                    else:
                        target[k] = v
            elif _repeated(field):
                if field.message_type is not None:
                    for i, item in enumerate(value):
                        from_dict(getattr(message, key).add(), item, f"{path}[{i}]", skipped=skipped)
                else:
                    getattr(message, key).extend(value)
            elif field.message_type is not None:
                from_dict(getattr(message, key), value, path, skipped=skipped)
            else:
                setattr(message, key, value)
        except (TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ConversionError):
                raise
            raise ConversionError(f"{path}: {exc}") from None
    return message


def to_dict(message: Message) -> dict[str, Any]:
    """Every field of `message`: unset optional ones as None, maps as dicts, repeated as lists."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if _is_map(field):
            sub = field.message_type.fields_by_name["value"].message_type is not None
            out[field.name] = {k: to_dict(v) if sub else v for k, v in value.items()}
        elif _repeated(field):
            out[field.name] = [to_dict(v) if field.message_type is not None else v for v in value]
        elif field.has_presence and not message.HasField(field.name):
            out[field.name] = None
        elif field.message_type is not None:
            out[field.name] = to_dict(value)
        else:
            out[field.name] = value
    return out
