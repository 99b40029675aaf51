"""Refresh materialized views, one at a time, without blocking their readers when possible.

REFRESH ... CONCURRENTLY needs a unique index on plain columns (no expression, no WHERE)
and a populated view; otherwise the view is refreshed plainly (readers wait) with a
warning saying why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import psycopg
from psycopg import errors, sql

from .errors import MaintenanceError, first_line

log = logging.getLogger("shopdb.maintain.views")

_RETRYABLE = (errors.LockNotAvailable, errors.DeadlockDetected)


@dataclass(frozen=True)
class ViewSettings:
    schema: str
    views: tuple[str, ...]
    statement_timeout_ms: int = 20 * 60 * 1000
    lock_timeout_ms: int = 5000
    attempts: int = 3
    retry_delay_seconds: float = 2.0


def _can_refresh_concurrently(conn: psycopg.Connection, schema: str, view: str) -> tuple[bool, str]:
    row = conn.execute(
        """
        SELECT c.relkind, c.relispopulated,
               EXISTS (SELECT FROM pg_index i
                        WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
                          AND i.indpred IS NULL AND i.indexprs IS NULL)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relname = %s
        """,
        (schema, view),
    ).fetchone()
    if row is None:
        raise MaintenanceError(f"materialized view {schema}.{view} does not exist")
    kind, populated, has_unique_index = row
    if kind != "m":
        raise MaintenanceError(f"{schema}.{view} is not a materialized view")
    if not has_unique_index:
        return False, "it has no unique index on plain columns"
    if not populated:
        return False, "it was never populated"
    return True, ""


def refresh_view(conn: psycopg.Connection, settings: ViewSettings, view: str) -> bool:
    """Refresh one view; True when it was refreshed concurrently."""
    label = f"{settings.schema}.{view}"
    concurrently, reason = _can_refresh_concurrently(conn, settings.schema, view)
    if not concurrently:
        log.warning("refreshing %s without CONCURRENTLY (readers wait): %s", label, reason)
    statement = sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(
        sql.SQL("CONCURRENTLY ") if concurrently else sql.SQL(""),
        sql.Identifier(settings.schema, view))
    for attempt in range(1, settings.attempts + 1):
        started = time.monotonic()
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{settings.lock_timeout_ms}ms")))
                conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
                    sql.Literal(f"{settings.statement_timeout_ms}ms")))
                conn.execute(statement)
            log.info("refreshed %s%s in %.1fs", label, " concurrently" if concurrently else "",
                     time.monotonic() - started)
            return concurrently
        except _RETRYABLE as error:
            if attempt == settings.attempts:
                raise MaintenanceError(f"could not refresh {label} after {attempt} attempts: "
                                       f"{first_line(error)}") from error
            log.warning("refreshing %s: %s (attempt %d of %d), retrying", label,
                        first_line(error), attempt, settings.attempts)
            time.sleep(settings.retry_delay_seconds * attempt)
        except errors.QueryCanceled as error:
            raise MaintenanceError(f"refreshing {label} took longer than the statement timeout "
                                   f"({settings.statement_timeout_ms} ms); the old contents stay") from error
        except psycopg.Error as error:
            raise MaintenanceError(f"could not refresh {label}: {first_line(error)}") from error
    return concurrently


def refresh_views(conn: psycopg.Connection, settings: ViewSettings) -> None:
    """Refresh every view in turn; a failed view does not stop the others, but fails the run."""
    failures = []
    for view in settings.views:
        try:
            refresh_view(conn, settings, view)
        except MaintenanceError as error:
            log.error("%s", error)
            failures.append(str(error))
    if failures:
        raise MaintenanceError("; ".join(failures))

