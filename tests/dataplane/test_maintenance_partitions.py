"""`maintain partitions` on real PostgreSQL: boundaries, repeated and missed runs,
concurrent inserts and runs, DEFAULT rows and what references them, retention, and bad input."""

from __future__ import annotations

import re
import secrets
import threading
import time
from datetime import date, datetime, timedelta, timezone

import psycopg
import pytest

from harness import SHOP_SCHEMA, wait_until
from maintenance_helpers import maintain, maintain_in_process
from shopdb_operator.maintenance.errors import MaintenanceError
from shopdb_operator.maintenance.partitions import (_RUN_LOCK_SPACE as RUN_LOCK_SPACE, PartitionSettings,
                                                    default_partition_rows, maintain_partitions)


@pytest.fixture
def events(shop_cluster):
    """A fresh monthly-partitioned table owned by the application role."""
    schema = "pt_" + secrets.token_hex(3)
    with shop_cluster.primary.connect("shop", "shop") as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.events (id bigint GENERATED ALWAYS AS IDENTITY, "
                     f"at timestamptz NOT NULL, note text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)")
    yield schema
    with shop_cluster.primary.connect("shop", "shop") as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def run(cluster, schema, today, premake="2", *extra):
    return maintain(cluster.primary, "partitions", "--schema", schema, "--table", "events",
                    "--column", "at", "--premake", premake, "--today", today, *extra)


def partitions(cluster, schema, table="events"):
    rows = cluster.primary.query(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass ORDER BY 1",
        (f"{schema}.{table}",), dbname="shop")
    return dict(rows)


def insert(cluster, schema, at: str) -> str:
    """Insert one row; the partition it landed in."""
    with cluster.primary.connect("shop", "shop") as conn:
        return conn.execute(f"INSERT INTO {schema}.events (at) VALUES (%s) RETURNING tableoid::regclass::text",
                            (at,)).fetchone()[0]


def test_creates_current_and_next_months_across_a_year_boundary(shop_cluster, events):
    result = run(shop_cluster, events, "2026-12-15")
    assert result.code == 0, result.stderr
    found = partitions(shop_cluster, events)
    assert found == {
        "events_2026_12": "FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')",
        "events_2027_01": "FOR VALUES FROM ('2027-01-01 00:00:00+00') TO ('2027-02-01 00:00:00+00')",
        "events_2027_02": "FOR VALUES FROM ('2027-02-01 00:00:00+00') TO ('2027-03-01 00:00:00+00')",
        "events_default": "DEFAULT",
    }
    assert "created partition " + events + ".events_2027_01" in result.stdout
    # The last day of a month lands in its month, not in the next one nor in DEFAULT.
    assert insert(shop_cluster, events, "2026-12-31 23:59:59.999+00") == f"{events}.events_2026_12"
    assert insert(shop_cluster, events, "2027-01-01 00:00:00+00") == f"{events}.events_2027_01"


def test_repeated_runs_change_nothing(shop_cluster, events):
    assert run(shop_cluster, events, "2026-03-01").code == 0
    before = partitions(shop_cluster, events)
    again = run(shop_cluster, events, "2026-03-31")
    assert again.code == 0, again.stderr
    assert partitions(shop_cluster, events) == before
    assert "created 0 partition(s)" in again.stdout


def test_missed_runs_leave_no_gap(shop_cluster, events):
    assert run(shop_cluster, events, "2026-01-10", "1").code == 0
    # March to May passed without a run; their rows went to DEFAULT, not lost.
    assert insert(shop_cluster, events, "2026-04-15") == f"{events}.events_default"
    result = run(shop_cluster, events, "2026-06-03", "1")
    assert result.code == 0, result.stderr
    months = sorted(name for name in partitions(shop_cluster, events) if name != "events_default")
    assert months == [f"events_2026_{m:02d}" for m in range(1, 8)]
    rows = shop_cluster.primary.query(f"SELECT tableoid::regclass::text FROM {events}.events", dbname="shop")
    assert rows == [(f"{events}.events_2026_04",)]


def test_out_of_range_insert_lands_in_default_and_moves_to_its_month(shop_cluster, events):
    assert run(shop_cluster, events, "2030-10-10", "1").code == 0
    assert insert(shop_cluster, events, "2031-01-20 12:00+00") == f"{events}.events_default"
    assert insert(shop_cluster, events, "2031-03-01 00:00+00") == f"{events}.events_default"
    result = run(shop_cluster, events, "2030-12-10", "1")
    assert result.code == 0, result.stderr
    assert "moved 1 row(s) into it" in result.stdout
    placed = dict(shop_cluster.primary.query(
        f"SELECT at::date::text, tableoid::regclass::text FROM {events}.events", dbname="shop"))
    assert placed == {"2031-01-20": f"{events}.events_2031_01", "2031-03-01": f"{events}.events_default"}


@pytest.fixture
def shop(shop_cluster):
    """A fresh copy of the example shop schema in its own schema: orders (with orders_default
    and no month yet), order_items referencing them, one shop and one product."""
    schema = "sh_" + secrets.token_hex(3)
    with shop_cluster.primary.connect("shop", "shop") as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path = {schema}")
        conn.execute(SHOP_SCHEMA.read_text())
        conn.execute("INSERT INTO shops (name, slug) VALUES ('Shop', 'shop')")
        conn.execute("INSERT INTO products (shop_id, name, category, price) SELECT id, 'Thing', 'misc', 2 FROM shops")
    yield schema
    with shop_cluster.primary.connect("shop", "shop") as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def run_orders(cluster, schema, today, premake="1", *extra):
    return maintain(cluster.primary, "partitions", "--schema", schema, "--table", "orders",
                    "--column", "created_at", "--premake", premake, "--today", today, *extra)


def shop_connection(cluster, schema) -> psycopg.Connection:
    conn = cluster.primary.connect("shop", "shop")
    conn.execute(f"SET search_path = {schema}")
    return conn


def place_orders(conn, days: list[str], items: int = 2) -> None:
    """One order per day given, each with `items` order_items, in one transaction."""
    conn.execute(
        "WITH o AS (INSERT INTO orders (shop_id, customer_id, total_amount, created_at) "
        "           SELECT (SELECT min(id) FROM shops), n, 10 + n, d "
        "             FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS u(d, n) RETURNING id, created_at) "
        "INSERT INTO order_items (order_id, order_created_at, product_id, quantity, unit_price) "
        "SELECT o.id, o.created_at, (SELECT min(id) FROM products), q, 2 FROM o, generate_series(1, %s) q",
        (days, items))


def contents(cluster, schema) -> tuple:
    """Counts and checksums of every order and order_item, wherever they are stored."""
    return tuple(cluster.primary.query(
        f"SELECT (SELECT count(*) FROM {schema}.orders), "
        f"       (SELECT md5(string_agg(o::text, ',' ORDER BY o.id)) FROM {schema}.orders o), "
        f"       (SELECT count(*) FROM {schema}.order_items), "
        f"       (SELECT md5(string_agg(i::text, ',' ORDER BY i.id)) FROM {schema}.order_items i)",
        dbname="shop")[0])


def placement(cluster, schema) -> dict[str, int]:
    return dict(cluster.primary.query(
        f"SELECT tableoid::regclass::text, count(*) FROM {schema}.orders GROUP BY 1", dbname="shop"))


def assert_references_hold(cluster, schema) -> None:
    orphans, unvalidated, unguarded = cluster.primary.query(
        f"SELECT (SELECT count(*) FROM {schema}.order_items i WHERE NOT EXISTS (SELECT FROM {schema}.orders o "
        f"          WHERE o.id = i.order_id AND o.created_at = i.order_created_at)), "
        f"       (SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated "
        f"          AND connamespace = '{schema}'::regnamespace), "
        # every partition of orders carries its clone of the order_items foreign key
        f"       (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = '{schema}.orders'::regclass "
        f"          AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = i.inhrelid))",
        dbname="shop")[0]
    assert (orphans, unvalidated, unguarded) == (0, 0, 0)
    # ... and enforces it: an order with items cannot go, wherever it was moved to.
    with shop_connection(cluster, schema) as conn:
        for (table,) in conn.execute("SELECT DISTINCT o.tableoid::regclass::text FROM orders o "
                                     "JOIN order_items i ON i.order_id = o.id").fetchall():
            with pytest.raises(psycopg.errors.ForeignKeyViolation):
                conn.execute(f"DELETE FROM {table} WHERE id = (SELECT max(order_id) FROM order_items i "
                             f"JOIN {table} o ON o.id = i.order_id)")


def test_missed_months_move_out_of_default_with_their_order_items(shop_cluster, shop):
    """March and April passed without a run: their orders, referenced by order_items, went to
    orders_default; the next run makes both months and moves them, items and all."""
    assert run_orders(shop_cluster, shop, "2040-01-10").code == 0  # January and February
    with shop_connection(shop_cluster, shop) as conn:
        place_orders(conn, ["2040-02-10"] * 50)
        place_orders(conn, [f"2040-03-{d:02d} 12:00+00" for d in range(1, 32)] * 20)
        place_orders(conn, [f"2040-04-{d:02d} 23:59:59+00" for d in range(1, 31)] * 20, items=3)
        place_orders(conn, ["2045-06-01"], items=1)  # beyond every prepared month
    default = f"{shop}.orders_default"
    assert placement(shop_cluster, shop)[default] == 620 + 600 + 1
    before = contents(shop_cluster, shop)

    result = run_orders(shop_cluster, shop, "2040-04-05")
    assert result.code == 0, result.stderr
    assert placement(shop_cluster, shop) == {
        f"{shop}.orders_2040_02": 50, f"{shop}.orders_2040_03": 620, f"{shop}.orders_2040_04": 600, default: 1}
    assert set(partitions(shop_cluster, shop, "orders")) == {
        "orders_default", *(f"orders_2040_{m:02d}" for m in range(1, 6))}
    assert contents(shop_cluster, shop) == before
    assert_references_hold(shop_cluster, shop)
    assert (f"moved 620 row(s) into it from {default} with their referencing rows "
            f"(1240 of {shop}.order_items)") in result.stdout
    assert f"(1800 of {shop}.order_items)" in result.stdout and "locked for" in result.stdout
    # What no prepared month covers stays, and is said.
    assert f"WARNING shopdb.maintain.partitions: {shop}.orders: DEFAULT partition {default} still holds 1 row(s)" \
        in result.stdout


def test_two_runs_at_once_take_turns_while_orders_come_in(shop_cluster, shop):
    """Two runs start together while orders with items keep coming, most of them into DEFAULT:
    the second waits for the first, then finds nothing left to do; nothing is refused or lost."""
    assert run_orders(shop_cluster, shop, "2040-01-10", "0").code == 0  # January only
    stop = threading.Event()
    acknowledged: list[int] = []
    failures: list[Exception] = []

    def writer():
        start = datetime(2040, 1, 1, tzinfo=timezone.utc)
        with shop_connection(shop_cluster, shop) as conn:
            i = 0
            while not stop.is_set():
                day = start + timedelta(hours=29 * (i % 150))  # January to mid-June
                i += 1
                try:
                    with conn.transaction():
                        if i % 2:  # one statement: locks order_items, then orders
                            place_orders(conn, [day.isoformat()])
                        else:  # the order, then its items: locks orders, then order_items
                            order = conn.execute(
                                "INSERT INTO orders (shop_id, customer_id, total_amount, created_at) "
                                "SELECT min(id), 7, 10, %s FROM shops RETURNING id, created_at", (day,)).fetchone()
                            conn.execute("INSERT INTO order_items (order_id, order_created_at, product_id, quantity, "
                                         "unit_price) SELECT %s, %s, min(id), q, 2 FROM products, generate_series(1, 2) q "
                                         "GROUP BY q", order)
                    acknowledged.append(1)
                except psycopg.Error as error:
                    failures.append(error)

    writer_thread = threading.Thread(target=writer)
    writer_thread.start()
    results = []
    runs = [threading.Thread(target=lambda: results.append(run_orders(shop_cluster, shop, "2040-04-05")))
            for _ in range(2)]
    try:
        wait_until(lambda: len(acknowledged) > 100, message="orders in DEFAULT")
        # An open transaction on orders holds up the first run's move until both runs are in.
        with shop_connection(shop_cluster, shop) as blocker:
            with blocker.transaction():
                place_orders(blocker, ["2040-01-20"])
                for run_thread in runs:
                    run_thread.start()
                wait_until(lambda: shop_cluster.primary.query(
                    "SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND classid = %s::oid AND objid = %s::regclass::oid",
                    (RUN_LOCK_SPACE, f"{shop}.orders"), dbname="shop")[0] == (1, 1),
                    message="one run waiting for the other")
            acknowledged.append(1)
        for run_thread in runs:
            run_thread.join(120)
        time.sleep(0.3)  # a few more orders once every month is in place
    finally:
        stop.set()
        writer_thread.join(30)
    assert not failures, failures[:3]
    assert [r.code for r in results] == [0, 0], [r.stderr for r in results]
    output = "".join(r.stdout + r.stderr for r in results)
    assert "deadlock" not in output
    created = sorted(int(re.search(r"created (\d+) partition\(s\)", r.stdout).group(1)) for r in results)
    assert created == [0, 4]  # February to May, once
    assert set(partitions(shop_cluster, shop, "orders")) == {
        "orders_default", *(f"orders_2040_{m:02d}" for m in range(1, 6))}
    count, items, misplaced = shop_cluster.primary.query(
        f"SELECT count(*), (SELECT count(*) FROM {shop}.order_items), count(*) FILTER ("
        f"  WHERE tableoid::regclass::text <> '{shop}.orders_' || to_char(created_at AT TIME ZONE 'UTC', 'YYYY_MM') "
        f"  AND (tableoid::regclass::text <> '{shop}.orders_default' OR created_at < '2040-06-01')) "
        f"FROM {shop}.orders", dbname="shop")[0]
    assert count == len(acknowledged) and items == 2 * count
    assert misplaced == 0
    assert_references_hold(shop_cluster, shop)


def test_a_non_deferrable_reference_fails_its_month_clearly_and_the_rest_runs(shop_cluster, shop):
    """order_items move with their orders; refunds, referencing order_items, stay where they
    are, which needs their foreign key checked at the end of the move: DEFERRABLE."""
    assert run_orders(shop_cluster, shop, "2040-01-10", "0").code == 0  # January only
    with shop_connection(shop_cluster, shop) as conn:
        conn.execute("CREATE TABLE refunds (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                     "order_item_id bigint NOT NULL REFERENCES order_items (id), amount numeric NOT NULL)")
        place_orders(conn, ["2040-03-03", "2040-03-04"])
        place_orders(conn, ["2040-04-04", "2040-04-05"])
        conn.execute("INSERT INTO refunds (order_item_id, amount) SELECT min(i.id), 1 FROM order_items i "
                     "WHERE i.order_created_at < '2040-04-01'")
    before = contents(shop_cluster, shop)

    result = run_orders(shop_cluster, shop, "2040-04-05", "1", "--retention-months", "2")
    assert result.code == 1
    [line] = result.stderr.strip().splitlines()
    assert f"cannot create {shop}.orders_2040_03" in line
    assert f"foreign key refunds_order_item_id_fkey on {shop}.refunds" in line
    assert f'ALTER TABLE "{shop}"."refunds" ALTER CONSTRAINT "refunds_order_item_id_fkey" DEFERRABLE' in line
    assert "Nothing was changed" in line
    # February and May made, April moved, January dropped by the retention; March waits.
    assert set(partitions(shop_cluster, shop, "orders")) == {
        "orders_default", "orders_2040_02", "orders_2040_04", "orders_2040_05"}
    assert placement(shop_cluster, shop) == {f"{shop}.orders_default": 2, f"{shop}.orders_2040_04": 2}
    assert f"dropped partition {shop}.orders_2040_01" in result.stdout
    assert "still holds 2 row(s)" in result.stdout
    assert contents(shop_cluster, shop) == before

    # The fix the message gives works: the next run moves March, refunds untouched.
    with shop_connection(shop_cluster, shop) as conn:
        conn.execute("ALTER TABLE refunds ALTER CONSTRAINT refunds_order_item_id_fkey DEFERRABLE")
        refunds = conn.execute("SELECT * FROM refunds").fetchall()
    again = run_orders(shop_cluster, shop, "2040-04-06")
    assert again.code == 0, again.stderr
    assert placement(shop_cluster, shop) == {f"{shop}.orders_2040_03": 2, f"{shop}.orders_2040_04": 2}
    assert contents(shop_cluster, shop) == before
    assert shop_cluster.primary.query(f"SELECT * FROM {shop}.refunds", dbname="shop") == refunds
    assert_references_hold(shop_cluster, shop)


def test_moves_that_would_change_other_rows_are_refused(shop_cluster, shop):
    """ON DELETE CASCADE and row triggers would act on a move's delete and re-insert: refused,
    each named, nothing lost, the other months made."""
    assert run_orders(shop_cluster, shop, "2040-01-10", "0").code == 0
    with shop_connection(shop_cluster, shop) as conn:
        conn.execute("CREATE TABLE order_notes (order_id bigint, order_created_at timestamptz, note text, "
                     "FOREIGN KEY (order_id, order_created_at) REFERENCES orders ON DELETE CASCADE)")
        conn.execute("CREATE FUNCTION take_stock() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN UPDATE products SET stock = stock + 1; RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER take_stock AFTER INSERT ON order_items FOR EACH ROW EXECUTE FUNCTION take_stock()")
        place_orders(conn, ["2040-02-02"])
        conn.execute("INSERT INTO order_notes SELECT id, created_at, 'n' FROM orders")
    before = contents(shop_cluster, shop)
    result = run_orders(shop_cluster, shop, "2040-02-10")
    assert result.code == 1
    [line] = result.stderr.strip().splitlines()
    assert f"DEFAULT partition {shop}.orders_default holds rows for 2040-02" in line
    assert f"order_notes_order_id_order_created_at_fkey on {shop}.order_notes is ON DELETE CASCADE" in line
    assert f"take_stock on {shop}.order_items would fire" in line
    assert set(partitions(shop_cluster, shop, "orders")) == {"orders_default", "orders_2040_01", "orders_2040_03"}
    assert contents(shop_cluster, shop) == before
    assert shop_cluster.primary.query(f"SELECT count(*) FROM {shop}.order_notes", dbname="shop") == [(1,)]


def test_default_partition_rows_counts_up_to_a_limit(shop_cluster, events):
    with shop_cluster.primary.connect("shop", "shop") as conn:
        assert default_partition_rows(conn, events, "events") is None
        assert default_partition_rows(conn, events, "nope") is None
        assert run(shop_cluster, events, "2030-01-10", "0").code == 0
        assert default_partition_rows(conn, events, "events") == (f"{events}.events_default", 0)
        for at in ("2031-01-01", "2031-02-01", "2020-05-05"):
            insert(shop_cluster, events, at)
        assert default_partition_rows(conn, events, "events") == (f"{events}.events_default", 3)
        assert default_partition_rows(conn, events, "events", limit=2) == (f"{events}.events_default", 2)


def test_a_run_waits_for_another_only_so_long(shop_cluster, events):
    assert run(shop_cluster, events, "2030-01-10", "0").code == 0
    with shop_cluster.primary.connect("shop", "shop") as holder, \
            shop_cluster.primary.connect("shop", "shop") as conn:
        oid = holder.execute("SELECT %s::regclass::oid", (f"{events}.events",)).fetchone()[0]
        holder.execute("SELECT pg_advisory_lock(%s, %s::oid::int4)", (RUN_LOCK_SPACE, oid))
        pid = holder.info.backend_pid
        settings = PartitionSettings(schema=events, table="events", column="at", premake=1,
                                     run_lock_wait_seconds=0.5)
        started = time.monotonic()
        with pytest.raises(MaintenanceError) as failed:
            maintain_partitions(conn, settings, date(2030, 1, 10))
        assert 0.5 <= time.monotonic() - started < 5
        assert f"{events}.events: another run of maintain partitions on it (pid {pid}," in str(failed.value)
        assert "did not finish within 0.5s; this run changed nothing" in str(failed.value)
    assert set(partitions(shop_cluster, events)) == {"events_2030_01", "events_default"}


def test_retention_drops_only_whole_months_before_the_cutoff(shop_cluster, events):
    assert run(shop_cluster, events, "2026-01-05", "5").code == 0
    insert(shop_cluster, events, "2026-02-10")
    insert(shop_cluster, events, "2026-03-10")
    result = run(shop_cluster, events, "2026-06-05", "1", "--retention-months", "3")
    assert result.code == 0, result.stderr
    months = sorted(name for name in partitions(shop_cluster, events) if name != "events_default")
    assert months == ["events_2026_03", "events_2026_04", "events_2026_05", "events_2026_06", "events_2026_07"]
    assert "dropped partition " + events + ".events_2026_02" in result.stdout
    remaining = shop_cluster.primary.query(f"SELECT at::date::text FROM {events}.events", dbname="shop")
    assert remaining == [("2026-03-10",)]


def test_concurrent_inserts_are_never_refused_nor_lost(shop_cluster, events, monkeypatch):
    """Inserts across several months keep going while runs for successive days create partitions."""
    stop = threading.Event()
    inserted: list[str] = []
    failures: list[Exception] = []
    start = datetime(2027, 1, 1, tzinfo=timezone.utc)

    def writer():
        with shop_cluster.primary.connect("shop", "shop") as conn:
            i = 0
            while not stop.is_set():
                at = start + timedelta(hours=37 * i)  # walks through about 8 months, then wraps
                i = (i + 1) % 150
                try:
                    conn.execute(f"INSERT INTO {events}.events (at, note) VALUES (%s, 'w')", (at,))
                    inserted.append(at.isoformat())
                except psycopg.Error as error:
                    failures.append(error)

    # The first run creates DEFAULT; from then on no insert may fail.
    assert run(shop_cluster, events, "2026-12-20").code == 0
    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for today in ("2027-01-02", "2027-02-14", "2027-03-01", "2027-03-01", "2027-05-31"):
            code = maintain_in_process(monkeypatch, shop_cluster.primary, "partitions", "--schema", events,
                                       "--table", "events", "--column", "at", "--premake", "2",
                                       "--today", today)
            assert code == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not failures, failures[:3]
    count, misplaced = shop_cluster.primary.query(
        f"SELECT count(*), count(*) FILTER (WHERE tableoid::regclass::text <> "
        f"'{events}.events_' || to_char(at AT TIME ZONE 'UTC', 'YYYY_MM') "
        f"AND tableoid::regclass::text <> '{events}.events_default') FROM {events}.events",
        dbname="shop")[0]
    assert count == len(inserted) > 100
    assert misplaced == 0
    months = sorted(name for name in partitions(shop_cluster, events) if name != "events_default")
    assert months == [f"events_{m}" for m in
                      ("2026_12", "2027_01", "2027_02", "2027_03", "2027_04", "2027_05", "2027_06", "2027_07")]


def test_bad_input_fails_with_one_clear_line(shop_cluster, events):
    primary = shop_cluster.primary
    with primary.connect("shop", "shop") as conn:
        conn.execute(f"CREATE TABLE {events}.plain (at timestamptz)")
    cases = {
        ("--table", "nope", "--column", "at"): f"table {events}.nope does not exist",
        ("--table", "plain", "--column", "at"): f"{events}.plain is not a partitioned table",
        ("--table", "events", "--column", "note"): "is not partitioned by RANGE on the single column note",
    }
    for args, message in cases.items():
        result = maintain(primary, "partitions", "--schema", events, *args, "--premake", "1", "--today", "2026-01-01")
        assert result.code == 1, result
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("shopdb-operator maintain partitions: error: ") and message in line

    password = "wrong-" + secrets.token_hex(8)
    result = maintain(primary, "partitions", "--schema", events, "--table", "events", "--column", "at",
                      "--premake", "1", password=password)
    assert result.code == 1
    assert "password authentication failed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert password not in result.stderr + result.stdout


def test_the_clock_comes_from_shopdb_today(shop_cluster, events):
    result = maintain(shop_cluster.primary, "partitions", "--schema", events, "--table", "events",
                      "--column", "at", "--premake", "0", today="2031-07-04")
    assert result.code == 0, result.stderr
    assert set(partitions(shop_cluster, events)) == {"events_2031_07", "events_default"}
