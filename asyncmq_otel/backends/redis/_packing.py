"""Commands packed by hiredis (C) on the asyncio client, as redis-py already does on its sync one.

redis-py's asyncio connection packs every argument in Python, about a microsecond each; a bulk
enqueue sends three arguments per job, so packing was a large part of its client time. hiredis
(a dependency of the ``redis`` extra, which also parses our replies) packs the same bytes.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio
from redis.exceptions import DataError

__all__ = ["HiredisPackedConnection"]


class HiredisPackedConnection(redis.asyncio.Connection):
    """A plain TCP connection whose commands are packed by ``hiredis.pack_command``."""

    def pack_command(self, *args: Any) -> list[bytes]:  # noqa: ANN401 - redis-py's argument types
        """The RESP bytes of one command; the same split of a spaced command name as redis-py."""
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:  # bool, None or another type Redis cannot take, as redis-py says
            raise DataError(str(exc)) from exc
