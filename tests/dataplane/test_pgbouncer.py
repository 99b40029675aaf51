"""PgBouncer started by pgbouncer-start.sh with the operator's rendered pgbouncer.ini routes
each virtual database to its backend, with SCRAM for clients and servers."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time

import psycopg
import pytest

from harness import install_scripts, make_root, private_dir, free_port, require_binaries, run_as_postgres
from shopdb_operator import postgres
from shopdb_operator.builders import config_files
from shopdb_operator.rollout import config as rollout_config

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@pytest.fixture(scope="module")
def pgbouncer(shop_cluster):
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
    ini.write_text(config_files.pgbouncer_ini(shop_cluster.primary.spec, backends, port,
                                              listen_addr="127.0.0.1", run_dir=str(run_dir)))
    admin_password = secrets.token_urlsafe(16) + '"'
    env = {
        "PATH": f"{shutil.os.path.dirname(PGBOUNCER)}:/usr/bin:/bin",
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
        process.terminate()
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
    admin = postgres.pgbouncer_admin("127.0.0.1", pgbouncer["port"], config_files.PGBOUNCER_ADMIN_USER,
                                     pgbouncer["admin_password"])

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
