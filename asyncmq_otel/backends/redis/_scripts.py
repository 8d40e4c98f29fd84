"""The Lua transitions: read once from ``lua/``, loaded once per server, called by SHA.

Each script is sent as its shebang line (``#!lua`` unless the file declares flags), the shared
prelude ``_fence.lua`` and its body. Only the prelude definitions a script uses (directly or through
another definition) are sent with it: Redis runs the whole chunk on every call, so each unused helper
would cost a closure per call. The shebang matters: Redis 7 refuses a flagged script as a
whole at ``maxmemory`` instead of failing it halfway, and ``renew`` opts into ``allow-oom``.
A ``NOSCRIPT`` reply (after a restart or ``SCRIPT FLUSH``) reloads every script and calls again.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio.cluster
from redis.exceptions import NoScriptError

from ._connection import AsyncClient, SyncClient

__all__ = ["LAYOUT_VERSION", "SCRIPTS", "Script", "call", "call_many", "call_sync", "load", "ms", "text"]

LAYOUT_VERSION = "1"
_LUA = Path(__file__).with_name("lua")
_PRELUDE = "_fence.lua"

Arg = str | int | float | bytes


@dataclass(frozen=True, slots=True)
class Script:
    """One transition: the name of its file, the text sent to Redis and its SHA1."""

    name: str
    source: str
    sha: str


_DEFINED = re.compile(r"^local (?:function )?([A-Za-z_]\w*)", re.MULTILINE)
_NAME = re.compile(r"[A-Za-z_]\w*")
_COMMENT = re.compile(r"--.*$", re.MULTILINE)


def _names(code: str) -> set[str]:
    """The identifiers ``code`` mentions outside comments (string contents count: harmless)."""
    return set(_NAME.findall(_COMMENT.sub("", code)))


def _prelude_for(prelude: str, body: str) -> str:
    """The prelude's header and the blocks (separated by blank lines) that define a name ``body`` needs.

    A block's names are its top-level ``local`` definitions; the needs of an included block count
    too. Including a block that is not needed is harmless; leaving out one that is would not load.
    """
    header, *blocks = prelude.strip().split("\n\n")
    defines = [set(_DEFINED.findall(block)) for block in blocks]
    needed = _names(body)
    included = [False] * len(blocks)
    changed = True
    while changed:
        changed = False
        for index, names in enumerate(defines):
            if not included[index] and names & needed:
                included[index] = changed = True
                needed |= _names(blocks[index])
    return "\n\n".join([header, *(block for block, keep in zip(blocks, included, strict=True) if keep)])


def _read_scripts() -> dict[str, Script]:
    prelude = (_LUA / _PRELUDE).read_text(encoding="utf-8")
    scripts: dict[str, Script] = {}
    for path in sorted(_LUA.glob("*.lua")):
        if path.name == _PRELUDE:
            continue
        body = path.read_text(encoding="utf-8")
        shebang, body = body.split("\n", 1) if body.startswith("#!") else ("#!lua", body)
        source = f"{shebang}\n{_prelude_for(prelude, body)}\n{body}"
        sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()
        scripts[path.stem] = Script(path.stem, source, sha)
    return scripts


SCRIPTS: dict[str, Script] = _read_scripts()


async def load(client: AsyncClient) -> None:
    """Load every script (on a cluster, redis-py sends ``SCRIPT LOAD`` to every primary)."""
    for script in SCRIPTS.values():
        await client.script_load(script.source)


async def call(client: AsyncClient, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:  # noqa: ANN401 - a RESP reply
    """``EVALSHA`` one script, loading the scripts first when the server does not know it."""
    script = SCRIPTS[name]
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        await load(client)
        return await client.evalsha(script.sha, len(keys), *keys, *args)


async def call_many(
    client: AsyncClient, calls: Sequence[tuple[str, Sequence[str], Sequence[Arg]]]
) -> list[Any]:
    """Several script calls in one pipeline round trip (one call after another on a cluster).

    redis-py's cluster pipeline refuses ``EVALSHA``; there, each call is awaited in turn.
    """
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        return [await call(client, name, keys, args) for name, keys, args in calls]
    replies: list[Any] = []
    for _ in range(2):
        pipe = client.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(SCRIPTS[name].sha, len(keys), *keys, *args)
        replies = await pipe.execute(raise_on_error=False)
        if not any(isinstance(reply, NoScriptError) for reply in replies):
            break
        # every call replays safely (nonces, settled tokens): load and send the batch again
        await load(client)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def call_sync(client: SyncClient, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:  # noqa: ANN401 - a RESP reply
    """Synchronous :func:`call` for the renewer thread."""
    script = SCRIPTS[name]
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        for each in SCRIPTS.values():
            client.script_load(each.source)
        return client.evalsha(script.sha, len(keys), *keys, *args)


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds for a script argument, rounded up so nothing is ever due early."""
    return max(math.ceil(seconds * 1000), 0)


def text(value: object) -> str:
    """A reply element as text (bytes are UTF-8, undecodable bytes replaced)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
