"""Load benchmark: the design's 10x load (shared/design/database-scalability-architecture.md
§7) on an operator-made cluster, measured with pgbench through PgBouncer and straight to the
instances, with the plans and statement statistics that say where the time goes.

    make bench-load                       # install the operator, apply the bench profile, load, run, release
    python tests/bench/load.py --namespace bench --cluster shop      # a cluster that already runs
    python tests/bench/load.py --smoke --namespace NS                # tiny data, seconds per scenario

Data (loaded once, reused while the marker table says the same scale): the example schema
(manifests/examples/shop-schema.sql) in its own schema `shopbench` of the application
database, so an application's own tables are never touched: 3000 shops, 100 products each
(24 categories, prices 2 to 400, names of three words), a year of orders at 10,000 a day
(3.65M, 1 to 4 items each, 1.6 on average: 5.8M items; 2.1 GB with indexes), shops skewed
(the busiest 1% take ~10% of the orders).
Generated server-side (INSERT ... SELECT generate_series, one statement per month), as the
application owner, on the primary directly (its -rw Service), foreign keys added back and
validated after the load, then VACUUM ANALYZE. The past months' partitions are created by
the operator's own maintenance code (maintenance/partitions.py), run as of a year ago.
`--scale 0.1` loads a tenth (shops, orders a day and customers; still a year).

Scenarios (pgbench, custom scripts, per-transaction logs; percentiles computed here):

    mixed       1000 concurrent users at once, one pgbench per route: 550 shoppers searching
                (search route), 250 customers reading their orders (orders route), 100
                vendors on their dashboards (analytics route), 100 at checkout placing orders
                (primary route). A user is a pgbench client with a think time: pgbench -R
                schedules each client's transactions as a Poisson process of rate 1/think
                (5 s by default), so the users are concurrent, not 1000 saturating loops, and
                a transaction's latency counts from its scheduled start (a user kept waiting
                by a slow previous one is counted too).
    search      2000 concurrent searches, no think time: category + price range (+ a name
                word in 3 of 10), active shops, in stock, ordered by price, LIMIT 24.
    order-rush  500 concurrent checkouts: read the cart, then one statement decrements the
                stock (UPDATE ... WHERE stock >= qty), inserts the order and its items;
                deadlocks and serialization failures are retried (--max-tries), counted.
    dashboards  200 vendors: a shop's orders by status over 30 days, its latest orders, its
                top products (one page, three queries; the window's start bound as a value).
    direct      search, order-rush and dashboards again, PgBouncer bypassed (the route's own
                Service): at PgBouncer's server concurrency (the pooler's cost in latency) and
                at the most connections the instance can take (what a pool saves).

The three stress scenarios are closed loops (each client starts its next transaction when
the last one ends), so their latency is clients / throughput: they measure what the route's
instance can do, and the "capacity" lines turn that into the throughput, and the cores,
their target would take. Every run gets extra seconds for its clients to connect (SCRAM,
one client after another per pgbench thread) and leaves out a warm-up once all are running.
pgbench uses the extended protocol (see Bench.pick_protocol for why not prepared).

Judged against the design's targets: mixed avg < 100 ms, p95 < 200 ms, p99 < 500 ms,
errors < 0.1%; search p95 < 150 ms; order rush p95 < 300 ms; dashboards p95 < 100 ms;
PgBouncer's average wait for a server connection (connection acquisition) < 10 ms. Pool
waits come from PgBouncer's admin console on each instance (SHOW POOLS every second:
cl_waiting, maxwait; SHOW STATS before and after: wait time per transaction).

Where the time goes: EXPLAIN (ANALYZE, BUFFERS) of every statement on its route's instance,
the CPU each pod's main container used during the measured window against its limit, and
the share of CFS periods it was throttled in (its cgroup, sampled every second; the
kubelet's coarser counters where the cgroups are not on this host), and the top statements
of pg_stat_statements on every instance after the runs.

Numbers, not a test, except --smoke, which asserts that everything ran without errors.
Reaches the cluster by its Service and pod addresses (the local cluster routes them to
this host). Use the shared lock around runs: flock /tmp/shopdb-e2e.lock ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import psycopg
import yaml

from shopdb_operator.maintenance.months import add_months, month_start
from shopdb_operator.maintenance.partitions import PartitionMaintainer, PartitionSettings

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LOCAL_KUBECONFIG = "/var/lib/shopdb-localkube/admin.kubeconfig"
POSTGRES_PORT = 5432


def e2e():
    """tests/e2e's helpers (conftest: Kubectl, Images; load: addresses and Secrets; support:
    waiting, installing the operator), imported only to reach a cluster: their module names
    would shadow others' (this file is itself a `load`), so the directory goes first."""
    path = str(HERE.parent / "e2e")
    if sys.path[0] != path:
        sys.path.insert(0, path)
    import conftest
    import load
    import support
    return conftest, load, support

SCHEMA = "shopbench"
SCHEMA_SQL = REPO / "manifests" / "examples" / "shop-schema.sql"
PROFILE = REPO / "manifests" / "examples" / "cluster-bench.yaml"
MARKER = "bench_dataset"
PREMAKE_MONTHS = 3
ACQUIRE_TARGET_MS = 10.0  # the design's "connection acquisition: < 10ms"

CATEGORIES = ["electronics", "phones", "computers", "audio", "cameras", "gaming", "home", "kitchen",
              "furniture", "garden", "tools", "toys", "baby", "beauty", "health", "sports", "outdoors",
              "fashion", "shoes", "jewelry", "books", "music", "pets", "grocery"]
ADJECTIVES = ["red", "blue", "green", "black", "white", "small", "large", "classic", "modern", "vintage",
              "compact", "premium", "light", "heavy", "smart", "eco"]
MATERIALS = ["cotton", "leather", "steel", "wooden", "glass", "ceramic", "plastic", "bamboo", "wool",
             "silk", "copper", "marble", "linen", "carbon", "rubber", "paper"]
NOUNS = ["lamp", "chair", "speaker", "bag", "watch", "bottle", "jacket", "table", "phone", "camera",
         "shoe", "mug", "kettle", "pillow", "keyboard", "backpack"]
WORDS = ADJECTIVES + MATERIALS + NOUNS


def sql_text_array(values: list[str]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


# Deterministic by product id, so that an order item's unit price is its product's price
# without a join during the load: log-uniform from about 2 to 400.
def price_sql(product_id: str) -> str:
    return f"round((1 + exp(((hashint8(({product_id})::bigint) & 65535) / 65535.0) * 6))::numeric, 2)"


# --- the data set -----------------------------------------------------------------------

@dataclass(frozen=True)
class Scale:
    shops: int
    products_per_shop: int
    days: int
    orders_per_day: int
    customers: int

    @classmethod
    def full(cls, factor: float = 1.0) -> "Scale":
        return cls(shops=max(int(3000 * factor), 10), products_per_shop=100, days=365,
                   orders_per_day=max(int(10_000 * factor), 10), customers=max(int(300_000 * factor), 100))

    @classmethod
    def smoke(cls) -> "Scale":
        return cls(shops=30, products_per_shop=12, days=3, orders_per_day=300, customers=500)

    @property
    def products(self) -> int:
        return self.shops * self.products_per_shop


@dataclass
class Endpoint:
    host: str
    dbname: str
    user: str
    password: str
    port: int = POSTGRES_PORT

    def connect(self, **kwargs) -> psycopg.Connection:
        # No server-side prepared statements: the same code goes through PgBouncer too.
        return psycopg.connect(host=self.host, port=self.port, dbname=self.dbname, user=self.user,
                               password=self.password, connect_timeout=15, prepare_threshold=None,
                               sslmode="disable", **kwargs)


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


class DataSet:
    """The marketplace in its own schema, loaded once per scale."""

    def __init__(self, owner: Endpoint, scale: Scale, schema: str = SCHEMA):
        self.owner, self.scale, self.schema = owner, scale, schema
        self.info: dict = {}
        # what the marker records: the scale, and the schema file it was loaded with (a
        # changed index is a new data set)
        self.key = asdict(scale) | {"schema_sql": hashlib.sha256(SCHEMA_SQL.read_bytes()).hexdigest()[:16]}

    def _recorded(self, conn) -> dict | None:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{self.schema}.{MARKER}",)).fetchone()[0]
        if not exists:
            return None
        row = conn.execute(f"SELECT scale, complete, loaded_at, info FROM {self.schema}.{MARKER}").fetchone()
        return None if row is None else {"scale": row[0], "complete": row[1], "loaded_at": row[2], "info": row[3]}

    def ensure(self, progress=None) -> bool:
        """Load unless the marker says this scale is there already; True when it loaded."""
        with self.owner.connect(autocommit=True) as conn:
            recorded = self._recorded(conn)
            if recorded and recorded["complete"] and recorded["scale"] == self.key:
                self.info = recorded["info"] or {}
                age = datetime.now(timezone.utc) - recorded["loaded_at"]
                log(f"data: reusing {self.schema} loaded {recorded['loaded_at']:%Y-%m-%d %H:%M} UTC "
                    f"({self.info.get('orders', '?')} orders)" + (
                        f"; {age.days} days old: the last days before now hold no orders"
                        if age > timedelta(days=2) else ""))
                return False
            if recorded:
                log(f"data: {self.schema} holds another scale or schema, or an unfinished load "
                    f"({recorded['scale']}); reloading")
            self._load(conn, progress)
            return True

    def _load(self, conn, progress) -> None:
        s, schema = self.scale, self.schema
        started = time.monotonic()
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path = {schema}")
        conn.execute(SCHEMA_SQL.read_text())
        conn.execute(f"CREATE TABLE {MARKER} (scale jsonb NOT NULL, complete boolean NOT NULL, "
                     f"loaded_at timestamptz NOT NULL DEFAULT now(), info jsonb)")
        conn.execute(f"INSERT INTO {MARKER} (scale, complete) VALUES (%s, false)", (json.dumps(self.key),))
        now = datetime.now(timezone.utc).replace(microsecond=0)
        first = now - timedelta(days=s.days)
        self._partitions(conn, first.date(), now.date())
        foreign_keys = self._drop_foreign_keys(conn)

        log(f"data: {s.shops} shops, {s.products} products")
        conn.execute(f"""
            INSERT INTO shops (id, name, slug, status, created_at) OVERRIDING SYSTEM VALUE
            SELECT g, 'Shop ' || g, 'shop-' || g,
                   CASE WHEN g % 97 = 0 THEN 'closed' WHEN g % 50 = 0 THEN 'suspended' ELSE 'active' END,
                   now() - random() * interval '1000 days'
              FROM generate_series(1, {s.shops}) g""")
        words = [sql_text_array(ADJECTIVES), sql_text_array(MATERIALS), sql_text_array(NOUNS)]
        conn.execute(f"""
            INSERT INTO products (id, shop_id, name, category, price, stock, is_active, created_at, updated_at)
            OVERRIDING SYSTEM VALUE
            SELECT id, shop_id,
                   ({words[0]})[1 + floor(random() * {len(ADJECTIVES)})::int] || ' ' ||
                   ({words[1]})[1 + floor(random() * {len(MATERIALS)})::int] || ' ' ||
                   ({words[2]})[1 + floor(random() * {len(NOUNS)})::int] || ' ' || id,
                   ({sql_text_array(CATEGORIES)})[1 + floor(random() * {len(CATEGORIES)})::int],
                   {price_sql('id')},
                   CASE WHEN random() < 0.05 THEN 0 ELSE 20 + floor(random() * 500)::int END,
                   random() >= 0.03, created, created
              FROM (SELECT (g - 1) * {s.products_per_shop} + k AS id, g AS shop_id,
                           now() - random() * interval '700 days' AS created
                      FROM generate_series(1, {s.shops}) g, generate_series(1, {s.products_per_shop}) k) x""")

        next_id, total_items, month = 1, 0, first
        while month < now:
            end = min(datetime.combine(add_months(month_start(month.date()), 1), datetime.min.time(),
                                       tzinfo=timezone.utc), now)
            count = max(round(s.orders_per_day * (end - month).total_seconds() / 86400), 1)
            t0 = time.monotonic()
            items = self._orders(conn, next_id, count, month, end, now)
            elapsed = time.monotonic() - t0
            total_items += items
            next_id += count
            log(f"data: {month:%Y-%m} {count:>8} orders {items:>8} items in {elapsed:5.1f}s "
                f"({count / max(elapsed, 0.001):,.0f} orders/s)")
            if progress:
                progress()
            month = end

        log("data: sequences, foreign keys (validated), the materialized view")
        for table in ("shops", "products", "orders"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{schema}.{table}', 'id'), "
                         f"(SELECT max(id) FROM {schema}.{table}))")
        for table, name, definition in foreign_keys:
            t0 = time.monotonic()
            conn.execute(f"ALTER TABLE {schema}.{table} ADD CONSTRAINT {name} {definition}")
            log(f"data: {table}.{name} added back in {time.monotonic() - t0:.1f}s")
        conn.execute("REFRESH MATERIALIZED VIEW shop_analytics")
        log("data: VACUUM ANALYZE")
        for table in ("shops", "products", "orders", "order_items", "shop_analytics"):
            conn.execute(f"VACUUM (ANALYZE) {schema}.{table}")
        size = conn.execute("SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'm')",
                            (schema,)).fetchone()[0]
        self.info = {"orders": next_id - 1, "order_items": total_items, "size": size, "first": first.isoformat(),
                     "now": now.isoformat(), "load_seconds": round(time.monotonic() - started)}
        conn.execute(f"UPDATE {MARKER} SET complete = true, loaded_at = %s, info = %s",
                     (now, json.dumps(self.info)))
        log(f"data: loaded in {self.info['load_seconds']}s: {self.info['orders']} orders, {total_items} items, {size}")

    def _partitions(self, conn, first: date, today: date) -> None:
        """The months from `first` to PREMAKE_MONTHS ahead, named and attached as the operator's
        maintenance does: its own code, run as of the first day (it fills the gap up to now)."""
        months = (today.year - first.year) * 12 + today.month - first.month
        settings = PartitionSettings(schema=self.schema, table="orders", column="created_at",
                                     premake=months + PREMAKE_MONTHS)
        report = PartitionMaintainer(conn, settings, today=first).run()
        conn.execute(f"SET search_path = {self.schema}")  # the maintainer set only the time zone
        log(f"data: {len(report.created)} partitions of orders created by the maintenance code "
            f"({month_start(first):%Y-%m} to {add_months(month_start(today), PREMAKE_MONTHS):%Y-%m})")

    def _drop_foreign_keys(self, conn) -> list[tuple[str, str, str]]:
        """Foreign keys of the loaded tables, dropped for the load (one validation at the end
        instead of a lookup per row); returned to be added back."""
        rows = conn.execute("""
            SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
              FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE k.contype = 'f' AND k.conparentid = 0 AND n.nspname = %s
               AND c.relname IN ('products', 'orders', 'order_items')
             ORDER BY 1, 2""", (self.schema,)).fetchall()
        for table, name, _ in rows:
            conn.execute(f"ALTER TABLE {self.schema}.{table} DROP CONSTRAINT {name}")
        return [tuple(r) for r in rows]

    def _orders(self, conn, first_id: int, count: int, start: datetime, end: datetime, now: datetime) -> int:
        s = self.scale
        seconds = (end - start).total_seconds()
        cur = conn.execute(f"""
            WITH src AS MATERIALIZED (
                SELECT g AS id,
                       1 + floor({s.shops} * random() ^ 2)::int AS shop_id,
                       1 + floor({s.customers} * random())::int AS customer_id,
                       '{start.isoformat()}'::timestamptz + random() * interval '{seconds} seconds' AS ts,
                       1 + floor(random() * random() * 4)::int AS n_items,
                       random() AS r
                  FROM generate_series({first_id}, {first_id + count - 1}) g
            ), dated AS MATERIALIZED (
                SELECT src.*,
                       CASE WHEN ts < '{now.isoformat()}'::timestamptz - interval '14 days' THEN
                                 CASE WHEN r < 0.88 THEN 'DELIVERED' WHEN r < 0.95 THEN 'CANCELLED' ELSE 'REFUNDED' END
                            WHEN ts < '{now.isoformat()}'::timestamptz - interval '3 days' THEN
                                 CASE WHEN r < 0.5 THEN 'DELIVERED' WHEN r < 0.8 THEN 'SHIPPED'
                                      WHEN r < 0.95 THEN 'PAID' ELSE 'CANCELLED' END
                            ELSE CASE WHEN r < 0.3 THEN 'SHIPPED' WHEN r < 0.7 THEN 'PAID'
                                      WHEN r < 0.95 THEN 'PENDING' ELSE 'CANCELLED' END
                       END AS status
                  FROM src
            ), items AS MATERIALIZED (
                SELECT d.id AS order_id, d.ts, d.status, x.product_id,
                       1 + floor(random() * random() * 3)::int AS quantity,
                       {price_sql('x.product_id')} AS unit_price
                  FROM dated d
                 CROSS JOIN LATERAL (
                       SELECT (d.shop_id - 1) * {s.products_per_shop} + 1
                              + floor(random() * {s.products_per_shop})::int AS product_id
                         FROM generate_series(1, d.n_items)) x
            ), stored_items AS (
                INSERT INTO order_items (order_id, order_created_at, product_id, quantity, unit_price, rating)
                SELECT order_id, ts, product_id, quantity, unit_price,
                       CASE WHEN status = 'DELIVERED' AND random() < 0.4
                            THEN (5 - floor(random() ^ 2 * 5))::smallint END
                  FROM items
                RETURNING 1
            ), stored_orders AS (
                INSERT INTO orders (id, shop_id, customer_id, status, total_amount, created_at, delivered_at)
                OVERRIDING SYSTEM VALUE
                SELECT d.id, d.shop_id, d.customer_id, d.status, t.total, d.ts,
                       CASE WHEN d.status = 'DELIVERED'
                            THEN least(d.ts + (2 + random() * 6) * interval '1 day', '{now.isoformat()}'::timestamptz) END
                  FROM dated d
                  JOIN (SELECT order_id, sum(quantity * unit_price) AS total FROM items GROUP BY order_id) t
                    ON t.order_id = d.id
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM stored_items), (SELECT count(*) FROM stored_orders)""")
        items, orders = cur.fetchone()
        assert orders == count, (orders, count)
        return items


# --- the workloads ----------------------------------------------------------------------

@dataclass(frozen=True)
class Script:
    """A pgbench script: \\set lines (pgbench expressions; the same ones drive EXPLAIN) and
    statements. `transaction` wraps the statements in BEGIN/COMMIT."""
    name: str
    variables: tuple[tuple[str, str], ...]
    statements: tuple[str, ...]
    weight: int = 1
    transaction: bool = False
    writes: bool = False

    def text(self) -> str:
        lines = [f"\\set {name} {expression}" for name, expression in self.variables]
        body = [re.sub(r"\s+", " ", s).strip() + ";" for s in self.statements]
        if self.transaction:
            body = ["BEGIN;", *body, "COMMIT;"]
        return "\n".join(lines + body) + "\n"

    def sample(self, rng: random.Random, defines: dict[str, int] | None = None) -> dict[str, int]:
        """Values as pgbench would draw them (its expressions evaluated in Python), after
        the -D definitions every run gets."""
        values: dict[str, int] = dict(defines or {})
        for name, expression in self.variables:
            python = re.sub(r":([a-z_][a-z0-9_]*)", r"v['\1']", expression)
            python = python.replace("random(", "rnd(")
            values[name] = int(eval(python, {"rnd": rng.randint, "v": values}))  # our own expressions only
        return values

    def bound(self, statement: str, values: dict[str, int]) -> str:
        return re.sub(r"(?<!:):([a-z_][a-z0-9_]*)", lambda m: str(values[m.group(1)]), statement)


def scripts(scale: Scale, schema: str = SCHEMA) -> dict[str, list[Script]]:
    s, x = scale, schema
    categories, words = sql_text_array(CATEGORIES), sql_text_array(WORDS)
    search_base = f"""
        SELECT p.id, p.name, p.price, s.name AS shop
          FROM {x}.products p JOIN {x}.shops s ON s.id = p.shop_id
         WHERE p.is_active AND p.category = ({categories})[:cat]
           AND p.price BETWEEN :lo AND :hi AND p.stock > 0 AND s.status = 'active'"""
    search_vars = (("cat", f"random(1, {len(CATEGORIES)})"), ("lo", "random(1, 150)"), ("hi", ":lo + random(10, 200)"))
    third = max(s.products_per_shop // 3, 1)
    return {
        "search": [
            Script("search-filters", search_vars, (search_base + " ORDER BY p.price LIMIT 24",), weight=7),
            Script("search-words", search_vars + (("word", f"random(1, {len(WORDS)})"),), (
                search_base + f" AND to_tsvector('simple', p.name) @@ to_tsquery('simple', ({words})[:word])"
                              " ORDER BY p.price LIMIT 24",), weight=3),
        ],
        "checkout": [Script("order-placement", (
            ("shop", f"random(1, {s.shops})"), ("customer", f"random(1, {s.customers})"),
            ("p1", f"(:shop - 1) * {s.products_per_shop} + random(1, {third})"),
            ("p2", f"(:shop - 1) * {s.products_per_shop} + {third} + random(1, {third})"),
            ("p3", f"(:shop - 1) * {s.products_per_shop} + {2 * third} + random(1, {third})"),
            ("q1", "random(1, 3)"), ("q2", "random(1, 2)"), ("q3", "random(1, 2)"), ("n", "random(1, 3)"),
        ), (
            f"SELECT id, name, price, stock FROM {x}.products WHERE id IN (:p1, :p2, :p3) AND is_active",
            f"""WITH cart (ord, product_id, quantity) AS (
                    VALUES (1, :p1::bigint, :q1::int), (2, :p2::bigint, :q2::int), (3, :p3::bigint, :q3::int)),
                taken AS (
                    UPDATE {x}.products p SET stock = p.stock - c.quantity, updated_at = now()
                      FROM cart c
                     WHERE c.ord <= :n AND p.id = c.product_id AND p.is_active AND p.stock >= c.quantity
                    RETURNING p.id, c.quantity, p.price),
                placed AS (
                    INSERT INTO {x}.orders (shop_id, customer_id, status, total_amount)
                    SELECT :shop, :customer, 'PENDING', sum(t.quantity * t.price) FROM taken t HAVING count(*) > 0
                    RETURNING id, created_at)
                INSERT INTO {x}.order_items (order_id, order_created_at, product_id, quantity, unit_price)
                SELECT o.id, o.created_at, t.id, t.quantity, t.price FROM placed o CROSS JOIN taken t""",
        ), transaction=True, writes=True)],
        "orders": [
            Script("order-history", (("customer", f"random(1, {s.customers})"),), (f"""
                SELECT o.id, o.created_at, o.status, o.total_amount,
                       (SELECT count(*) FROM {x}.order_items i
                         WHERE i.order_id = o.id AND i.order_created_at = o.created_at) AS items
                  FROM {x}.orders o WHERE o.customer_id = :customer
                 ORDER BY o.created_at DESC LIMIT 10""",), weight=3),
            Script("order-detail", (("customer", f"random(1, {s.customers})"),), (f"""
                SELECT o.id, o.status, o.total_amount, i.product_id, p.name, i.quantity, i.unit_price
                  FROM (SELECT id, created_at, status, total_amount FROM {x}.orders
                         WHERE customer_id = :customer ORDER BY created_at DESC LIMIT 1) o
                  JOIN {x}.order_items i ON i.order_id = o.id AND i.order_created_at = o.created_at
                  JOIN {x}.products p ON p.id = i.product_id""",), weight=1),
        ],
        # The last 30 days start at :since (-D, epoch seconds), bound like an application binds it.
        "dashboard": [Script("vendor-dashboard", (("shop", f"random(1, {s.shops})"),), (
            f"""SELECT status, count(*) AS orders, sum(total_amount) AS revenue FROM {x}.orders
                 WHERE shop_id = :shop AND created_at >= to_timestamp(:since)
                 GROUP BY status ORDER BY status""",
            f"""SELECT id, created_at, status, total_amount FROM {x}.orders
                 WHERE shop_id = :shop AND created_at >= to_timestamp(:since)
                 ORDER BY created_at DESC LIMIT 20""",
            # the products' names are looked up for the top five only
            f"""SELECT p.id, p.name, t.sold, t.revenue
                  FROM (SELECT i.product_id, sum(i.quantity) AS sold, sum(i.quantity * i.unit_price) AS revenue
                          FROM {x}.orders o
                          JOIN {x}.order_items i ON i.order_id = o.id AND i.order_created_at = o.created_at
                         WHERE o.shop_id = :shop AND o.created_at >= to_timestamp(:since)
                           AND o.status <> 'CANCELLED'
                         GROUP BY i.product_id ORDER BY sold DESC LIMIT 5) t
                  JOIN {x}.products p ON p.id = t.product_id
                 ORDER BY t.sold DESC""",
        ))],
    }


# Which route each kind of work takes: "primary" is <db>, the others <db>_<route>.
ROUTE_OF = {"search": "search", "checkout": "primary", "orders": "orders", "dashboard": "analytics"}


@dataclass(frozen=True)
class Targets:
    avg_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    errors: float = 0.001

    def verdict(self, r: "Stats") -> tuple[bool, str]:
        checks = []
        for label, limit, value in (("avg", self.avg_ms, r.avg_ms), ("p95", self.p95_ms, r.p95_ms),
                                    ("p99", self.p99_ms, r.p99_ms)):
            if limit is not None:
                checks.append((value is not None and value < limit, f"{label}<{limit:g}"))
        checks.append((r.error_rate < self.errors, f"err<{self.errors * 100:g}%"))
        ok = all(c for c, _ in checks) and r.transactions > 0
        return ok, " ".join(("" if c else "!") + text for c, text in checks)


@dataclass(frozen=True)
class Scenario:
    name: str
    works: tuple[tuple[str, int], ...]  # (kind of work, clients)
    targets: Targets
    think: float | None = None  # seconds between a user's transactions (pgbench -R)


def scenarios(smoke: bool, think: float) -> list[Scenario]:
    if smoke:
        return [
            Scenario("mixed", (("search", 6), ("orders", 3), ("dashboard", 2), ("checkout", 2)),
                     Targets(100, 200, 500), think=0.2),
            Scenario("search", (("search", 8),), Targets(p95_ms=150)),
            Scenario("order-rush", (("checkout", 6),), Targets(p95_ms=300)),
            Scenario("dashboards", (("dashboard", 4),), Targets(p95_ms=100)),
        ]
    return [
        Scenario("mixed", (("search", 550), ("orders", 250), ("dashboard", 100), ("checkout", 100)),
                 Targets(100, 200, 500), think=think),
        Scenario("search", (("search", 2000),), Targets(p95_ms=150)),
        Scenario("order-rush", (("checkout", 500),), Targets(p95_ms=300)),
        Scenario("dashboards", (("dashboard", 200),), Targets(p95_ms=100)),
    ]


# --- running pgbench and reading its logs -------------------------------------------------

def percentile(ordered: list[float], share: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


@dataclass
class Stats:
    transactions: int = 0
    failures: int = 0  # failed after every try (serialization, deadlock) or aborted clients
    retries: int = 0
    seconds: float = 0.0
    avg_ms: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    lag_p95_ms: float | None = None

    @property
    def tps(self) -> float:
        return self.transactions / self.seconds if self.seconds else 0.0

    @property
    def error_rate(self) -> float:
        done = self.transactions + self.failures
        return self.failures / done if done else 0.0

    @classmethod
    def of(cls, latencies_us: list[int], failures: int, retries: int, seconds: float,
           lags_us: list[int] = ()) -> "Stats":
        ordered = sorted(latencies_us)
        lags = sorted(lags_us)
        ms = (lambda v: None if v is None else v / 1000)
        return cls(transactions=len(ordered), failures=failures, retries=retries, seconds=seconds,
                   avg_ms=ms(sum(ordered) / len(ordered)) if ordered else None,
                   p50_ms=ms(percentile(ordered, 0.50)), p95_ms=ms(percentile(ordered, 0.95)),
                   p99_ms=ms(percentile(ordered, 0.99)), max_ms=ms(ordered[-1]) if ordered else None,
                   lag_p95_ms=ms(percentile(lags, 0.95)) if lags else None)


@dataclass
class Run:
    """One pgbench process: what it ran, and what it measured."""
    label: str
    work: str
    endpoint: Endpoint
    scripts: list[Script]
    clients: int
    threads: int
    duration: int
    protocol: str
    rate: float | None
    prefix: Path
    process: subprocess.Popen | None = None
    output: str = ""
    aborted: int = 0
    stats: Stats = field(default_factory=Stats)
    per_script: dict[str, Stats] = field(default_factory=dict)
    latencies: list[int] = field(default_factory=list)  # µs, of the transactions kept
    lags: list[int] = field(default_factory=list)  # µs, schedule lag (with a rate)
    defines: dict[str, int] = field(default_factory=dict)  # pgbench -D
    launched: float = 0.0  # time.time() when pgbench started
    window: tuple[float, float] | None = None  # the measured part of the run, epoch seconds

    @property
    def connect_seconds(self) -> int:
        """pgbench's -T counts from its start, and its clients connect first, one after the
        other in each thread (SCRAM: ~30 s for 2000 through two small PgBouncers): -T gets
        this much more, so that `duration` seconds run with every client connected."""
        return 3 + self.clients // 60

    def command(self) -> list[str]:
        total = self.duration + self.connect_seconds
        cmd = [shutil.which("pgbench") or "pgbench", "-n", "-h", self.endpoint.host, "-p", str(self.endpoint.port),
               "-U", self.endpoint.user, "-c", str(self.clients), "-j", str(self.threads), "-T", str(total),
               f"--protocol={self.protocol}", "-l", f"--log-prefix={self.prefix}", "--max-tries=10",
               "--failures-detailed", "-r"]
        if self.rate:
            cmd += ["-R", f"{self.rate:.3f}"]
        for name, value in self.defines.items():
            cmd += ["-D", f"{name}={value}"]
        for i, script in enumerate(self.scripts):
            path = self.prefix.with_name(f"{self.prefix.name}-{i}-{script.name}.sql")
            path.write_text(script.text())
            cmd += ["-f", f"{path}@{script.weight}"]
        return cmd + [self.endpoint.dbname]

    def start(self) -> None:
        env = dict(os.environ, PGPASSWORD=self.endpoint.password, PGSSLMODE="disable", PGCONNECT_TIMEOUT="60",
                   PGAPPNAME=f"bench-{self.label}")
        self.launched = time.time()
        self.process = subprocess.Popen(self.command(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)

    def wait(self, warmup: float) -> None:
        assert self.process is not None
        self.output, _ = self.process.communicate(timeout=self.duration + self.connect_seconds + 900)
        self.prefix.with_suffix(".out").write_text(self.output)
        self.aborted = len(re.findall(r"client \d+ aborted", self.output))
        self._read_logs(warmup)

    def _read_logs(self, warmup: float) -> None:
        """pgbench -l lines: client_id transaction_no time script_no time_epoch time_us
        [schedule_lag] [retries]; `time` is the latency in microseconds, or failed /
        serialization / deadlock (--failures-detailed). One file per thread; each thread
        starts once its own clients are connected, so the measured window opens `warmup`
        seconds (cold caches, the first plans) after the last thread's first transaction,
        and closes at pgbench's -T deadline (or its last transaction, if later)."""
        rows, firsts = [], []
        for path in self.prefix.parent.glob(f"{self.prefix.name}.*"):
            if path.suffix in (".sql", ".out"):
                continue
            found = [parts for parts in (line.split() for line in path.read_text().splitlines()) if len(parts) >= 6]
            if found:
                rows += found
                firsts.append(min(int(p[4]) + int(p[5]) / 1e6 for p in found))
        if not rows:
            self.stats = Stats(failures=self.aborted)
            return
        done = [int(p[4]) + int(p[5]) / 1e6 for p in rows]
        begin, end = max(firsts), max(done)
        warm = end - begin > 2 * warmup
        cut = begin + warmup if warm else min(done)
        lag_at = 6 if self.rate else None
        retries_at = 7 if self.rate else 6
        kept = [(p, t) for p, t in zip(rows, done) if t >= cut]
        # a run that stalled still lasted until its deadline
        deadline = self.launched + self.duration + self.connect_seconds if self.launched else end
        seconds = max(max(end, deadline) - cut, 0.001)
        self.window = (cut, max(end, deadline))

        def stats(selected) -> Stats:
            latencies = [int(p[2]) for p, _ in selected if p[2].isdigit()]
            failures = sum(1 for p, _ in selected if not p[2].isdigit() and p[2] != "skipped")
            retries = sum(int(p[retries_at]) for p, _ in selected if len(p) > retries_at)
            lags = [int(p[lag_at]) for p, _ in selected if lag_at and len(p) > lag_at and p[2].isdigit()]
            return Stats.of(latencies, failures, retries, seconds, lags)

        self.stats = stats(kept)
        self.stats.failures += self.aborted
        self.latencies = [int(p[2]) for p, _ in kept if p[2].isdigit()]
        self.lags = [int(p[lag_at]) for p, _ in kept if lag_at and len(p) > lag_at and p[2].isdigit()]
        for i, script in enumerate(self.scripts):
            self.per_script[script.name] = stats([(p, t) for p, t in kept if p[3] == str(i)])

    def statement_latencies(self) -> list[str]:
        """pgbench -r: the average latency of each statement, as printed."""
        lines = []
        for line in self.output.splitlines():
            match = re.match(r"\s+(\d+\.\d+)\s+(\d+)\s+(\d+)\s+(.*)$", line) or re.match(r"\s+(\d+\.\d+)\s+(.*)$", line)
            if match and not match.group(match.lastindex).startswith("\\set"):
                lines.append(f"{float(match.group(1)):8.2f} ms  {match.group(match.lastindex)[:110]}")
        return lines


class PoolSampler:
    """PgBouncer's admin console on every instance, once a second: SHOW POOLS (clients
    waiting, their longest wait) and SHOW STATS (transactions and wait time, for the average
    wait per transaction: connection acquisition, in the design's words)."""

    def __init__(self, pods: dict[str, str], password: str, user: str, interval: float = 1.0):
        self.pods, self.password, self.user, self.interval = pods, password, user, interval
        self.max_waiting: dict[str, int] = {}
        self.max_wait_ms: dict[str, float] = {}
        self.active_samples: dict[str, list[int]] = {}
        self.errors: list[str] = []
        self._stats_before: dict[tuple[str, str], tuple[int, int]] = {}
        self._stats_after: dict[tuple[str, str], tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pool-sampler", daemon=True)
        self._conns: dict[str, psycopg.Connection] = {}

    def _conn(self, pod: str) -> psycopg.Connection:
        conn = self._conns.get(pod)
        if conn is None or conn.closed:
            conn = psycopg.connect(host=self.pods[pod], port=POSTGRES_PORT, user="pgbouncer_admin",
                                   password=self.password, dbname="pgbouncer", autocommit=True,
                                   prepare_threshold=None, connect_timeout=10, sslmode="disable")
            self._conns[pod] = conn
        return conn

    def _show(self, pod: str, what: str) -> list[dict]:
        cur = self._conn(pod).execute(f"SHOW {what}")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def _stats(self) -> dict[tuple[str, str], tuple[int, int]]:
        found = {}
        for pod in self.pods:
            try:
                for row in self._show(pod, "STATS"):
                    found[(pod, row["database"])] = (int(row["total_xact_count"]), int(row["total_wait_time"]))
            except psycopg.Error as error:
                self.errors.append(f"{pod}: {error}")
        return found

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pod in self.pods:
                try:
                    for row in self._show(pod, "POOLS"):
                        if row["user"] != self.user:
                            continue
                        db = row["database"]
                        wait_ms = int(row["maxwait"]) * 1000 + int(row.get("maxwait_us") or 0) / 1000
                        self.max_waiting[db] = max(self.max_waiting.get(db, 0), int(row["cl_waiting"]))
                        self.max_wait_ms[db] = max(self.max_wait_ms.get(db, 0.0), wait_ms)
                        self.active_samples.setdefault(db, []).append(int(row["sv_active"]))
                except psycopg.Error as error:
                    self.errors.append(f"{pod}: {error}")
                    self._conns.pop(pod, None)
            self._stop.wait(self.interval)

    def start(self) -> "PoolSampler":
        self._stats_before = self._stats()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._stats_after = self._stats()
        for conn in self._conns.values():
            conn.close()

    def avg_wait_ms(self, database: str) -> float | None:
        xacts = waited = 0
        for (pod, db), (x1, w1) in self._stats_after.items():
            if db == database:
                x0, w0 = self._stats_before.get((pod, db), (0, 0))  # a pool PgBouncer had not made yet
                xacts, waited = xacts + x1 - x0, waited + w1 - w0
        return waited / xacts / 1000 if xacts else None


class CpuSampler:
    """Every second, each pod's main container from its cgroup: CPU used and CFS periods
    throttled, so that a run's window (connections made, warm-up done) gets exactly its
    own figures. Where the cgroups are not on this host, the kubelet's counters (coarser)
    over the whole run stand in (Bench._cpu)."""

    def __init__(self, containers: dict[str, dict], interval: float = 1.0):
        self.containers = {pod: c for pod, c in containers.items() if c["cgroup"]}
        self.interval = interval
        self.samples: list[tuple[float, dict[str, tuple[int, int, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def _read(self) -> dict[str, tuple[int, int, int]]:
        values = {}
        for pod, c in self.containers.items():
            cpuacct, cpu = c["cgroup"]
            try:
                usage = int((cpuacct / "cpuacct.usage").read_text())
                stat = dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())
                values[pod] = (usage, int(stat.get("nr_periods", 0)), int(stat.get("nr_throttled", 0)))
            except (OSError, ValueError):
                continue
        return values

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self._read()))
            self._stop.wait(self.interval)

    def start(self) -> "CpuSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.samples.append((time.time(), self._read()))

    def over(self, start: float, end: float) -> dict[str, dict]:
        """pod -> cores used, its limit, and the share of CFS periods it was throttled in,
        between the samples nearest inside [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            inside = self.samples[-2:] if len(self.samples) >= 2 else []
        if len(inside) < 2:
            return {}
        (t0, a), (t1, b) = inside[0], inside[-1]
        used = {}
        for pod, (usage, periods, throttled) in b.items():
            if pod not in a:
                continue
            cores = (usage - a[pod][0]) / 1e9 / (t1 - t0)
            ran = periods - a[pod][1]
            if cores >= 0.01:
                used[pod] = {"cores": round(cores, 3), "limit": self.containers[pod]["limit"],
                             "throttled": round((throttled - a[pod][2]) / ran, 3) if ran > 0 else 0.0}
        return used


# --- the cluster, as kubectl shows it -----------------------------------------------------

class Cluster:
    def __init__(self, kubectl: "Kubectl", namespace: str, name: str):
        self.kubectl, self.namespace, self.name = kubectl, namespace, name
        self.refresh()

    def refresh(self) -> None:
        _, load, _ = e2e()
        secret, service_ip = load.secret, load.service_ip
        kc, ns, name = self.kubectl.kubeconfig, self.namespace, self.name
        self.resource = self.kubectl.json("-n", ns, "get", "sdc", name)
        spec = self.resource.get("spec") or {}
        postgres, bouncer = spec.get("postgres") or {}, spec.get("pgbouncer") or {}
        self.database = postgres.get("database", "shop")
        self.owner = postgres.get("owner", "shop")
        self.max_connections = int((postgres.get("parameters") or {}).get("max_connections", 500))
        self.replicas = spec.get("replicas") or [{"name": "search", "poolSize": 25}, {"name": "orders", "poolSize": 25},
                                                  {"name": "analytics", "poolSize": 20, "analytics": True,
                                                   "promotable": False}]
        self.bouncers = int(bouncer.get("instances", 2))
        self.pools = {"primary": int(bouncer.get("primaryPoolSize", 30)),
                      **{r["name"]: int(r.get("poolSize", 25)) for r in self.replicas}}
        self.app_password = secret(kc, ns, f"{name}-app")
        self.superuser_password = secret(kc, ns, f"{name}-superuser")
        self.admin_password = secret(kc, ns, f"{name}-pgbouncer")
        self.pgbouncer_ip = service_ip(kc, ns, f"{name}-pgbouncer")
        self.service_ips = {"primary": service_ip(kc, ns, f"{name}-rw"),
                            **{r["name"]: service_ip(kc, ns, f"{name}-{r['name']}") for r in self.replicas}}

    def route(self, kind: str) -> str:
        """The route a kind of work takes in this cluster (its analytics replica may have another name)."""
        route = ROUTE_OF[kind]
        names = [r["name"] for r in self.replicas]
        if route == "analytics" and route not in names:
            route = next((r["name"] for r in self.replicas if r.get("analytics")), names[-1])
        if route not in names and route != "primary":
            route = names[0]
        return route

    def via_pgbouncer(self, route: str) -> Endpoint:
        dbname = self.database if route == "primary" else f"{self.database}_{route}"
        return Endpoint(self.pgbouncer_ip, dbname, self.owner, self.app_password)

    def direct(self, route: str, superuser: bool = False) -> Endpoint:
        if superuser:
            return Endpoint(self.service_ips[route], self.database, "postgres", self.superuser_password)
        return Endpoint(self.service_ips[route], self.database, self.owner, self.app_password)

    def instances(self) -> dict[str, str]:
        addresses = e2e()[1].instance_addresses(self.kubectl.kubeconfig, self.namespace, self.name)
        return dict(sorted(addresses.items()))

    def instance(self, name: str) -> Endpoint:
        return Endpoint(self.instances()[name], self.database, "postgres", self.superuser_password)

    def pgbouncer_pods(self) -> dict[str, str]:
        pods = self.kubectl.json("-n", self.namespace, "get", "pods", "-l",
                                 f"shopdb.io/cluster={self.name},app.kubernetes.io/component=pgbouncer")["items"]
        return {p["metadata"]["name"]: p["status"]["podIP"] for p in pods
                if (p.get("status") or {}).get("podIP") and not p["metadata"].get("deletionTimestamp")}

    def status(self) -> dict:
        return self.kubectl.json("-n", self.namespace, "get", "sdc", self.name).get("status") or {}

    def failovers(self) -> int:
        return len(self.status().get("failoverHistory") or [])

    def main_containers(self) -> dict[str, dict]:
        """pod -> its main container (postgres, pgbouncer or redis; not the instance-agent):
        name, CPU limit (cores), and its cgroup directories on this node when they are
        there (cgroup v1, cgroupfs driver: the local cluster)."""
        found = {}
        for pod in self.kubectl.json("-n", self.namespace, "get", "pods")["items"]:
            if (pod.get("status") or {}).get("phase") != "Running":
                continue
            containers = pod["spec"]["containers"]
            c = next((c for c in containers if c["name"] in ("postgres", "pgbouncer", "redis")), containers[0])
            cpu = ((c.get("resources") or {}).get("limits") or {}).get("cpu")
            limit = None if cpu is None else (float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))
            status = next((st for st in pod["status"].get("containerStatuses") or [] if st["name"] == c["name"]), {})
            cid = (status.get("containerID") or "").split("://")[-1]
            qos = pod["status"].get("qosClass", "")
            parent = "kubepods" + ("" if qos == "Guaranteed" else f"/{qos.lower()}") + f"/pod{pod['metadata']['uid']}/{cid}"
            dirs = (Path("/sys/fs/cgroup/cpuacct") / parent, Path("/sys/fs/cgroup/cpu") / parent)
            found[pod["metadata"]["name"]] = {"container": c["name"], "limit": limit,
                                              "cgroup": dirs if cid and all(d.is_dir() for d in dirs) else None}
        return found

    def cpu_seconds(self) -> dict[str, tuple[float, float | None]]:
        """pod -> (CPU seconds its main container used so far, that container's CPU limit in
        cores), from the kubelet's stats; sidecars (the instance-agent) are left out."""
        main: dict[str, tuple[str, float | None]] = {}
        for pod in self.kubectl.json("-n", self.namespace, "get", "pods")["items"]:
            containers = pod["spec"]["containers"]
            c = next((c for c in containers if c["name"] in ("postgres", "pgbouncer", "redis")), containers[0])
            cpu = ((c.get("resources") or {}).get("limits") or {}).get("cpu")
            limit = None if cpu is None else (float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))
            main[pod["metadata"]["name"]] = (c["name"], limit)
        node = self.kubectl.json("get", "nodes")["items"][0]["metadata"]["name"]
        raw = self.kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/stats/summary", timeout=60).stdout
        used = {}
        for pod in json.loads(raw).get("pods", []):
            ref = pod["podRef"]
            if ref["namespace"] != self.namespace or ref["name"] not in main:
                continue
            name, limit = main[ref["name"]]
            for c in pod.get("containers", []):
                if c["name"] == name:
                    used[ref["name"]] = ((c.get("cpu") or {}).get("usageCoreNanoSeconds", 0) / 1e9, limit)
        return used


def wait_for(*args, **kwargs):
    return e2e()[2].wait_for(*args, **kwargs)


def wait_ready(kubectl: "Kubectl", namespace: str, name: str, timeout: float) -> None:
    def ready():
        status = kubectl.json("-n", namespace, "get", "sdc", name).get("status") or {}
        return status.get("phase") == "Ready" and status
    t0 = time.monotonic()
    wait_for(ready, timeout, f"cluster {namespace}/{name} to be Ready", interval=5)
    log(f"{namespace}/{name} is Ready" + (f" (waited {time.monotonic() - t0:.0f}s)" if time.monotonic() - t0 > 5 else ""))


def apply_profile(kubectl: "Kubectl", images: "Images", profile: Path, namespace: str, name: str) -> None:
    documents = [d for d in yaml.safe_load_all(profile.read_text()) if d]
    cluster = next(d for d in documents if d.get("kind") == "ShopDatabaseCluster")
    cluster["metadata"] = {"name": name, "namespace": namespace}
    spec = cluster["spec"]
    spec.setdefault("postgres", {})["image"] = images.postgres
    spec.setdefault("pgbouncer", {})["image"] = images.pgbouncer
    spec.setdefault("redis", {})["image"] = images.redis
    if kubectl("get", "namespace", namespace, check=False).returncode != 0:
        kubectl("create", "namespace", namespace)
    kubectl.apply(yaml.safe_dump(cluster))
    log(f"applied {profile.relative_to(REPO)} as {namespace}/{name}")


def release(kubectl: "Kubectl", namespace: str, name: str) -> None:
    """Delete the cluster object; its reclaimPolicy Retain keeps volumes and Secrets."""
    policy = kubectl.json("-n", namespace, "get", "sdc", name)["spec"].get("reclaimPolicy", "Retain")
    if policy != "Retain":
        log(f"not releasing {namespace}/{name}: reclaimPolicy {policy} would delete its data")
        return
    kubectl("-n", namespace, "delete", "sdc", name, "--wait=true", timeout=600)
    log(f"released {namespace}/{name}: the cluster object is gone, its volumes and Secrets stay for the next run")


# --- the benchmark ------------------------------------------------------------------------

class Bench:
    def __init__(self, cluster: Cluster, args, out: Path):
        self.cluster, self.args, self.out = cluster, args, out
        self.scale = Scale.smoke() if args.smoke else Scale.full(args.scale)
        self.scripts = scripts(self.scale)
        self.results: list[dict] = []
        self.problems: list[str] = []
        self.protocol = args.protocol

    # -- preparation --

    def replicas_caught_up(self, max_lag: int) -> bool:
        with self.cluster.direct("primary", superuser=True).connect(autocommit=True) as conn:
            rows = conn.execute("SELECT application_name, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) "
                                "FROM pg_stat_replication").fetchall()
        expected = len(self.cluster.replicas)
        return len(rows) >= expected and all(lag is not None and lag <= max_lag for _, lag in rows)

    def throttle(self) -> None:
        """Between months of the load: replicas (smaller than the primary) must keep up, or
        their slots would hold more WAL than the volume allows."""
        if not self.replicas_caught_up(512 * 1024 * 1024):
            t0 = time.monotonic()
            wait_for(lambda: self.replicas_caught_up(64 * 1024 * 1024), 1800, "replicas to catch up", interval=2)
            log(f"data: waited {time.monotonic() - t0:.0f}s for the replicas to replay")

    def prepare(self) -> None:
        data = DataSet(self.cluster.direct("primary"), self.scale)
        loaded = data.ensure(progress=self.throttle)
        self.info = data.info
        t0 = time.monotonic()
        wait_for(lambda: self.replicas_caught_up(1024 * 1024), 1800, "every replica to replay the load", interval=2)
        if loaded:
            log(f"data: replicas caught up {time.monotonic() - t0:.0f}s after the load")
        self.ensure_pg_stat_statements()
        if self.protocol == "auto":
            self.protocol = self.pick_protocol()

    def ensure_pg_stat_statements(self) -> None:
        """The operator creates it at bootstrap; a cluster made before that gets it here."""
        with self.cluster.direct("primary", superuser=True).connect(autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            loaded = conn.execute("SELECT 'pg_stat_statements' = ANY(string_to_array("
                                  "replace(current_setting('shared_preload_libraries'), ' ', ''), ','))").fetchone()[0]
        self.statements_loaded = loaded
        if not loaded:
            log("pg_stat_statements is not in shared_preload_libraries here: no statement statistics")

    def pick_protocol(self) -> str:
        """The extended protocol (unnamed statements: parameters bound, planned at each
        execution) works through any PgBouncer in transaction mode. Prepared statements
        need its max_prepared_statements (1.21+), and even then pgbench 15 is no fair
        client for them: it prepares each statement once per client, at its first use,
        with a synchronous PQprepare that stalls every client of its thread until a server
        connection is free for the Parse; a client of that thread inside BEGIN ... COMMIT
        then holds its server connection meanwhile, and the pool deadlocks until
        query_wait_timeout. So: extended, and --protocol=prepared to see it."""
        pods = self.cluster.pgbouncer_pods()
        try:
            with psycopg.connect(host=next(iter(pods.values())), port=POSTGRES_PORT, user="pgbouncer_admin",
                                 password=self.cluster.admin_password, dbname="pgbouncer", autocommit=True,
                                 prepare_threshold=None, connect_timeout=10, sslmode="disable") as conn:
                version = conn.execute("SHOW VERSION").fetchone()[0]
                config = {r[0]: r[1] for r in conn.execute("SHOW CONFIG").fetchall()}
        except (psycopg.Error, StopIteration) as error:
            log(f"PgBouncer admin console: {error}; using the extended protocol")
            return "extended"
        log(f"{version}, max_prepared_statements = {config.get('max_prepared_statements', 'unknown')}: "
            f"pgbench --protocol=extended (see --protocol)")
        return "extended"

    def reset_statements(self) -> None:
        if not self.statements_loaded:
            return
        for name, ip in self.cluster.instances().items():
            with Endpoint(ip, self.cluster.database, "postgres", self.cluster.superuser_password).connect(
                    autocommit=True) as conn:
                conn.execute("SELECT pg_stat_statements_reset()")

    # -- runs --

    @staticmethod
    def defines() -> dict[str, int]:
        """What an application computes itself and binds: the start of the dashboards' 30
        days (epoch seconds). Bound, it lets the planner prune partitions when it plans;
        now() - interval is known only when the query runs, so every partition is planned."""
        return {"since": int(time.time()) - 30 * 86400}

    def run(self, scenario: Scenario, via: str, clients_override: dict[str, int] | None = None,
            duration: int | None = None, label: str | None = None) -> dict:
        duration = duration or self.args.duration
        label = label or f"{scenario.name}-{via}"
        runs = []
        for work, clients in scenario.works:
            clients = (clients_override or {}).get(work, clients)
            route = self.cluster.route(work)
            endpoint = self.cluster.via_pgbouncer(route) if via == "pgbouncer" else self.cluster.direct(route)
            rate = clients / scenario.think if scenario.think else None
            threads = 1 if len(scenario.works) > 1 else min(2, clients)
            prefix = self.out / f"{label}-{work}"
            runs.append(Run(label, work, endpoint, self.scripts[work], clients, threads, duration, self.protocol,
                            rate, prefix, defines=self.defines()))
        log(f"{label}: " + ", ".join(f"{r.clients} {r.work} clients on {r.endpoint.dbname}@{r.endpoint.host}"
                                     + (f" at {r.rate:.1f} tx/s" if r.rate else "") for r in runs)
            + f" for {duration}s, --protocol={self.protocol}")
        failovers = self.cluster.failovers()
        containers = self.cluster.main_containers()
        cpu_sampler = CpuSampler(containers).start()
        cpu_before, t0 = self._cpu(), time.monotonic()
        usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        sampler = PoolSampler(self.cluster.pgbouncer_pods(), self.cluster.admin_password, self.cluster.owner).start() \
            if via == "pgbouncer" else None
        try:
            for r in runs:
                r.start()
            for r in runs:
                r.wait(self.args.warmup)
        finally:
            if sampler:
                sampler.stop()
        elapsed = time.monotonic() - t0
        cpu_sampler.stop()
        usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        windows = [r.window for r in runs if r.window]
        cpu = cpu_sampler.over(max(w[0] for w in windows), max(w[1] for w in windows)) if windows else {}
        if not cpu:  # no cgroups here: the kubelet's counters over the whole run, connections included
            cpu = self._cpu_used(cpu_before, self._cpu(), elapsed)
        pgbench_cores = ((usage_after.ru_utime + usage_after.ru_stime) - (usage_before.ru_utime + usage_before.ru_stime)) / elapsed
        if self.cluster.failovers() != failovers:
            self.problems.append(f"{label}: a failover happened during the run")
        latencies, failures, retries, seconds, lags = [], 0, 0, 0.0, []
        for r in runs:
            failures += r.stats.failures
            retries += r.stats.retries
            seconds = max(seconds, r.stats.seconds)
            latencies.extend(r.latencies)
            lags.extend(r.lags)
        overall = Stats.of(latencies, failures, retries, seconds, lags)
        instance = self.route_instance(runs[0].endpoint) if len(runs) == 1 else None
        result = {"scenario": scenario.name, "via": via, "label": label, "duration": duration, "instance": instance,
                  "clients": sum(r.clients for r in runs), "overall": asdict(overall), "tps": overall.tps,
                  "error_rate": overall.error_rate, "cpu": cpu, "pgbench_cores": pgbench_cores,
                  "runs": [{"work": r.work, "route": r.endpoint.dbname, "host": r.endpoint.host, "clients": r.clients,
                            "rate": r.rate, "stats": asdict(r.stats), "tps": r.stats.tps, "aborted": r.aborted,
                            "per_script": {k: asdict(v) | {"tps": v.tps} for k, v in r.per_script.items()},
                            "statements": r.statement_latencies()} for r in runs]}
        if sampler:
            result["pools"] = {r.endpoint.dbname: {"max_cl_waiting": sampler.max_waiting.get(r.endpoint.dbname),
                                                   "max_wait_ms": sampler.max_wait_ms.get(r.endpoint.dbname),
                                                   "avg_wait_ms": sampler.avg_wait_ms(r.endpoint.dbname),
                                                   "avg_sv_active": _mean(sampler.active_samples.get(r.endpoint.dbname))}
                               for r in runs}
            if sampler.errors:
                result["pool_sampler_errors"] = sampler.errors[:5]
        for r in runs:
            if r.aborted or (r.process and r.process.returncode not in (0, None)):
                tail = "\n".join(r.output.strip().splitlines()[-6:])
                self.problems.append(f"{label}/{r.work}: pgbench exit {r.process.returncode}, {r.aborted} "
                                     f"aborted clients:\n{tail}")
        result["overall_stats"] = overall
        self.results.append(result)
        self._print_run(result, scenario.targets if via == "pgbouncer" else None)
        return result

    def route_instance(self, endpoint: Endpoint) -> str | None:
        """The instance a route's connections reach (asked through the route itself)."""
        try:
            with endpoint.connect(autocommit=True) as conn:
                server = conn.execute("SELECT host(inet_server_addr())").fetchone()[0]
        except psycopg.Error:
            return None
        return next((n for n, ip in self.cluster.instances().items() if ip == server), None)

    def _cpu(self):
        try:
            return self.cluster.cpu_seconds()
        except (AssertionError, KeyError, ValueError, subprocess.TimeoutExpired) as error:
            log(f"no CPU figures from the kubelet: {error}")
            return {}

    @staticmethod
    def _cpu_used(before, after, elapsed) -> dict[str, dict]:
        used = {}
        for pod, (seconds, limit) in after.items():
            if pod in before:
                cores = (seconds - before[pod][0]) / elapsed
                if cores >= 0.01:
                    used[pod] = {"cores": round(cores, 3), "limit": limit}
        return used

    def _print_run(self, result: dict, targets: Targets | None) -> None:
        o: Stats = result["overall_stats"]
        line = (f"  {result['label']:<26} {result['clients']:>5} clients {o.tps:8.1f} tx/s  "
                f"avg {_ms(o.avg_ms)} p50 {_ms(o.p50_ms)} p95 {_ms(o.p95_ms)} p99 {_ms(o.p99_ms)} "
                f"max {_ms(o.max_ms)}  errors {o.failures} ({o.error_rate * 100:.2f}%) retries {o.retries}")
        if targets:
            ok, text = targets.verdict(o)
            line += f"  [{'MEETS' if ok else 'MISSES'} {text}]"
        print(line, flush=True)
        for r in result["runs"]:
            s = r["stats"]
            extra = ""
            if "pools" in result and r["route"] in result["pools"]:
                p = result["pools"][r["route"]]
                extra = (f"  pool: cl_waiting max {p['max_cl_waiting']}, maxwait {_ms(p['max_wait_ms'])}, "
                         f"avg wait {_ms(p['avg_wait_ms'])}, sv_active avg {p['avg_sv_active'] or 0:.1f}")
            if len(result["runs"]) > 1 or extra:
                print(f"    {r['work']:<10} {r['route']:<16} {r['clients']:>5} clients {r['tps']:8.1f} tx/s  "
                      f"avg {_ms(s['avg_ms'])} p95 {_ms(s['p95_ms'])} p99 {_ms(s['p99_ms'])} "
                      f"errors {s['failures']}{extra}", flush=True)
            for line in r["statements"]:
                print(f"      {line}", flush=True)
        busy = sorted(result["cpu"].items(), key=lambda kv: -kv[1]["cores"])[:6]
        if busy:
            print("    cpu (cores used/limit, throttled periods): " + ", ".join(
                f"{pod} {c['cores']:.2f}" + (f"/{c['limit']:g}" if c["limit"] else "")
                + (f" {c['throttled'] * 100:.0f}%" if c.get("throttled") is not None else "") for pod, c in busy)
                + f", pgbench {result['pgbench_cores']:.2f}", flush=True)

    # -- where the time goes --

    def explain(self) -> list[str]:
        """EXPLAIN (ANALYZE, BUFFERS) of every statement, on its route's instance, with values
        drawn like pgbench draws them; writes in a transaction that is rolled back."""
        rng = random.Random(7)
        lines = []
        for work, kinds in self.scripts.items():
            route = self.cluster.route(work)
            endpoint = self.cluster.direct(route)
            with endpoint.connect(autocommit=True) as conn:
                server = conn.execute("SELECT host(inet_server_addr())").fetchone()[0]
                instance = next((n for n, ip in self.cluster.instances().items() if ip == server), server)
                for script in kinds:
                    values = script.sample(rng, self.defines())
                    with conn.transaction(force_rollback=True):
                        for statement in script.statements:
                            sql = script.bound(statement, values)
                            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql).fetchall()
                            head = re.sub(r"\s+", " ", sql)[:150]
                            lines.append(f"--- {script.name} on {route} ({instance}): {head}")
                            lines.extend(row[0] for row in plan)
        return lines

    def top_statements(self, limit: int = 5) -> list[str]:
        if not self.statements_loaded:
            return ["pg_stat_statements is not loaded (shared_preload_libraries)"]
        lines = []
        for name, ip in self.cluster.instances().items():
            with Endpoint(ip, self.cluster.database, "postgres", self.cluster.superuser_password).connect(
                    autocommit=True) as conn:
                standby = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                rows = conn.execute("""
                    SELECT calls, total_exec_time, mean_exec_time, rows,
                           100.0 * shared_blks_hit / nullif(shared_blks_hit + shared_blks_read, 0),
                           100.0 * total_exec_time / nullif(sum(total_exec_time) OVER (), 0), query
                      FROM pg_stat_statements
                     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                       AND query NOT LIKE '%%pg_stat_statements_reset%%'
                     ORDER BY total_exec_time DESC LIMIT %s""", (limit,)).fetchall()
            lines.append(f"--- {name} ({'replica' if standby else 'primary'}): "
                         f"calls, total s, mean ms, rows/call, cache hit %, share of time %, statement")
            for calls, total, mean, nrows, hit, share, text in rows:
                text = re.sub(r"\s+", " ", text)[:140]
                lines.append(f"{calls:>9} {total / 1000:8.1f} {mean:8.3f} {nrows / max(calls, 1):8.1f} "
                             f"{hit or 0:6.1f} {share or 0:6.1f}  {text}")
            self.statement_rows = getattr(self, "statement_rows", 0) + len(rows)
        return lines

    # -- the whole --

    def main(self) -> int:
        self.prepare()
        if self.args.load_only:
            return 0
        self.reset_statements()
        chosen = scenarios(self.args.smoke, self.args.think)
        if self.args.only:
            chosen = [s for s in chosen if s.name in self.args.only]
        print(f"\n== {self.cluster.namespace}/{self.cluster.name}: {self.scale} -- {self.info}", flush=True)
        for scenario in chosen:
            self.run(scenario, "pgbouncer")
        if not self.args.only or "direct" in self.args.only:
            self.direct(chosen)
        statements = self.top_statements()  # before EXPLAIN adds its own
        plans = self.explain()
        (self.out / "explain.txt").write_text("\n".join(plans) + "\n")
        (self.out / "statements.txt").write_text("\n".join(statements) + "\n")
        print("\n== where the time goes: EXPLAIN (ANALYZE, BUFFERS) on each route's instance", flush=True)
        print("\n".join(plans))
        print("\n== top statements per instance (pg_stat_statements, since the runs began)")
        print("\n".join(statements))
        self.summary()
        (self.out / "results.json").write_text(json.dumps(
            {"scale": asdict(self.scale), "data": self.info, "protocol": self.protocol,
             "results": [{k: v for k, v in r.items() if k != "overall_stats"} for r in self.results],
             "problems": self.problems}, indent=2, default=str))
        print(f"\nlogs, plans and results.json: {self.out}")
        for problem in self.problems:
            print(f"PROBLEM: {problem}")
        if self.args.smoke:
            return self.smoke_verdict()
        return 0

    def direct(self, chosen: list[Scenario]) -> None:
        """The single-workload scenarios again, PgBouncer bypassed: at PgBouncer's own server
        concurrency (what the extra hop costs), then at as many connections as the instance
        can take (what the pool saves)."""
        print("\n== direct to the instances (PgBouncer bypassed)", flush=True)
        for scenario in chosen:
            if len(scenario.works) != 1:
                continue
            work, clients = scenario.works[0]
            route = self.cluster.route(work)
            pooled = min(self.cluster.pools.get(route, 25) * self.cluster.bouncers, clients)
            duration = self.args.direct_duration
            self.run(scenario, "direct", {work: pooled}, duration, label=f"{scenario.name}-direct-pool")
            if self.args.smoke:
                continue
            room = self.direct_room(route)
            most = min(clients, room, self.args.direct_max)
            if most > pooled:
                self.run(scenario, "direct", {work: most}, duration, label=f"{scenario.name}-direct-max")

    def direct_room(self, route: str) -> int:
        """Connections the route's instance can still take: max_connections less the
        superuser's reserve, the connections open now and a margin for the operator."""
        with self.cluster.direct(route, superuser=True).connect(autocommit=True) as conn:
            limit, reserved, used = conn.execute(
                "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int,"
                " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')").fetchone()
        return max(limit - reserved - used - 20, 1)

    def summary(self) -> None:
        print("\n== summary (latencies in ms; targets from the design, §7)")
        header = (f"{'scenario':<24} {'via':<10} {'clients':>7} {'tx/s':>8} {'avg':>7} {'p50':>7} {'p95':>7} "
                  f"{'p99':>7} {'errors':>7} {'max wait':>9} {'acquire':>8}  verdict")
        print(header)
        targets = {s.name: s.targets for s in scenarios(self.args.smoke, self.args.think)}
        by_label = {r["label"]: r for r in self.results}
        for r in self.results:
            o: Stats = r["overall_stats"]
            waits = [p["max_wait_ms"] for p in (r.get("pools") or {}).values() if p["max_wait_ms"] is not None]
            acquire = [p["avg_wait_ms"] for p in (r.get("pools") or {}).values() if p["avg_wait_ms"] is not None]
            verdict = ""
            if r["via"] == "pgbouncer":
                ok, text = targets[r["scenario"]].verdict(o)
                if acquire:
                    fast = max(acquire) < ACQUIRE_TARGET_MS
                    ok, text = ok and fast, text + f" {'' if fast else '!'}acquire<{ACQUIRE_TARGET_MS:g}"
                verdict = f"{'MEETS' if ok else 'MISSES'} {text}"
            else:
                base = by_label.get(f"{r['scenario']}-pgbouncer")
                if base and base["overall_stats"].tps and o.tps:
                    b: Stats = base["overall_stats"]
                    verdict = (f"vs PgBouncer: {o.tps / b.tps:.2f}x tx/s, p95 "
                               f"{(o.p95_ms or 0) / (b.p95_ms or 1):.2f}x, avg {(o.avg_ms or 0) / (b.avg_ms or 1):.2f}x")
            print(f"{r['label']:<24} {r['via']:<10} {r['clients']:>7} {o.tps:>8.1f} {_ms(o.avg_ms):>7} "
                  f"{_ms(o.p50_ms):>7} {_ms(o.p95_ms):>7} {_ms(o.p99_ms):>7} {o.error_rate * 100:>6.2f}% "
                  f"{_ms(max(waits) if waits else None):>9} {_ms(max(acquire) if acquire else None):>8}  {verdict}")
        capacity = self.capacity(targets)
        if capacity:
            print("\n== capacity: what a stress target would take (closed loop: latency = clients / throughput)")
            print("\n".join(capacity))

    def capacity(self, targets: dict[str, Targets]) -> list[str]:
        """For each stress scenario through PgBouncer: the CPU one transaction took on its
        route's instance, and the throughput (so the cores of that kind) that would bring
        the scenario's clients, with no think time, under the p95 target."""
        lines = []
        for r in self.results:
            scenario = targets[r["scenario"]]
            if r["via"] != "pgbouncer" or len(r["runs"]) != 1 or not scenario.p95_ms or not r["tps"]:
                continue
            pod = f"{r.get('instance')}-0"
            cpu = r["cpu"].get(pod)
            if not cpu:
                continue
            per_tx_ms = cpu["cores"] / r["tps"] * 1000
            needed = r["clients"] / (scenario.p95_ms / 1000)  # at least: the mean must be below the p95 target
            limit = f" of its {cpu['limit']:g}" if cpu["limit"] else ""
            lines.append(f"{r['scenario']:<12} {per_tx_ms:6.2f} CPU-ms per transaction on {r['instance']} "
                         f"({cpu['cores']:.2f}{limit} cores at {r['tps']:.0f} tx/s); {r['clients']} clients under "
                         f"{scenario.p95_ms:g} ms need > {needed:,.0f} tx/s: > {needed * per_tx_ms / 1000:.1f} such cores")
        return lines

    def smoke_verdict(self) -> int:
        failed = []
        for r in self.results:
            o: Stats = r["overall_stats"]
            if o.transactions == 0:
                failed.append(f"{r['label']}: no transactions")
            if o.failures:
                failed.append(f"{r['label']}: {o.failures} errors")
            for run in r["runs"]:
                if run["stats"]["transactions"] == 0:
                    failed.append(f"{r['label']}/{run['work']}: no transactions")
        expected = {s.name for s in scenarios(True, 0)}
        missing = expected - {r["scenario"] for r in self.results if r["via"] == "pgbouncer"}
        if missing:
            failed.append(f"scenarios that did not run: {sorted(missing)}")
        if not any(r["via"] == "direct" for r in self.results):
            failed.append("no direct run")
        if not getattr(self, "statement_rows", 0):
            failed.append("pg_stat_statements returned nothing")
        failed += self.problems
        if failed:
            print("SMOKE FAILED:\n  " + "\n  ".join(failed))
            return 1
        print("smoke: every scenario ran, through PgBouncer and direct, without errors")
        return 0


def _mean(values):
    return sum(values) / len(values) if values else None


def _ms(value) -> str:
    return "-" if value is None else (f"{value:.1f}" if value < 1000 else f"{value:.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--namespace", default="bench")
    parser.add_argument("--cluster", default="shop")
    parser.add_argument("--kubeconfig", default=os.environ.get("SHOPDB_KUBECONFIG", LOCAL_KUBECONFIG))
    parser.add_argument("--install-operator", action="store_true", help="install the operator from this checkout first")
    parser.add_argument("--apply", nargs="?", const=str(PROFILE), metavar="PROFILE",
                        help=f"apply a cluster profile first (default {PROFILE.relative_to(REPO)}) with the local images")
    parser.add_argument("--release", action="store_true",
                        help="delete the cluster object afterwards (reclaimPolicy Retain keeps the data for the next run)")
    parser.add_argument("--smoke", action="store_true", help="tiny data, a few seconds per scenario; asserts it all works")
    parser.add_argument("--scale", type=float, default=1.0, help="data set size as a share of the design's 10x")
    parser.add_argument("--duration", type=int, help="seconds per run (default 60, smoke 4)")
    parser.add_argument("--warmup", type=float, help="seconds left out at the start of each run (default 10, smoke 0)")
    parser.add_argument("--think", type=float, default=5.0, help="mean think time of a mixed-scenario user, seconds")
    parser.add_argument("--protocol", choices=["auto", "simple", "extended", "prepared"], default="auto")
    parser.add_argument("--direct-max", type=int, default=300, help="most clients of a direct run")
    parser.add_argument("--direct-duration", type=int, help="seconds per direct run (default half of --duration)")
    parser.add_argument("--load-only", action="store_true", help="load (or check) the data set, run nothing")
    parser.add_argument("--only", type=lambda v: v.split(","), help="scenarios to run: mixed,search,order-rush,dashboards,direct")
    parser.add_argument("--out", type=Path, help="where logs and results go (default a new directory in /tmp)")
    args = parser.parse_args()
    args.duration = args.duration or (4 if args.smoke else 60)
    args.direct_duration = args.direct_duration or max(args.duration // 2, 3)
    args.warmup = args.warmup if args.warmup is not None else (0.0 if args.smoke else 10.0)
    if shutil.which("pgbench") is None:
        print("pgbench not found (Debian: postgresql-15; tests/bootstrap.sh installs it)", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))  # 2000 clients, their logs

    conftest, _, support = e2e()
    kubectl, images = conftest.Kubectl(args.kubeconfig), conftest.Images.from_env()
    if kubectl("get", "--raw", "/readyz", check=False).returncode != 0:
        print(f"no cluster answers at {args.kubeconfig}: bring it up (tests/cluster/localkube up)", file=sys.stderr)
        return 2
    if args.install_operator:
        # a CRD another run is deleting refuses new clusters until it is gone
        wait_for(lambda: not kubectl.json("get", "crd").get("items") or all(
            not c["metadata"].get("deletionTimestamp") for c in kubectl.json("get", "crd")["items"]
            if c["metadata"]["name"] == "shopdatabaseclusters.shopdb.io"), 600, "a CRD being deleted to be gone")
        support.install_operator(kubectl, images)
        log("operator installed from this checkout")
    if args.apply:
        apply_profile(kubectl, images, Path(args.apply).resolve(), args.namespace, args.cluster)
    out = args.out or Path(tempfile.mkdtemp(prefix=f"shopdb-bench-load-{datetime.now():%Y%m%d-%H%M%S}-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        wait_ready(kubectl, args.namespace, args.cluster, 900 if args.apply else 300)
        cluster = Cluster(kubectl, args.namespace, args.cluster)
        return Bench(cluster, args, out).main()
    finally:
        if args.release:
            release(kubectl, args.namespace, args.cluster)


if __name__ == "__main__":
    sys.exit(main())
