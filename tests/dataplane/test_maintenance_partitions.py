"""`maintain partitions` on real PostgreSQL: boundaries, repeated and missed runs,
concurrent inserts, DEFAULT rows, retention, and bad input."""

from __future__ import annotations

import secrets
import threading
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from maintenance_helpers import maintain, maintain_in_process


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


def test_referenced_rows_in_default_fail_clearly_and_nothing_changes(shop_cluster):
    """In the shop schema order_items reference orders: PostgreSQL cannot move a referenced
    row between partitions, so the run fails, says why, and leaves everything as it was."""
    primary = shop_cluster.primary
    with primary.connect("shop", "shop") as conn:
        conn.execute("INSERT INTO shops (name, slug) VALUES ('Far', 'far-future') ON CONFLICT DO NOTHING")
        order_id, created = conn.execute(
            "INSERT INTO orders (shop_id, customer_id, total_amount, created_at) "
            "SELECT id, 1, 10, '2040-05-05' FROM shops WHERE slug = 'far-future' RETURNING id, created_at").fetchone()
        conn.execute("INSERT INTO products (shop_id, name, category, price) "
                     "SELECT id, 'Far thing', 'misc', 1 FROM shops WHERE slug = 'far-future'")
        conn.execute("INSERT INTO order_items (order_id, order_created_at, product_id, quantity, unit_price) "
                     "SELECT %s, %s, max(id), 1, 1 FROM products", (order_id, created))
    old = primary.query("SELECT count(*) FROM orders", dbname="shop")
    before = partitions(shop_cluster, "public", "orders")
    result = maintain(primary, "partitions", "--table", "orders", "--column", "created_at",
                      "--premake", "1", "--retention-months", "1", "--today", "2040-04-20")
    assert result.code == 1
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1
    assert "cannot create public.orders_2040_05" in error_lines[0]
    assert "reference" in error_lines[0] and "Nothing was changed" in error_lines[0]
    after = partitions(shop_cluster, "public", "orders")
    # April was created; May was not; nothing was dropped although a retention was given.
    assert set(before) <= set(after) and "orders_2040_05" not in after and "orders_2040_04" in after
    assert primary.query("SELECT count(*) FROM orders", dbname="shop") == old
    assert primary.query("SELECT tableoid::regclass::text FROM orders WHERE id = %s", (order_id,),
                         dbname="shop") == [("orders_default",)]
    with primary.connect("shop", "shop") as conn:  # leave the shared schema as it was
        conn.execute("DELETE FROM order_items WHERE order_id = %s", (order_id,))
        conn.execute("DELETE FROM orders WHERE id = %s", (order_id,))
        conn.execute("ALTER TABLE orders DETACH PARTITION orders_2040_04")
        conn.execute("DROP TABLE orders_2040_04")


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
