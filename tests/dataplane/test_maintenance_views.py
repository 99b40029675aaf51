"""`maintain views`: the corrected shop_analytics, concurrent refresh under readers, and
clear failures."""

from __future__ import annotations

import secrets
import threading
import time

import psycopg

from maintenance_helpers import maintain


def test_corrected_view_counts_shops_without_delivered_orders(shop_cluster):
    primary = shop_cluster.primary
    tag = secrets.token_hex(3)
    with primary.connect("shop", "shop") as conn:
        ids = {}
        for shop in ("delivered", "pending", "empty"):
            ids[shop] = conn.execute("INSERT INTO shops (name, slug) VALUES (%s, %s) RETURNING id",
                                     (shop, f"{shop}-{tag}")).fetchone()[0]
        product = conn.execute("INSERT INTO products (shop_id, name, category, price) "
                               "VALUES (%s, 'Mug', 'kitchen', 12) RETURNING id", (ids["delivered"],)).fetchone()[0]
        # Two delivered orders, one with two rated items: the design's join counted it twice.
        for total, ratings in ((30, (4, 2)), (10, (5,))):
            order_id, created = conn.execute(
                "INSERT INTO orders (shop_id, customer_id, status, total_amount, created_at, delivered_at) "
                "VALUES (%s, 7, 'DELIVERED', %s, now() - interval '2 days', now() - interval '1 day') "
                "RETURNING id, created_at", (ids["delivered"], total)).fetchone()
            for rating in ratings:
                conn.execute("INSERT INTO order_items (order_id, order_created_at, product_id, quantity, "
                             "unit_price, rating) VALUES (%s, %s, %s, 1, 12, %s)",
                             (order_id, created, product, rating))
        conn.execute("INSERT INTO orders (shop_id, customer_id, status, total_amount) VALUES (%s, 8, 'PENDING', 99)",
                     (ids["pending"],))
    result = maintain(primary, "views", "--view", "shop_analytics")
    assert result.code == 0, result.stderr
    assert "refreshed public.shop_analytics concurrently" in result.stdout
    rows = {name: rest for name, *rest in primary.query(
        "SELECT name, total_orders, avg_order_value::float, avg_fulfillment_seconds::float, "
        "avg_rating::float, ratings FROM shop_analytics WHERE shop_id = ANY(%s)",
        (list(ids.values()),), dbname="shop")}
    assert rows["delivered"] == [2, 20.0, 86400.0, 11 / 3, 3]
    assert rows["pending"] == [0, None, None, None, 0]
    assert rows["empty"] == [0, None, None, None, 0]


def test_concurrent_refresh_does_not_block_readers(shop_cluster):
    """A reader holds the view open in a transaction for the whole refresh: a plain refresh
    (ACCESS EXCLUSIVE) would wait for it and hit the lock timeout; a concurrent one does not,
    and other readers keep reading meanwhile."""
    primary = shop_cluster.primary
    stop = threading.Event()
    slowest: list[float] = []
    errors: list[Exception] = []

    def reader():
        with primary.connect("shop", "shop") as conn:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    conn.execute("SELECT count(*) FROM shop_analytics").fetchone()
                except psycopg.Error as error:
                    errors.append(error)
                slowest.append(time.monotonic() - started)

    with primary.connect("shop", "shop", autocommit=False) as holder:
        holder.execute("SELECT count(*) FROM shop_analytics").fetchone()  # keeps ACCESS SHARE
        thread = threading.Thread(target=reader)
        thread.start()
        try:
            result = maintain(primary, "views", "--view", "shop_analytics", "--lock-timeout-ms", "2000",
                              "--attempts", "1")
        finally:
            stop.set()
            thread.join(10)
        holder.rollback()
    assert result.code == 0, result.stderr
    assert not errors and slowest and max(slowest) < 1.5


def test_view_without_unique_index_is_refreshed_plainly_with_a_warning(shop_cluster):
    primary = shop_cluster.primary
    with primary.connect("shop", "shop") as conn:
        conn.execute("CREATE MATERIALIZED VIEW IF NOT EXISTS shop_count AS SELECT count(*) AS n FROM shops")
    try:
        result = maintain(primary, "views", "--view", "shop_count")
        assert result.code == 0, result.stderr
        assert "refreshing public.shop_count without CONCURRENTLY" in result.stdout
        assert "it has no unique index" in result.stdout
        # A plain refresh waits for readers: with one holding the view, it gives up clearly.
        with primary.connect("shop", "shop", autocommit=False) as holder:
            holder.execute("SELECT * FROM shop_count").fetchall()
            blocked = maintain(primary, "views", "--view", "shop_count", "--lock-timeout-ms", "300",
                               "--attempts", "2")
            holder.rollback()
        assert blocked.code == 1
        assert "could not refresh public.shop_count after 2 attempts: canceling statement due to lock timeout" \
            in blocked.stderr
    finally:
        with primary.connect("shop", "shop") as conn:
            conn.execute("DROP MATERIALIZED VIEW shop_count")


def test_missing_view_fails_clearly_and_the_others_are_still_refreshed(shop_cluster):
    primary = shop_cluster.primary
    result = maintain(primary, "views", "--view", "no_such_view", "--view", "shop_analytics")
    assert result.code == 1
    [line] = result.stderr.strip().splitlines()
    assert line == "shopdb-operator maintain views: error: materialized view public.no_such_view does not exist"
    assert "refreshed public.shop_analytics" in result.stdout


def test_a_plain_table_is_not_a_view(shop_cluster):
    result = maintain(shop_cluster.primary, "views", "--view", "shops")
    assert result.code == 1
    assert "public.shops is not a materialized view" in result.stderr


def test_wrong_credentials_fail_without_leaking_the_password(shop_cluster):
    password = "wrong-" + secrets.token_hex(8)
    result = maintain(shop_cluster.primary, "views", "--view", "shop_analytics", password=password)
    assert result.code == 1
    [line] = result.stderr.strip().splitlines()
    assert "cannot connect to shop@127.0.0.1" in line and "password authentication failed" in line
    assert password not in result.stderr + result.stdout
