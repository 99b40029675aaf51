"""PgBouncer started by pgbouncer-start.sh with the operator's rendered pgbouncer.ini routes
each virtual database to its backend, with SCRAM for clients and servers."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from harness import (PGBOUNCER, PGBOUNCER_VERSION, install_scripts, make_root, private_dir, free_port,
                     require_binaries, run_as_postgres)
from shopdb_operator import postgres
from shopdb_operator.api.spec import ClusterSpec
from shopdb_operator.builders import config_files
from shopdb_operator.rollout import config as rollout_config


@pytest.fixture(scope="module")
def pgbouncer(shop_cluster):
    with running_pgbouncer(shop_cluster, shop_cluster.primary.spec) as bouncer:
        yield bouncer


@contextlib.contextmanager
def running_pgbouncer(shop_cluster, spec: ClusterSpec):
    """PgBouncer as its pod runs it (pgbouncer-start.sh, the rendered pgbouncer.ini for `spec`)."""
    require_binaries(PGBOUNCER)
    root = make_root("shopdb-pgbouncer-")
    scripts = install_scripts(root)
    run_dir = private_dir(root, "run")  # the emptyDir
    private_dir(root, "etc")
    port = free_port()
    backends = {
        "primary": ("127.0.0.1", shop_cluster.primary.port),
        "ro": ("127.0.0.1", shop_cluster.orders.port),
        "search": ("127.0.0.1", shop_cluster.search.port),
        "orders": ("127.0.0.1", shop_cluster.orders.port),
        "analytics": ("127.0.0.1", shop_cluster.analytics.port),
    }
    ini = root / "etc" / "pgbouncer.ini"
    ini.write_text(config_files.pgbouncer_ini(spec, backends, port, listen_addr="127.0.0.1", run_dir=str(run_dir)))
    admin_password = secrets.token_urlsafe(16) + '"'
    env = {
        "PATH": f"{PGBOUNCER.resolve().parent}:/usr/bin:/bin",
        "PGBOUNCER_RUN_DIR": str(run_dir),
        "PGBOUNCER_APP_USER": "shop",
        "PGBOUNCER_APP_PASSWORD": shop_cluster.credentials.owner,
        "PGBOUNCER_ADMIN_USER": config_files.PGBOUNCER_ADMIN_USER,
        "PGBOUNCER_ADMIN_PASSWORD": admin_password,
    }
    log = open(root / "pgbouncer.log", "wb")
    process = run_as_postgres(["sh", str(scripts / "pgbouncer-start.sh"), str(ini)], env,
                              stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                psycopg.connect(host="127.0.0.1", port=port, user="shop", dbname="shop",
                                password=shop_cluster.credentials.owner, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((root / "pgbouncer.log").read_text())
                time.sleep(0.2)
        yield {"port": port, "backends": backends, "admin_password": admin_password, "run_dir": run_dir, "ini": ini}
    finally:
        # SIGTERM, as the kubelet sends it: PgBouncer >= 1.23 then waits for every client to
        # disconnect; a client a test left open gets what the grace period's end brings.
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def through_pgbouncer(pgbouncer, dbname: str, password: str, user: str = "shop") -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=pgbouncer["port"], user=user, dbname=dbname,
                           password=password, connect_timeout=5, autocommit=True)


@pytest.mark.parametrize("virtual_db, backend, read_only", [
    ("shop", "primary", False),
    ("shop_search", "search", True),
    ("shop_orders", "orders", True),
    ("shop_analytics", "analytics", True),
    ("shop_ro", "ro", True),
])
def test_each_virtual_database_reaches_its_backend(shop_cluster, pgbouncer, virtual_db, backend, read_only):
    with through_pgbouncer(pgbouncer, virtual_db, shop_cluster.credentials.owner) as conn:
        port, in_recovery, database = conn.execute(
            "SELECT inet_server_port(), pg_is_in_recovery(), current_database()").fetchone()
    assert port == pgbouncer["backends"][backend][1]
    assert in_recovery is read_only
    assert database == "shop"


def test_transaction_pooling_writes_go_to_the_primary(shop_cluster, pgbouncer):
    slug = "bouncer-" + secrets.token_hex(4)
    with through_pgbouncer(pgbouncer, "shop", shop_cluster.credentials.owner) as conn:
        with conn.transaction():
            conn.execute("INSERT INTO shops (name, slug) VALUES ('Bouncer', %s)", (slug,))
    assert shop_cluster.primary.query("SELECT count(*) FROM shops WHERE slug = %s", (slug,), dbname="shop") == [(1,)]


def test_wrong_password_is_refused(pgbouncer):
    with pytest.raises(psycopg.OperationalError):
        through_pgbouncer(pgbouncer, "shop", "not-the-password").close()


def test_admin_console_lists_the_routes(pgbouncer):
    with through_pgbouncer(pgbouncer, "pgbouncer", pgbouncer["admin_password"],
                           user=config_files.PGBOUNCER_ADMIN_USER) as conn:
        conn.prepare_threshold = None
        cur = conn.cursor()
        cur.execute("SHOW DATABASES", prepare=False)
        names = {row[0] for row in cur.fetchall()}
    assert {"shop", "shop_search", "shop_orders", "shop_analytics", "shop_ro"} <= names


def admin_console(pgbouncer) -> psycopg.Connection:
    return postgres.pgbouncer_admin("127.0.0.1", pgbouncer["port"], config_files.PGBOUNCER_ADMIN_USER,
                                    pgbouncer["admin_password"])


def test_pgbouncer_is_the_local_images_version(pgbouncer):
    """The PgBouncer tests/bootstrap.sh builds: the version of the local cluster's image (a
    stale binary on PATH fails here, not in some test of a feature it lacks)."""
    with admin_console(pgbouncer) as admin:
        (version,) = admin.execute("SHOW VERSION", prepare=False).fetchone()
    assert version == f"PgBouncer {PGBOUNCER_VERSION}", \
        f"{PGBOUNCER} is {version!r}, not {PGBOUNCER_VERSION}: run tests/bootstrap.sh (or tests/run.sh)"


CLIENTS, TRANSACTIONS, SERVER_CONNECTIONS = 8, 25, 2
DOUBLE = "SELECT %s::int * 2, pg_backend_pid()"
LABEL = "SELECT %s::text || ':' || %s::text, pg_backend_pid()"


def test_prepared_statements_in_transaction_mode_with_more_clients_than_server_connections(shop_cluster):
    """max_prepared_statements: 8 clients prepare every statement (psycopg prepare_threshold=0)
    and run 25 transactions each through 2 server connections. psycopg names its statements
    _pg3_0, _pg3_1, ... on every connection; half the clients prepare the two statements in
    the other order, so the same name is another statement on the next client, and on the
    server connection they share. PgBouncer prepares each where it runs: every result is right."""
    spec = shop_cluster.primary.spec
    spec = spec.model_copy(update={"pgbouncer": spec.pgbouncer.model_copy(
        update={"primary_pool_size": SERVER_CONNECTIONS})})
    assert spec.pgbouncer.pool_mode.value == "transaction" and spec.pgbouncer.max_prepared_statements > 0
    with running_pgbouncer(shop_cluster, spec) as bouncer, admin_console(bouncer) as admin:
        before = pgbouncer_stats(admin, "shop")
        start = threading.Barrier(CLIENTS)

        def client(i: int) -> set[int]:
            servers = set()
            with through_pgbouncer(bouncer, "shop", shop_cluster.credentials.owner) as conn:
                conn.prepare_threshold = 0
                start.wait(30)
                for n in range(TRANSACTIONS):
                    with conn.transaction():
                        for statement in ((DOUBLE, LABEL) if i % 2 else (LABEL, DOUBLE)):
                            if statement is DOUBLE:
                                result, server = conn.execute(DOUBLE, (i * 1000 + n,)).fetchone()
                                assert result == 2 * (i * 1000 + n)
                            else:
                                result, server = conn.execute(LABEL, (str(i), str(n))).fetchone()
                                assert result == f"{i}:{n}"
                            servers.add(server)
            return servers

        with ThreadPoolExecutor(CLIENTS) as pool:
            servers = list(pool.map(client, range(CLIENTS)))
        after = pgbouncer_stats(admin, "shop")

    assert len(set().union(*servers)) <= SERVER_CONNECTIONS
    assert any(len(s) > 1 for s in servers), "no client's transactions moved between server connections"
    parsed = after["total_client_parse_count"] - before["total_client_parse_count"]
    prepared_on_servers = after["total_server_parse_count"] - before["total_server_parse_count"]
    bound = after["total_bind_count"] - before["total_bind_count"]
    assert parsed == 2 * CLIENTS
    assert 2 <= prepared_on_servers <= 2 * SERVER_CONNECTIONS  # once per statement and server connection
    assert bound == 2 * CLIENTS * TRANSACTIONS


def pgbouncer_stats(admin: psycopg.Connection, database: str) -> dict[str, int]:
    cursor = admin.execute("SHOW STATS", prepare=False)
    names = [c.name for c in cursor.description]
    row = next(dict(zip(names, r)) for r in cursor.fetchall() if r[0] == database)
    return {k: int(v) for k, v in row.items() if k.startswith("total_")}


def test_auth_file_is_private(pgbouncer):
    mode = (pgbouncer["run_dir"] / "userlist.txt").stat().st_mode & 0o777
    assert mode == 0o600


def test_a_new_ini_is_reloaded_without_dropping_a_client(shop_cluster, pgbouncer):
    """What the operator does on a PgBouncer change: RELOAD, then SHOW CONFIG and SHOW
    DATABASES say whether it runs with the new file (rollout/config.pgbouncer_loaded)."""
    ini = pgbouncer["ini"]
    old = ini.read_text()
    spec = shop_cluster.primary.spec
    spec = spec.model_copy(update={"pgbouncer": spec.pgbouncer.model_copy(update={"max_client_conn": 800,
                                                                                  "primary_pool_size": 20})})
    new = config_files.pgbouncer_ini(spec,
                                     pgbouncer["backends"], pgbouncer["port"], listen_addr="127.0.0.1",
                                     run_dir=str(pgbouncer["run_dir"]))
    client = through_pgbouncer(pgbouncer, "shop", shop_cluster.credentials.owner)
    session = client.execute("SELECT 1").fetchone()
    admin = admin_console(pgbouncer)

    def runs(text: str) -> bool:
        settings = {str(r["key"]): str(r["value"]) for r in postgres.pgbouncer_show(admin, "CONFIG")}
        databases = {str(r["name"]): {k: str(v) for k, v in r.items()}
                     for r in postgres.pgbouncer_show(admin, "DATABASES")}
        return rollout_config.pgbouncer_loaded(text, settings, databases)

    try:
        assert runs(old) and not runs(new)
        ini.write_text(new)
        admin.execute("RELOAD", prepare=False)
        assert runs(new) and not runs(old)
        assert client.execute("SELECT 2").fetchone() == (2,) and session == (1,)  # the same client, still served
    finally:
        ini.write_text(old)
        admin.execute("RELOAD", prepare=False)
        admin.close()
        client.close()
