"""How a failover holds PgBouncer's primary route (failover/adapters.PgBouncerPoolers), on
a real PgBouncer: without `KILL <db>` (pgbouncer/pgbouncer#1401: it crashes PgBouncer now
and then), clients in the middle of a transaction are disconnected, idle clients keep their
connections and wait, and the release lets them through on the same connection."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from shopdb_operator import postgres
from shopdb_operator.builders import config_files
from shopdb_operator.failover.adapters import PgBouncerPoolers
from test_pgbouncer import pgbouncer, through_pgbouncer  # noqa: F401  (the module's own PgBouncer)


def admin(pgbouncer):  # noqa: F811
    return postgres.pgbouncer_admin("127.0.0.1", pgbouncer["port"], config_files.PGBOUNCER_ADMIN_USER,
                                    pgbouncer["admin_password"])


def test_the_running_pgbouncer_has_kill_client(pgbouncer):  # noqa: F811
    with admin(pgbouncer) as conn:
        assert postgres.pgbouncer_version(conn) >= (1, 24), "KILL_CLIENT needs PgBouncer 1.24"


def test_a_failover_hold_drops_only_clients_in_a_transaction(shop_cluster, pgbouncer):  # noqa: F811
    password = shop_cluster.credentials.owner
    poolers = PgBouncerPoolers(lambda: [("bouncer", ("127.0.0.1", pgbouncer["port"]))], pgbouncer["admin_password"])
    idle = through_pgbouncer(pgbouncer, "shop", password)
    assert idle.execute("SELECT 1").fetchone() == (1,)
    in_transaction = through_pgbouncer(pgbouncer, "shop", password)
    in_transaction.execute("BEGIN")
    in_transaction.execute("SELECT 1")  # holds a server connection until COMMIT
    running = through_pgbouncer(pgbouncer, "shop", password)
    outcome: dict[str, object] = {}

    def long_query() -> None:  # a query the server never answers in time, as on a cut-off primary
        try:
            running.execute("SELECT pg_sleep(60)")
            outcome["running"] = "finished"
        except psycopg.Error as err:
            outcome["running"] = err

    runner = threading.Thread(target=long_query, daemon=True)
    runner.start()
    time.sleep(0.5)
    held = False
    try:
        started = time.monotonic()
        assert poolers.hold("shop", graceful=False) == ["bouncer"]
        held = True
        assert time.monotonic() - started < 3, "the hold waited for the running query"
        runner.join(5)
        assert isinstance(outcome.get("running"), psycopg.OperationalError), outcome
        with pytest.raises(psycopg.OperationalError):
            in_transaction.execute("SELECT 2")

        # The idle client's next transaction waits while held, on its own connection.
        def idle_query() -> None:
            try:
                outcome["idle"] = idle.execute("SELECT 42").fetchone()
            except psycopg.Error as err:
                outcome["idle"] = err

        waiter = threading.Thread(target=idle_query, daemon=True)
        waiter.start()
        waiter.join(1.5)
        assert waiter.is_alive(), f"not held: {outcome.get('idle')}"
        with admin(pgbouncer) as conn:
            pools = conn.execute("SHOW POOLS").fetchall()
            assert pools, "PgBouncer answers its console while held"
        assert poolers.release("shop", graceful=False) == ["bouncer"]
        held = False
        waiter.join(10)
        assert outcome["idle"] == (42,)
        # Released for good: new clients too.
        with through_pgbouncer(pgbouncer, "shop", password) as fresh:
            assert fresh.execute("SELECT 1").fetchone() == (1,)
    finally:
        if held:
            poolers.release("shop", graceful=False)
        for conn in (idle, in_transaction, running):
            conn.close()
