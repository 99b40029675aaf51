"""Keep monthly RANGE partitions ready ahead of time, and drop those past the retention.

Unlike the design's create_monthly_partition(), every run works out what is missing from
what exists, so it is safe any day, any number of times, after missed runs and across
year boundaries. A DEFAULT partition catches rows outside every range, and rows it holds
for a month being created are moved into that month's partition.

Locks: a new partition is created standalone and ATTACHed, which needs only SHARE UPDATE
EXCLUSIVE on the parent. With a DEFAULT partition, an insert routed to DEFAULT before the
ATTACH would then fail its partition check, so the parent is also locked against writes
(SHARE ROW EXCLUSIVE; reads go on) for the few milliseconds of the ATTACH. Every step runs
with a short lock_timeout and is retried, so it never queues in front of the
application's inserts for long.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import psycopg
from psycopg import errors, sql

from .errors import MaintenanceError, first_line
from .months import MonthRange, add_months, month_start, months_to_keep_ready, retention_cutoff

log = logging.getLogger("shopdb.maintain.partitions")

_PARTITION_KEY_TYPES = {"date", "timestamp without time zone", "timestamp with time zone"}
_RANGE_BOUND = re.compile(r"^FOR VALUES FROM \((MINVALUE|'[^']*')\) TO \((MAXVALUE|'[^']*')\)$")
# Lock timeouts, deadlocks, a row that reached DEFAULT between our check and ATTACH, and
# a concurrent run that created the same partition: a retry plans again from scratch.
_RETRYABLE = (errors.LockNotAvailable, errors.DeadlockDetected, errors.CheckViolation,
              errors.SerializationFailure, errors.DuplicateTable)
# ON DELETE actions that would change referencing rows while rows move out of DEFAULT.
_UNSAFE_DELETE_ACTIONS = {"c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


@dataclass(frozen=True)
class PartitionSettings:
    schema: str
    table: str
    column: str
    premake: int
    retention_months: int | None = None
    lock_timeout_ms: int = 3000
    attempts: int = 5
    retry_delay_seconds: float = 1.0


@dataclass(frozen=True)
class ExistingPartition:
    schema: str
    name: str
    lower: date | None  # None: MINVALUE
    upper: date | None  # None: MAXVALUE
    is_default: bool

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def overlaps(self, month: MonthRange) -> bool:
        return ((self.lower is None or self.lower < month.upper)
                and (self.upper is None or month.lower < self.upper))


@dataclass
class PartitionReport:
    created: list[str] = field(default_factory=list)
    moved_rows: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _bound_day(literal: str, round_up: bool) -> date | None:
    if literal in ("MINVALUE", "MAXVALUE"):
        return None
    try:
        value = datetime.fromisoformat(literal.strip("'"))
    except ValueError as error:
        raise MaintenanceError(f"unexpected partition bound value {literal}") from error
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    day = value.date()
    # A bound inside a day rounds outwards, so that retention never drops newer rows.
    if round_up and value != datetime(day.year, day.month, day.day, tzinfo=value.tzinfo):
        day += timedelta(days=1)
    return day


def parse_bound(bound: str) -> tuple[date | None, date | None] | None:
    """(lower, upper) of a `FOR VALUES FROM (..) TO (..)` bound; None for DEFAULT."""
    if bound == "DEFAULT":
        return None
    match = _RANGE_BOUND.match(bound)
    if not match:
        raise MaintenanceError(f"unexpected partition bound {bound!r}")
    return _bound_day(match.group(1), round_up=False), _bound_day(match.group(2), round_up=True)


class PartitionMaintainer:
    def __init__(self, conn: psycopg.Connection, settings: PartitionSettings, today: date):
        self.conn = conn
        self.s = settings
        self.today = today
        self.parent = sql.Identifier(settings.schema, settings.table)
        self.column = sql.Identifier(settings.column)
        self.parent_oid: int | None = None  # set by _check_table()
        self.report = PartitionReport()

    @property
    def label(self) -> str:
        return f"{self.s.schema}.{self.s.table}"

    def run(self) -> PartitionReport:
        # Bounds are read and written as UTC day boundaries; months are UTC months.
        self.conn.execute("SET TimeZone = 'UTC'")
        self._check_table()
        failures: list[str] = []
        if not any(p.is_default for p in self._partitions()):
            self._with_retries("create the DEFAULT partition", self._create_default)
        for month in self._months():
            try:
                self._with_retries(f"create the partition for {month.lower:%Y-%m}",
                                   lambda m=month: self._ensure_month(m))
            except MaintenanceError as error:
                failures.append(str(error))
                log.error("%s", error)
        if failures:
            # Nothing is dropped after a failure: a later run retries the whole job.
            raise MaintenanceError("; ".join(failures))
        if self.s.retention_months is not None:
            cutoff = retention_cutoff(self.today, self.s.retention_months)
            for partition in self._partitions():
                if not partition.is_default and partition.upper is not None and partition.upper <= cutoff:
                    self._with_retries(f"drop {partition.qualified}",
                                       lambda p=partition: self._drop(p))
        log.info("%s: created %d partition(s), moved %d row(s) out of DEFAULT, dropped %d; "
                 "ready through %s", self.label, len(self.report.created),
                 sum(self.report.moved_rows.values()), len(self.report.dropped),
                 add_months(month_start(self.today), self.s.premake + 1) - timedelta(days=1))
        return self.report

    def _months(self) -> list[MonthRange]:
        uppers = [p.upper for p in self._partitions() if not p.is_default and p.upper is not None]
        cutoff = (retention_cutoff(self.today, self.s.retention_months)
                  if self.s.retention_months is not None else None)
        return months_to_keep_ready(self.today, self.s.premake,
                                    covered_until=max(uppers, default=None), not_before=cutoff)

    # --- inspection -------------------------------------------------------------------

    def _check_table(self) -> None:
        row = self.conn.execute(
            """
            SELECT c.oid, c.relkind, p.partstrat, p.partnatts, a.attname,
                   format_type(a.atttypid, a.atttypmod)
              FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace
              LEFT JOIN pg_partitioned_table p ON p.partrelid = c.oid
              LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = p.partattrs[0]
             WHERE n.nspname = %s AND c.relname = %s
            """,
            (self.s.schema, self.s.table),
        ).fetchone()
        if row is None:
            raise MaintenanceError(f"table {self.label} does not exist")
        self.parent_oid, relkind, strategy, key_count, key_column, key_type = row
        if relkind != "p":
            raise MaintenanceError(
                f"{self.label} is not a partitioned table; create it with "
                f"PARTITION BY RANGE ({self.s.column})")
        if strategy != "r" or key_count != 1 or key_column != self.s.column:
            raise MaintenanceError(
                f"{self.label} is not partitioned by RANGE on the single column {self.s.column}")
        if key_type not in _PARTITION_KEY_TYPES:
            raise MaintenanceError(
                f"{self.label}.{self.s.column} is {key_type}; monthly partitions need date or timestamp")

    def _partitions(self) -> list[ExistingPartition]:
        rows = self.conn.execute(
            """
            SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid)
              FROM pg_inherits i
              JOIN pg_class c ON c.oid = i.inhrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE i.inhparent = %s
            """,
            (self.parent_oid,),
        ).fetchall()
        partitions = []
        for schema, name, bound in rows:
            bounds = parse_bound(bound)
            lower, upper = bounds if bounds else (None, None)
            partitions.append(ExistingPartition(schema, name, lower, upper, bounds is None))
        return partitions

    # --- steps, each one transaction ------------------------------------------------------

    def _with_retries(self, what: str, step) -> None:
        for attempt in range(1, self.s.attempts + 1):
            try:
                with self.conn.transaction():
                    self.conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                        sql.Literal(f"{self.s.lock_timeout_ms}ms")))
                    step()
                return
            except _RETRYABLE as error:
                if attempt == self.s.attempts:
                    raise MaintenanceError(
                        f"{self.label}: could not {what} after {attempt} attempts: "
                        f"{first_line(error)}") from error
                log.warning("%s: %s (attempt %d of %d), retrying", self.label,
                            first_line(error), attempt, self.s.attempts)
                time.sleep(self.s.retry_delay_seconds * attempt)
            except psycopg.Error as error:
                raise MaintenanceError(f"{self.label}: could not {what}: {first_line(error)}") from error

    def _create_default(self) -> None:
        name = f"{self.s.table[:55]}_default"
        self.conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
            sql.Identifier(self.s.schema, name), self.parent))
        self.report.created.append(f"{self.s.schema}.{name}")
        log.info("created DEFAULT partition %s.%s", self.s.schema, name)

    def _ensure_month(self, month: MonthRange) -> None:
        partitions = self._partitions()
        overlapping = [p for p in partitions if not p.is_default and p.overlaps(month)]
        if any(p.lower == month.lower and p.upper == month.upper for p in overlapping):
            return
        if overlapping:
            message = (f"{self.label}: {month.lower:%Y-%m} overlaps existing partition(s) "
                       f"{', '.join(p.qualified for p in overlapping)}; left as it is")
            log.warning("%s", message)
            self.report.skipped.append(message)
            return
        name = sql.Identifier(self.s.schema, month.partition_name(self.s.table))
        qualified = f"{self.s.schema}.{month.partition_name(self.s.table)}"
        default = next((p for p in partitions if p.is_default), None)
        rows_in_default = default is not None and self._default_has_rows(default, month)
        if rows_in_default:
            self._move_out_of_default(default, month, name, qualified)
            return
        if default is not None:
            # Inserts already routed to DEFAULT would fail once the ATTACH narrows it.
            self.conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(self.parent))
        self._create_and_attach(name, month)
        self.report.created.append(qualified)
        log.info("created partition %s FOR VALUES FROM ('%s') TO ('%s')",
                 qualified, month.lower, month.upper)

    def _range_condition(self, month: MonthRange) -> sql.Composed:
        return sql.SQL("{col} >= {lo} AND {col} < {hi}").format(
            col=self.column, lo=sql.Literal(month.lower), hi=sql.Literal(month.upper))

    def _default_has_rows(self, default: ExistingPartition, month: MonthRange) -> bool:
        query = sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE {})").format(
            sql.Identifier(default.schema, default.name), self._range_condition(month))
        return bool(self.conn.execute(query).fetchone()[0])

    def _create_and_attach(self, name: sql.Identifier, month: MonthRange) -> None:
        # Indexes and foreign keys are created by ATTACH from the parent's definitions.
        self.conn.execute(sql.SQL(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
            "INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS)").format(name, self.parent))
        self.conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            self.parent, name, sql.Literal(month.lower), sql.Literal(month.upper)))

    def _move_out_of_default(self, default: ExistingPartition, month: MonthRange,
                             name: sql.Identifier, qualified: str) -> None:
        """Create the month's partition and move its rows out of DEFAULT, atomically."""
        self._refuse_unsafe_foreign_keys(default, month)
        # Inserts wait for this one transaction instead of landing in DEFAULT meanwhile.
        self.conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(self.parent))
        columns = self._insertable_columns()
        try:
            self.conn.execute(sql.SQL(
                "CREATE TEMP TABLE shopdb_moved_rows ON COMMIT DROP AS "
                "WITH moved AS (DELETE FROM {} WHERE {} RETURNING *) SELECT {} FROM moved").format(
                    sql.Identifier(default.schema, default.name), self._range_condition(month), columns))
            moved = self.conn.execute("SELECT count(*) FROM shopdb_moved_rows").fetchone()[0]
            self._create_and_attach(name, month)
            self.conn.execute(sql.SQL(
                "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM shopdb_moved_rows").format(
                    self.parent, columns, columns))
            # Deferred foreign keys are checked here, inside the transaction we may roll back.
            self.conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        except errors.ForeignKeyViolation as error:
            # PostgreSQL checks references per partition: a referenced row cannot move.
            raise MaintenanceError(
                f"{self.label}: cannot create {qualified}: DEFAULT partition {default.qualified} "
                f"holds rows for {month.lower:%Y-%m} that other tables reference "
                f"({first_line(error)}); move them by hand. Nothing was changed.") from error
        self.report.created.append(qualified)
        self.report.moved_rows[qualified] = moved
        log.info("created partition %s FOR VALUES FROM ('%s') TO ('%s') and moved %d row(s) "
                 "into it from %s", qualified, month.lower, month.upper, moved, default.qualified)

    def _refuse_unsafe_foreign_keys(self, default: ExistingPartition, month: MonthRange) -> None:
        rows = self.conn.execute(
            "SELECT conname, conrelid::regclass::text, confdeltype FROM pg_constraint "
            "WHERE contype = 'f' AND confrelid = %s AND conparentid = 0",
            (self.parent_oid,),
        ).fetchall()
        unsafe = [f"{name} on {table} (ON DELETE {_UNSAFE_DELETE_ACTIONS[action]})"
                  for name, table, action in rows if action in _UNSAFE_DELETE_ACTIONS]
        if unsafe:
            raise MaintenanceError(
                f"{self.label}: DEFAULT partition {default.qualified} holds rows for "
                f"{month.lower:%Y-%m}; moving them would fire {', '.join(unsafe)}; "
                "move them by hand. Nothing was changed.")

    def _insertable_columns(self) -> sql.Composed:
        names = [r[0] for r in self.conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            (self.parent_oid,),
        ).fetchall()]
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)

    def _drop(self, partition: ExistingPartition) -> None:
        table = sql.Identifier(partition.schema, partition.name)
        self.conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(self.parent, table))
        self.conn.execute(sql.SQL("DROP TABLE {}").format(table))
        self.report.dropped.append(partition.qualified)
        log.info("dropped partition %s (ended %s, before the retention of %d months)",
                 partition.qualified, partition.upper, self.s.retention_months)




def maintain_partitions(conn: psycopg.Connection, settings: PartitionSettings, today: date) -> PartitionReport:
    return PartitionMaintainer(conn, settings, today).run()
