"""Chaos rows 29 and 30: tenants under least-privilege ACL users, and TLS/AUTH mistakes (private servers).

29. Two tenants, each an ACL user limited to its own prefix (the §11 rules with the prefix swapped),
    each with a worker on a queue of the same name: every job runs on its own tenant's worker, a
    subscriber of one tenant's events channel receives none of the other's events (what the workers
    relay, and a marker each tenant publishes), and a tenant's credentials cannot touch the other
    prefix. (That the §11 user suffices for every backend call is
    tests/backends/redis/test_acl.py.)
30. A ``rediss://`` worker: with the fixture's CA it runs jobs; with another CA it exits 3 with
    ``BackendTLSError``; a wrong password exits 3 with ``BackendAuthError`` after one ``AUTH``.
    A worker gets its CA in the URL (``rediss://…?ssl_ca_certs=/path/ca.pem``, what the README says)
    or through OpenSSL's ``SSL_CERT_FILE``; both are exercised. (The backend-level forms are
    tests/backends/redis/test_connection.py.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest

from asyncmq_otel.errors import BackendAuthError
from asyncmq_otel.queues import Queue
from tests.chaos.helpers import backend_for, stop_all, wait_counts, wait_started
from tests.support.invariants import Enqueued, check_invariants, wait_quiescent
from tests.support.ledger import Ledger
from tests.support.poll import eventually
from tests.support.redis_server import RedisServer
from tests.support.worker_proc import StartWorker

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.chaos]

QUEUE = "shared-name"
Servers = Callable[..., RedisServer]
TENANTS = ("alpha", "beta")


def acl_rules(prefix: str, password: str) -> list[str]:
    """The §11 user, confined to ``prefix``."""
    return (
        f"on >{password} resetkeys ~{prefix}:* resetchannels &{prefix}:* -@all +@list +@hash +@sortedset "
        "+@string +@connection -@dangerous +del +exists +evalsha +script|load +time +info +publish +subscribe"
    ).split()


@pytest.mark.timeout(90)
async def test_row29_two_tenants_under_acl_users_never_see_each_others_jobs_or_events(
    redis_server: RedisServer, worker_proc: StartWorker, ledger: Ledger
) -> None:
    admin = redis_server.client()
    try:
        for tenant in TENANTS:
            admin.execute_command("ACL", "SETUSER", tenant, *acl_rules(tenant, f"{tenant}-secret"))
    finally:
        admin.close()
    urls = {tenant: f"redis://{tenant}:{tenant}-secret@127.0.0.1:{redis_server.port}/0" for tenant in TENANTS}
    backends = {tenant: backend_for(urls[tenant], tenant) for tenant in TENANTS}
    queues = {tenant: Queue(QUEUE, backend=backends[tenant]) for tenant in TENANTS}
    heard: dict[str, list[dict[str, Any]]] = {tenant: [] for tenant in TENANTS}
    total = 40
    try:
        workers = {
            tenant: worker_proc(QUEUE, urls[tenant], tenant, concurrency=4, env=ledger.env, wait=False)
            for tenant in TENANTS
        }
        wait_started(workers.values())
        async with anyio.create_task_group() as group:
            for tenant in TENANTS:
                subscription = await backends[tenant].subscribe_events()

                async def listen(tenant: str = tenant, subscription: Any = subscription) -> None:
                    async with subscription as events:
                        async for event in events:
                            heard[tenant].append(event)

                group.start_soon(listen)
            ids = {
                tenant: await queues[tenant].add_bulk(
                    [
                        {"task_id": "chaos.noop", "args": [i], "job_id": f"{tenant}-{i:02d}"}
                        for i in range(total)
                    ]
                )
                for tenant in TENANTS
            }
            for tenant in TENANTS:
                await wait_counts(queues[tenant], completed=total, timeout=30, workers=workers.values())
            # whatever the workers relay, plus one marker per tenant, the other tenant's first: a
            # subscriber that heard its own marker would have heard the other's before it if it leaked
            for tenant in (*TENANTS, *TENANTS):
                await backends[tenant].publish_event({"name": "test:marker", "job_id": f"{tenant}-marker"})
            await eventually(
                lambda: all(f"{t}-marker" in {event.get("job_id") for event in heard[t]} for t in TENANTS),
                timeout=10,
                what="each tenant heard its own marker",
            )
            group.cancel_scope.cancel()
        for tenant in TENANTS:
            wait_quiescent(redis_server.url, tenant, QUEUE)
        for mine, theirs in (TENANTS, reversed(TENANTS)):
            trespasser = backend_for(urls[mine], theirs, retry_timeout=2.0)
            try:
                with pytest.raises(BackendAuthError, match="denied"):
                    await trespasser.counts(QUEUE)
                with pytest.raises(BackendAuthError, match="denied"):
                    await Queue(QUEUE, backend=trespasser).add("chaos.noop")
            finally:
                await trespasser.close()
        assert await stop_all(workers.values()) == [0, 0]
    finally:
        for backend in backends.values():
            await backend.close()
    for tenant in TENANTS:
        ran = {start["id"] for start in ledger.starts() if start["pid"] == workers[tenant].pid}
        assert ran == set(ids[tenant])  # each worker ran its own tenant's jobs, all of them, only them
        job_ids = {event.get("job_id") for event in heard[tenant]} - {None}
        assert job_ids <= {*ids[tenant], f"{tenant}-marker"}, json.dumps(sorted(map(str, job_ids))[:5])
        check_invariants(
            redis_server.url, tenant, QUEUE, Enqueued(set(ids[tenant])), ledger, workers_stopped=True
        ).check()


@pytest.mark.tls
@pytest.mark.timeout(90)
async def test_row30_tls_and_auth_mistakes_exit_3_with_the_typed_cause(
    redis_server_factory: Servers, worker_proc: StartWorker, ledger: Ledger
) -> None:
    server = redis_server_factory(tls=True, password="right-one")  # noqa: S106 - a throwaway test server
    assert server.tls is not None
    prefix = "tls"
    trusted = {**ledger.env, "SSL_CERT_FILE": str(server.tls.ca)}

    wrong_ca = worker_proc(
        QUEUE, server.url, prefix, env={**ledger.env, "SSL_CERT_FILE": str(server.tls.other_ca)}, wait=False
    )
    assert await anyio.to_thread.run_sync(wrong_ca.wait, 30) == 3
    assert "BackendTLSError" in wrong_ca.text() or "TLS" in wrong_ca.text(), wrong_ca.text()[-2000:]

    admin = server.client()
    try:
        before = admin.info("errorstats").get("errorstat_WRONGPASS", {"count": 0})["count"]
        wrong_password = worker_proc(
            QUEUE, server.url.replace("right-one", "wrong-one"), prefix, env=trusted, wait=False
        )
        assert await anyio.to_thread.run_sync(wrong_password.wait, 30) == 3
        after = admin.info("errorstats").get("errorstat_WRONGPASS", {"count": 0})["count"]
    finally:
        admin.close()
    assert after - before == 1  # one attempt: a refused password is not retried
    assert "wrong-one" not in wrong_password.text()
    assert "rejected the credentials" in wrong_password.text(), wrong_password.text()[-2000:]

    # the CA in the URL's query: no environment needed
    worker = worker_proc(QUEUE, f"{server.url}?ssl_ca_certs={server.tls.ca}", prefix, env=ledger.env)
    backend = backend_for(server.url, prefix, ssl_ca_certs=str(server.tls.ca))
    try:
        queue = Queue(QUEUE, backend=backend)
        enqueued = Enqueued(
            set(await queue.add_bulk([{"task_id": "chaos.noop", "args": [i]} for i in range(20)]))
        )
        await wait_counts(queue, completed=20, timeout=30, workers=[worker])
    finally:
        await backend.close()
    assert await stop_all([worker]) == [0]
    _check_over_tls(server, prefix, enqueued, ledger)


def _check_over_tls(server: RedisServer, prefix: str, enqueued: Enqueued, ledger: Ledger) -> None:
    """The invariant checker speaks plain redis-py URLs: give it the server's TLS URL with its CA."""
    assert server.tls is not None
    url = f"{server.url}?ssl_ca_certs={server.tls.ca}&ssl_cert_reqs=required"
    wait_quiescent(url, prefix, QUEUE)
    check_invariants(url, prefix, QUEUE, enqueued, ledger, workers_stopped=True).check()
