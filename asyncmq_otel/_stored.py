"""Reading stored payloads that any program could have written: never raise, bound the nesting.

The producer's checks (``jobs``) keep what *we* store well formed; these functions guard the decode
side against what a bug, another client or an attacker put into the store, so one hostile payload
is dead-lettered ``malformed_payload`` alone instead of crashing the worker that claims it.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_STORED_DEPTH", "decode_stored_envelope", "nested_too_deep", "reject_constant"]

MAX_STORED_DEPTH = 512
"""The deepest nesting of lists and objects a stored payload may have, the envelope counting as 1.

A deeper payload (only something written past the producer's checks can be) decodes as malformed
and is dead-lettered ``malformed_payload``: nothing downstream then meets a ``RecursionError``. The
producer's own nesting limit must stay below this."""


def nested_too_deep(text: str | bytes, value: object, limit: int = MAX_STORED_DEPTH) -> bool:
    """Whether ``value``, decoded from ``text``, nests lists and objects deeper than ``limit``.

    The number of opening brackets in ``text`` bounds the depth, so almost every payload is
    answered by two C-speed counts; only a payload with more brackets than ``limit`` is walked (without
    recursion, so any depth is measured safely).
    """
    if len(text) <= limit:  # each level takes at least one character
        return False
    if isinstance(text, bytes):
        brackets = text.count(b"[") + text.count(b"{")
    else:
        brackets = text.count("[") + text.count("{")
    if brackets <= limit:
        return False
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children: Any = item if type(item) is list else item.values() if isinstance(item, dict) else ()
        for child in children:
            if type(child) is list or type(child) is dict:
                if depth + 1 > limit:
                    return True
                pending.append((child, depth + 1))
    return False


def reject_constant(name: str) -> Any:  # noqa: ANN401 - json's parse_constant hook
    """``parse_constant`` of stored-JSON decoders: ``NaN`` and ``Infinity`` are not JSON, so never decoded."""
    raise ValueError(f"{name} is not JSON")


def decode_stored_envelope(payload: str) -> tuple[dict[str, Any] | None, str]:
    """The envelope of a stored payload, or ``None`` and why not (empty for the usual "not an object").

    Never raises: a payload that is not JSON (``NaN`` included), not an object or nested too deep is
    malformed.
    """
    try:
        decoded = json.loads(payload, parse_constant=reject_constant)
    except ValueError:
        return None, ""
    except RecursionError:
        return None, f"stored payload nests deeper than {MAX_STORED_DEPTH} levels"
    if not isinstance(decoded, dict):
        return None, ""
    if nested_too_deep(payload, decoded):
        return None, f"stored payload nests deeper than {MAX_STORED_DEPTH} levels"
    return decoded, ""
