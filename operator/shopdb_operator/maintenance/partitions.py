"""Keep monthly RANGE partitions ready ahead of time, and drop those past the retention.

Unlike the design's create_monthly_partition(), every run works out what is missing from
what exists, so it is safe any day, any number of times, after missed runs and across
year boundaries. A DEFAULT partition catches rows outside every range, and rows it holds
for a month being created are moved into that month's partition, with the rows of other
tables that reference them (see _move_out_of_default()).

Locks: a new partition is created standalone and ATTACHed, which needs only SHARE UPDATE
EXCLUSIVE on the parent. With a DEFAULT partition, an insert routed to DEFAULT before the
ATTACH would then fail its partition check, so the parent is also locked against writes
(SHARE ROW EXCLUSIVE; reads go on) for the few milliseconds of the ATTACH; a move locks it
for the one transaction that moves the rows. The ATTACH also locks the tables referencing
the parent, so those are locked up front without waiting while holding another lock
(_lock_for_attach()): an application transaction is never made a deadlock victim. Every
step runs with a short lock_timeout and is retried, so it never queues in front of the
application's inserts for long. Runs on the same table take turns (a session advisory
lock): two at once would each hold what the other's ATTACH waits for, and deadlock.

One step failing (a month whose rows cannot move) does not stop the others: every month,
the retention and the DEFAULT check still run, and the run fails at the end, saying why.
"""

from __future__ import annotations

import itertools
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
# ON DELETE actions that change referencing rows: a move out of DEFAULT refuses them, lest
# a referencing row it did not take along be changed (NO ACTION would fail instead).
_UNSAFE_DELETE_ACTIONS = {"c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
# pg_advisory_lock(_RUN_LOCK_SPACE, table oid) is held by a run for its whole duration.
_RUN_LOCK_SPACE = 0x53485044  # "SHPD"
# Row triggers fire on a move's delete and re-insert: pg_trigger.tgtype INSERT | DELETE.
_INSERT_OR_DELETE = 4 | 8


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
    # How long a run waits for another run on the same table to finish, then gives up.
    run_lock_wait_seconds: float = 600.0
    # DEFAULT's rows are counted up to this many (the count stays cheap on a big table).
    default_rows_limit: int = 10_000


@dataclass(frozen=True)
class ExistingPartition:
    schema: str
    name: str
    lower: date | None  # None: MINVALUE
    upper: date | None  # None: MAXVALUE
    is_default: bool
    oid: int = 0

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def overlaps(self, month: MonthRange) -> bool:
        return ((self.lower is None or self.lower < month.upper)
                and (self.upper is None or month.lower < self.upper))


@dataclass(frozen=True)
class ForeignKey:
    """A foreign key as declared (pg_constraint's top row, not the clones partitions carry)."""
    name: str
    schema: str  # of the referencing table
    table: str
    table_oid: int
    partitioned: bool  # the referencing table
    columns: tuple[str, ...]
    referenced: tuple[str, ...]
    on_delete: str  # pg_constraint.confdeltype
    deferrable: bool

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"

    def describe(self) -> str:
        return f"{self.name} on {self.qualified_table}"


@dataclass
class PartitionReport:
    created: list[str] = field(default_factory=list)
    moved_rows: dict[str, int] = field(default_factory=dict)
    moved_references: dict[str, int] = field(default_factory=dict)  # referencing table: rows
    dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    default_rows: int | None = None  # left in DEFAULT at the end (at most default_rows_limit)


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
        self._lock_run()
        try:
            return self._run_steps()
        finally:
            self._unlock_run()

    def _run_steps(self) -> PartitionReport:
        failures: list[str] = []

        def attempt(what: str, step) -> None:
            try:
                self._with_retries(what, step)
            except MaintenanceError as error:
                failures.append(str(error))
                log.error("%s", error)

        if not any(p.is_default for p in self._partitions()):
            attempt("create the DEFAULT partition", self._create_default)
        for month in self._months():
            attempt(f"create the partition for {month.lower:%Y-%m}", lambda m=month: self._ensure_month(m))
        if self.s.retention_months is not None:
            # Safe after a failed month: months before the cutoff are never created nor moved.
            cutoff = retention_cutoff(self.today, self.s.retention_months)
            for partition in self._partitions():
                if not partition.is_default and partition.upper is not None and partition.upper <= cutoff:
                    attempt(f"drop {partition.qualified}", lambda p=partition: self._drop(p))
        log.info("%s: created %d partition(s), moved %d row(s) out of DEFAULT, dropped %d; "
                 "ready through %s", self.label, len(self.report.created),
                 sum(self.report.moved_rows.values()), len(self.report.dropped),
                 add_months(month_start(self.today), self.s.premake + 1) - timedelta(days=1))
        self._check_default_rows()
        if failures:
            raise MaintenanceError("; ".join(failures))
        return self.report

    # --- one run at a time ----------------------------------------------------------------

    def _run_lock_key(self) -> tuple[int, int]:
        # pg_advisory_lock(int4, int4): the oid (unsigned) as a signed 32-bit integer.
        oid = self.parent_oid
        return _RUN_LOCK_SPACE, oid if oid < 2 ** 31 else oid - 2 ** 32

    def _lock_run(self) -> None:
        """Wait for another run on this table to finish (a CronJob run overlapping a run by
        hand); it then finds done what that one did. A bounded wait: a run stuck for longer
        is worth an error rather than a queue of Jobs."""
        wait_ms = max(1, int(self.s.run_lock_wait_seconds * 1000))
        try:
            with self.conn.transaction():
                # A session lock: it outlives this transaction, until _unlock_run() or disconnect.
                self.conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{wait_ms}ms")))
                self.conn.execute("SELECT pg_advisory_lock(%s, %s)", self._run_lock_key())
        except errors.LockNotAvailable as error:
            raise MaintenanceError(
                f"{self.label}: another run of maintain partitions on it{self._run_lock_holder()} "
                f"did not finish within {self.s.run_lock_wait_seconds:g}s; this run changed nothing") from error

    def _run_lock_holder(self) -> str:
        try:
            row = self.conn.execute(
                "SELECT l.pid, a.application_name FROM pg_locks l "
                "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid "
                "AND l.objid = %s::oid AND l.objsubid = 2 "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (_RUN_LOCK_SPACE, self.parent_oid)).fetchone()
        except psycopg.Error:
            return ""
        return f" (pid {row[0]}, {row[1] or 'no application_name'})" if row else ""

    def _unlock_run(self) -> None:
        try:
            self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", self._run_lock_key())
        except psycopg.Error:
            pass  # a lost connection released it

    def _months(self) -> list[MonthRange]:
        existing = [p for p in self._partitions() if not p.is_default]
        uppers = [p.upper for p in existing if p.upper is not None]
        cutoff = (retention_cutoff(self.today, self.s.retention_months)
                  if self.s.retention_months is not None else None)
        months = months_to_keep_ready(self.today, self.s.premake,
                                      covered_until=max(uppers, default=None), not_before=cutoff)
        return self._holes(existing, months[0].lower, cutoff) + months

    @staticmethod
    def _holes(existing: list[ExistingPartition], until: date, not_before: date | None) -> list[MonthRange]:
        """Months between existing partitions that none covers: a month whose move failed
        while later ones were made. Retried every run, they never stay a silent gap."""
        lowers = [p.lower for p in existing if p.lower is not None]
        month = month_start(max(min(lowers, default=until), not_before or date.min))
        holes = []
        while month < until:
            candidate = MonthRange(month, add_months(month, 1))
            if not any(p.overlaps(candidate) for p in existing):
                holes.append(candidate)
            month = candidate.upper
        return holes

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
            SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid), c.oid
              FROM pg_inherits i
              JOIN pg_class c ON c.oid = i.inhrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE i.inhparent = %s
            """,
            (self.parent_oid,),
        ).fetchall()
        partitions = []
        for schema, name, bound, oid in rows:
            bounds = parse_bound(bound)
            lower, upper = bounds if bounds else (None, None)
            partitions.append(ExistingPartition(schema, name, lower, upper, bounds is None, oid))
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
            self._lock_for_attach("SHARE ROW EXCLUSIVE", self._foreign_keys_to(self.parent_oid))
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

    def _lock_for_attach(self, parent_mode: str, references: list[ForeignKey]) -> None:
        """Lock the parent, and the tables whose foreign keys reference it: the ATTACH takes
        SHARE ROW EXCLUSIVE on them (for the new partition's triggers), and waiting for that
        while holding the parent deadlocks with an application transaction holding one of
        them and waiting for the parent (an INSERT INTO order_items with a CTE inserting the
        order locks order_items first) - and the deadlock detector may pick the application.
        So only the first lock is waited for, the others are tried (NOWAIT); when one is held,
        what was taken is released and the next round waits for another table first."""
        tables = [sql.SQL("{} IN {} MODE").format(self.parent, sql.SQL(parent_mode))]
        tables += [sql.SQL("{} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(schema, table))
                   for schema, table in dict.fromkeys((fk.schema, fk.table) for fk in references
                                                      if fk.table_oid != self.parent_oid)]
        deadline = time.monotonic() + self.s.lock_timeout_ms / 1000
        for first in itertools.cycle(range(len(tables))):
            order = tables[first:] + tables[:first]
            try:
                with self.conn.transaction():  # a savepoint: rolling it back releases its locks
                    self.conn.execute(sql.SQL("LOCK TABLE {}").format(order[0]))
                    for table in order[1:]:
                        self.conn.execute(sql.SQL("LOCK TABLE {} NOWAIT").format(table))
                return
            except errors.LockNotAvailable:
                if time.monotonic() >= deadline:
                    raise

    def _create_and_attach(self, name: sql.Identifier, month: MonthRange) -> None:
        # Indexes and foreign keys are created by ATTACH from the parent's definitions.
        self.conn.execute(sql.SQL(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
            "INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS)").format(name, self.parent))
        self.conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            self.parent, name, sql.Literal(month.lower), sql.Literal(month.upper)))

    def _move_out_of_default(self, default: ExistingPartition, month: MonthRange,
                             name: sql.Identifier, qualified: str) -> None:
        """Create the month's partition and move its rows out of DEFAULT, in one transaction.

        PostgreSQL checks a reference to a partitioned table in the partition the referenced
        row was deleted from (ONLY the DEFAULT partition), even when the check is deferred to
        commit: a referenced row cannot move while its references stay. So the referencing
        rows (order_items of the orders) move along: taken out first, put back last, unchanged
        (same ids), and no check ever sees a reference without its row, whatever the foreign
        key's deferrability. Rows referencing *those* rows stay: their foreign keys are
        deferred and checked at the end, when the rows they reference are back in the same
        table; one that is not DEFERRABLE fails the move, naming itself and the fix.
        """
        references = self._foreign_keys_to(self.parent_oid)
        onward = {fk.table_oid: self._foreign_keys_to(fk.table_oid)
                  for fk in references if fk.table_oid != self.parent_oid}
        self._refuse_unsafe_moves(default, month, references, onward)
        # Inserts wait for this one transaction instead of landing in DEFAULT meanwhile.
        self._lock_for_attach("ACCESS EXCLUSIVE", references)
        locked = time.monotonic()
        self.conn.execute("SET CONSTRAINTS ALL DEFERRED")
        source = sql.Identifier(default.schema, default.name)
        try:
            taken = [(fk, self._take_referencing_rows(fk, source, month, f"shopdb_moved_refs_{i}"))
                     for i, fk in enumerate(references)]
            columns = self._insertable_columns(self.parent_oid)
            moved = self._take(source, self._range_condition(month), "shopdb_moved_rows", columns)
            self._create_and_attach(name, month)
            self._put_back(self.parent, "shopdb_moved_rows", columns)
            for fk, (stash, stash_columns, count) in taken:
                if count:
                    self._put_back(sql.Identifier(fk.schema, fk.table), stash, stash_columns)
            # Deferred foreign keys are checked here, inside the transaction we may roll back.
            self.conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        except errors.ForeignKeyViolation as error:
            raise MaintenanceError(self._violation_message(error, default, month, qualified, onward)) from error
        held_ms = (time.monotonic() - locked) * 1000
        self.report.created.append(qualified)
        self.report.moved_rows[qualified] = moved
        along = []
        for fk, (_, _, count) in taken:
            self.report.moved_references[fk.qualified_table] = (
                self.report.moved_references.get(fk.qualified_table, 0) + count)
            along.append(f"{count} of {fk.qualified_table}")
        log.info("created partition %s FOR VALUES FROM ('%s') TO ('%s') and moved %d row(s) "
                 "into it from %s%s; %s locked for %.0f ms", qualified, month.lower, month.upper, moved,
                 default.qualified, f" with their referencing rows ({', '.join(along)})" if along else "",
                 self.label, held_ms)

    def _take(self, table: sql.Composable, condition: sql.Composable, stash: str,
              columns: sql.Composed) -> int:
        """Delete rows into a temporary table dropped at commit; how many."""
        self.conn.execute(sql.SQL(
            "CREATE TEMP TABLE {} ON COMMIT DROP AS "
            "WITH moved AS (DELETE FROM {} WHERE {} RETURNING *) SELECT {} FROM moved").format(
                sql.Identifier(stash), table, condition, columns))
        return self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(stash))).fetchone()[0]

    def _put_back(self, table: sql.Composable, stash: str, columns: sql.Composed) -> None:
        # Same values, same ids: identity columns keep theirs, generated ones are recomputed.
        self.conn.execute(sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}").format(
            table, columns, columns, sql.Identifier(stash)))

    def _take_referencing_rows(self, fk: ForeignKey, source: sql.Identifier, month: MonthRange,
                               stash: str) -> tuple[str, sql.Composed, int]:
        # A plain table's inheritance children are not covered by its foreign key: ONLY.
        table = sql.Identifier(fk.schema, fk.table)
        condition = sql.SQL("({}) IN (SELECT {} FROM {} WHERE {})").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in fk.columns),
            sql.SQL(", ").join(sql.Identifier(c) for c in fk.referenced),
            source, self._range_condition(month))
        columns = self._insertable_columns(fk.table_oid)
        count = self._take(table if fk.partitioned else sql.SQL("ONLY {}").format(table),
                           condition, stash, columns)
        return stash, columns, count

    def _foreign_keys_to(self, table_oid: int) -> list[ForeignKey]:
        rows = self.conn.execute(
            """
            SELECT c.conname, n.nspname, r.relname, c.conrelid, r.relkind = 'p',
                   ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(num, pos)
                           JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num
                          ORDER BY k.pos),
                   ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(num, pos)
                           JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num
                          ORDER BY k.pos),
                   c.confdeltype, c.condeferrable
              FROM pg_constraint c
              JOIN pg_class r ON r.oid = c.conrelid
              JOIN pg_namespace n ON n.oid = r.relnamespace
             WHERE c.contype = 'f' AND c.confrelid = %s AND c.conparentid = 0
             ORDER BY n.nspname, r.relname, c.conname
            """,
            (table_oid,),
        ).fetchall()
        return [ForeignKey(name, schema, table, oid, partitioned, tuple(columns), tuple(referenced),
                           on_delete, deferrable)
                for name, schema, table, oid, partitioned, columns, referenced, on_delete, deferrable in rows]

    def _refuse_unsafe_moves(self, default: ExistingPartition, month: MonthRange,
                             references: list[ForeignKey], onward: dict[int, list[ForeignKey]]) -> None:
        """Before any lock: what a move by delete and re-insert would change besides placement."""
        problems = [f"{fk.describe()} references {self.label} itself"
                    for fk in references if fk.table_oid == self.parent_oid]
        problems += [f"{fk.describe()} is ON DELETE {_UNSAFE_DELETE_ACTIONS[fk.on_delete]}"
                     for fk in [*references, *(k for keys in onward.values() for k in keys)]
                     if fk.on_delete in _UNSAFE_DELETE_ACTIONS]
        triggers = self._insert_or_delete_triggers([self.parent_oid, default.oid], list(onward))
        if triggers:
            problems.append(f"trigger(s) {', '.join(triggers)} would fire on the delete and re-insert")
        if problems:
            raise MaintenanceError(
                f"{self.label}: DEFAULT partition {default.qualified} holds rows for "
                f"{month.lower:%Y-%m}; moving them (a delete and re-insert) is refused: "
                f"{'; '.join(problems)}; move them by hand. Nothing was changed.")

    def _insert_or_delete_triggers(self, tables: list[int], trees: list[int]) -> list[str]:
        """User triggers (those firing outside replication) on `tables`, and on `trees` with
        their partitions: a move's rows come from anywhere in a referencing table."""
        rows = self.conn.execute(
            "SELECT t.tgname, t.tgrelid::regclass::text FROM pg_trigger t "
            "WHERE NOT t.tgisinternal AND t.tgenabled IN ('O', 'A') AND t.tgtype & %s <> 0 "
            "AND (t.tgrelid = ANY(%s::oid[]) "  # pg_partition_tree() of a plain table is empty
            "     OR t.tgrelid IN (SELECT relid FROM unnest(%s::oid[]) r, pg_partition_tree(r))) "
            "ORDER BY 2, 1",
            (_INSERT_OR_DELETE, [*tables, *trees], trees),
        ).fetchall()
        return [f"{name} on {table}" for name, table in rows]

    def _violation_message(self, error: errors.ForeignKeyViolation, default: ExistingPartition,
                           month: MonthRange, qualified: str, onward: dict[int, list[ForeignKey]]) -> str:
        diag = error.diag
        fk = next((k for keys in onward.values() for k in keys
                   if (k.schema, k.table, k.name) == (diag.schema_name, diag.table_name, diag.constraint_name)),
                  None)
        prefix = (f"{self.label}: cannot create {qualified}: DEFAULT partition {default.qualified} holds "
                  f"rows for {month.lower:%Y-%m}")
        if fk is None:
            return f"{prefix} that cannot move ({first_line(error)}); move them by hand. Nothing was changed."
        table = sql.Identifier(fk.schema, fk.table).as_string(self.conn)
        constraint = sql.Identifier(fk.name).as_string(self.conn)
        if fk.on_delete == "r":
            fix = "ON DELETE RESTRICT is never deferred: make it NO ACTION DEFERRABLE (drop it and add it again)"
        elif not fk.deferrable:
            fix = (f"it is not DEFERRABLE: run ALTER TABLE {table} ALTER CONSTRAINT {constraint} "
                   f"DEFERRABLE (INITIALLY IMMEDIATE, as now, for everything else)")
        else:
            fix = first_line(error)
        return (f"{prefix}, whose referencing rows move with them and are referenced in turn through "
                f"foreign key {fk.describe()}; {fix}; the next run then moves them. Nothing was changed.")

    def _insertable_columns(self, table_oid: int) -> sql.Composed:
        names = [r[0] for r in self.conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            (table_oid,),
        ).fetchall()]
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)

    def _drop(self, partition: ExistingPartition) -> None:
        table = sql.Identifier(partition.schema, partition.name)
        self.conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(self.parent, table))
        self.conn.execute(sql.SQL("DROP TABLE {}").format(table))
        self.report.dropped.append(partition.qualified)
        log.info("dropped partition %s (ended %s, before the retention of %d months)",
                 partition.qualified, partition.upper, self.s.retention_months)

    def _check_default_rows(self) -> None:
        """Rows still in DEFAULT belong to no partition: inserts there work, but they are
        slower to read and heavier to move later, so the operator should show them."""
        def count() -> None:
            found = default_partition_rows(self.conn, self.s.schema, self.s.table, self.s.default_rows_limit)
            if found is None:
                return
            name, rows = found
            self.report.default_rows = rows
            if rows:
                log.warning("%s: DEFAULT partition %s still holds %s%d row(s) of months without a "
                            "partition (beyond the premade months, before the retention cutoff, or "
                            "failed above)", self.label, name,
                            "at least " if rows >= self.s.default_rows_limit else "", rows)
        try:
            self._with_retries("count the rows in DEFAULT", count)
        except MaintenanceError as error:
            log.warning("%s", error)


def default_partition_rows(conn: psycopg.Connection, schema: str, table: str,
                           limit: int = 10_000) -> tuple[str, int] | None:
    """The DEFAULT partition of schema.table and how many rows it holds, counted up to
    `limit` (so `limit` means "limit or more", and a big DEFAULT costs no full scan); None
    when the table has no DEFAULT partition (or is no partitioned table)."""
    row = conn.execute(
        """
        SELECT dn.nspname, d.relname
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_partitioned_table p ON p.partrelid = c.oid
          JOIN pg_class d ON d.oid = p.partdefid
          JOIN pg_namespace dn ON dn.oid = d.relnamespace
         WHERE n.nspname = %s AND c.relname = %s
        """,
        (schema, table),
    ).fetchone()
    if row is None:
        return None
    rows = conn.execute(sql.SQL("SELECT count(*) FROM (SELECT FROM {} LIMIT %s) AS bounded").format(
        sql.Identifier(*row)), (limit,)).fetchone()[0]
    return f"{row[0]}.{row[1]}", rows


def maintain_partitions(conn: psycopg.Connection, settings: PartitionSettings, today: date) -> PartitionReport:
    return PartitionMaintainer(conn, settings, today).run()
