"""The only code that talks to PostgreSQL (psycopg 3): connections, health, LSNs, promotion.

Every call is bounded: connections time out quickly and every statement runs under a
statement_timeout, so a hung server costs the caller seconds, never a stuck handler.
"""

from __future__ import annotations

import re
import select
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

Error = psycopg.Error  # what callers catch, without importing psycopg themselves

CONNECT_TIMEOUT_SECONDS = 5
STATEMENT_TIMEOUT_MS = 10_000


def connect(
    conninfo: str = "",
    *,
    connect_timeout: int = CONNECT_TIMEOUT_SECONDS,
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
    application_name: str = "shopdb-operator",
    autocommit: bool = True,
    **kwargs: Any,
) -> psycopg.Connection:
    """Connect with tight timeouts. Unset parameters come from the libpq env (PGHOST, ...).

    `statement_timeout_ms=0` disables the statement timeout (for maintenance commands that
    set their own per statement).
    """
    if statement_timeout_ms:
        # A startup option: PgBouncer refuses it, so connect to instances, not to PgBouncer.
        kwargs.setdefault("options", f"-c statement_timeout={int(statement_timeout_ms)}")
    return psycopg.connect(
        conninfo,
        connect_timeout=connect_timeout,
        application_name=application_name,
        autocommit=autocommit,
        **kwargs,
    )


def _scalar(conn: psycopg.Connection, query: str, params: tuple = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def is_in_recovery(conn: psycopg.Connection) -> bool:
    """True on a standby (replica), False on a writable primary."""
    return bool(_scalar(conn, "SELECT pg_is_in_recovery()"))


def current_lsn(conn: psycopg.Connection) -> str:
    """The primary's current WAL write position."""
    return _scalar(conn, "SELECT pg_current_wal_lsn()::text")


def received_lsn(conn: psycopg.Connection) -> str | None:
    """Last WAL position a standby received and flushed (None when it never streamed)."""
    return _scalar(conn, "SELECT pg_last_wal_receive_lsn()::text")


def replayed_lsn(conn: psycopg.Connection) -> str | None:
    """Last WAL position a standby replayed (visible to its readers)."""
    return _scalar(conn, "SELECT pg_last_wal_replay_lsn()::text")


def lsn_to_int(lsn: str) -> int:
    """'16/B374D848' -> a number, so LSNs compare and subtract in Python."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass(frozen=True)
class WalReceiver:
    status: str  # 'streaming', 'catchup', 'startup', ...
    sender_host: str | None
    sender_port: int | None
    slot_name: str | None
    latest_end_lsn: str | None


def wal_receiver(conn: psycopg.Connection) -> WalReceiver | None:
    """The standby's WAL receiver, or None when it is not running."""
    row = conn.execute(
        "SELECT status, sender_host, sender_port, slot_name, latest_end_lsn::text FROM pg_stat_wal_receiver"
    ).fetchone()
    return WalReceiver(*row) if row else None


def is_streaming(conn: psycopg.Connection) -> bool:
    receiver = wal_receiver(conn)
    return receiver is not None and receiver.status == "streaming"


def promote(conn: psycopg.Connection, wait_seconds: int = 60) -> bool:
    """Promote a standby and wait until it accepts writes. Needs superuser.

    Returns False when promotion did not finish within `wait_seconds`. The caller should
    then CHECKPOINT (see checkpoint()) before any former primary runs pg_rewind against it.
    """
    with conn.cursor() as cur:
        cur.execute(f"SET statement_timeout = {int(wait_seconds + 5) * 1000}")
        cur.execute("SELECT pg_promote(true, %s)", (int(wait_seconds),))
        row = cur.fetchone()
    return bool(row and row[0])


def checkpoint(conn: psycopg.Connection) -> None:
    """Force a checkpoint: after a promotion, it records the new timeline in pg_control."""
    conn.execute("CHECKPOINT")


def replication_slots(conn: psycopg.Connection) -> dict[str, bool]:
    """Physical slot name -> whether a walsender uses it now."""
    rows = conn.execute(
        "SELECT slot_name, active FROM pg_replication_slots WHERE slot_type = 'physical'"
    ).fetchall()
    return {name: bool(active) for name, active in rows}


def ensure_physical_slots(conn: psycopg.Connection, names: Iterable[str]) -> list[str]:
    """Create the missing physical slots (reserving WAL now); returns those created.

    Call it on a primary right after promoting it: slots are not replicated, and the other
    replicas stream with primary_slot_name set, so they wait until their slot exists.
    """
    existing = replication_slots(conn)
    created = []
    for name in names:
        if name not in existing:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (name,))
            created.append(name)
    return created


def drop_physical_slot(conn: psycopg.Connection, name: str) -> bool:
    """Drop an inactive slot (e.g. of a removed instance); False when absent or in use."""
    return bool(_scalar(
        conn,
        "SELECT count(pg_drop_replication_slot(slot_name)) > 0 FROM pg_replication_slots "
        "WHERE slot_name = %s AND NOT active",
        (name,),
    ))


# --- configuration ---------------------------------------------------------------------------

# What pg_file_settings says of a line it could not apply: a new value of a setting that
# needs a restart (valid: pg_settings.pending_restart then says so, in the same session), or
# a value the server refuses (its reason goes to the server log only).
NOT_APPLIED = "setting could not be applied"


def file_digests(conn: psycopg.Connection, paths: Iterable[str]) -> dict[str, str | None]:
    """The md5 of each file as the server reads it now (None: missing): whether the
    kubelet has put a ConfigMap's new content in place."""
    digests = {}
    for path in paths:
        digests[path] = _scalar(conn, "SELECT md5(pg_read_file(%s, 0, 1048576, true))", (path,))
    return digests


def configuration_errors(conn: psycopg.Connection) -> list[str]:
    """What the server would refuse in its configuration files as they are now, before or
    after a reload (both views read the files afresh): `file:line: name: why`."""
    rows = conn.execute(
        "SELECT sourcefile, sourceline, coalesce(name, ''), setting, error FROM pg_file_settings "
        "WHERE error IS NOT NULL "
        "UNION ALL SELECT 'pg_hba.conf', line_number, '', NULL, error FROM pg_hba_file_rules WHERE error IS NOT NULL"
    ).fetchall()
    waiting = set(pending_restart(conn))  # set by the pg_file_settings read just above
    errors = []
    for source, line, name, setting, error in rows:
        if error == NOT_APPLIED:
            if name in waiting:
                continue
            error = _why_refused(conn, name, setting)
        errors.append(f"{source}:{line}: {name + ': ' if name else ''}{error}")
    return errors


def _why_refused(conn: psycopg.Connection, name: str, setting: str) -> str:
    """The server's own words for a refused value, where a session may try it."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config(%s, %s, true)", (name, setting))
    except psycopg.Error as error:
        text = str(error).splitlines()[0] if str(error) else ""
        if "cannot be changed" not in text and "permission denied" not in text:
            return text
    return f"invalid value {setting!r}"


def configuration_load_time(conn: psycopg.Connection):
    return _scalar(conn, "SELECT pg_conf_load_time()")


def reload_configuration(conn: psycopg.Connection) -> None:
    """Ask the postmaster to re-read postgresql.conf and pg_hba.conf (it does so at once,
    and every session before its next statement)."""
    conn.execute("SELECT pg_reload_conf()")


def pending_restart(conn: psycopg.Connection) -> list[str]:
    """Settings whose file value differs from the running one until a restart."""
    return [r[0] for r in conn.execute("SELECT name FROM pg_settings WHERE pending_restart ORDER BY name")]


# --- failover ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Health:
    """One instance's state for failover decisions, from one query."""

    in_recovery: bool
    current_lsn: str | None  # a primary's write position
    received_lsn: str | None  # a standby's received and flushed position
    replayed_lsn: str | None
    receiver_status: str | None  # the standby's walreceiver, None when not running


def health(conn: psycopg.Connection) -> Health:
    row = conn.execute(
        "SELECT pg_is_in_recovery(), "
        "CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, "
        "pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
        "(SELECT status FROM pg_stat_wal_receiver)"
    ).fetchone()
    return Health(*row)


def pgbouncer_admin(host: str, port: int, user: str, password: str, connect_timeout: int = 2) -> psycopg.Connection:
    """A connection to PgBouncer's admin console (database `pgbouncer`). No startup options:
    PgBouncer refuses them; commands go through the simple query protocol."""
    return psycopg.connect(host=host, port=port, user=user, password=password, dbname="pgbouncer",
                           connect_timeout=connect_timeout, autocommit=True,
                           application_name="shopdb-operator", cursor_factory=psycopg.ClientCursor)


def pgbouncer_command(conn: psycopg.Connection, command: str, database: str) -> None:
    """Run an admin command (PAUSE, RESUME, KILL, RECONNECT) on one virtual database.

    `database` is an identifier we generated (spec pattern), quoted for the console."""
    conn.execute(f"{command} {_console_database(database)}", prepare=False)


def _console_database(database: str) -> str:
    if not database or not all(c.isalnum() or c == "_" for c in database):
        raise ValueError(f"not a PgBouncer database name: {database!r}")
    return f'"{database}"'


def pgbouncer_send_command(conn: psycopg.Connection, command: str, database: str) -> None:
    """Send an admin command without waiting for its answer (PAUSE answers only once no
    server connection of the database is in use)."""
    conn.pgconn.send_query(f"{command} {_console_database(database)}".encode())
    while conn.pgconn.flush():
        select.select([], [conn.pgconn.socket], [], 1)


def pgbouncer_wait_answer(conn: psycopg.Connection, seconds: float) -> bool:
    """Wait up to `seconds` for the answer to a command sent with pgbouncer_send_command;
    True when it came (an error answer raises)."""
    deadline = time.monotonic() + seconds
    pgconn = conn.pgconn
    while pgconn.is_busy():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        select.select([pgconn.socket], [], [], remaining)
        pgconn.consume_input()
    while (result := pgconn.get_result()) is not None:
        if result.status == psycopg.pq.ExecStatus.FATAL_ERROR:
            message = (result.error_message or b"").decode(errors="replace").strip()
            raise psycopg.OperationalError(message)
    return True


def pgbouncer_version(conn: psycopg.Connection) -> tuple[int, ...]:
    """(major, minor, patch) from SHOW VERSION ("PgBouncer 1.24.1")."""
    text = str(conn.execute("SHOW VERSION", prepare=False).fetchone()[0])
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise psycopg.OperationalError(f"unexpected PgBouncer version: {text[:80]!r}")
    return tuple(int(part or 0) for part in match.groups())


def pgbouncer_kill_linked_clients(conn: psycopg.Connection, database: str) -> int:
    """KILL_CLIENT (PgBouncer 1.24+) each client of `database` linked to a server connection,
    i.e. in the middle of a transaction in transaction pooling; returns how many. A client
    gone in between is not an error."""
    _console_database(database)
    cursor = conn.execute("SHOW CLIENTS", prepare=False)
    names = [c.name for c in cursor.description]
    killed = 0
    for row in (dict(zip(names, values)) for values in cursor.fetchall()):
        if row.get("database") != database or not row.get("link"):
            continue
        try:
            conn.execute(f"KILL_CLIENT {int(row['id'])}", prepare=False)
            killed += 1
        except psycopg.Error as err:
            if "client not found" not in str(err):
                raise
    return killed


def pgbouncer_show(conn: psycopg.Connection, what: str) -> list[dict[str, object]]:
    """SHOW CONFIG / SHOW DATABASES on the admin console, each row by column name."""
    if what not in ("CONFIG", "DATABASES"):
        raise ValueError(what)
    cursor = conn.execute(f"SHOW {what}", prepare=False)
    names = [c.name for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def archiver(conn: psycopg.Connection, error_file: str) -> dict:
    """The archiver's counters (pg_stat_archiver): last archived and last failed WAL and when,
    and what the archive command left in `error_file` on its last failure (None: no file)."""
    with conn.cursor() as cur:
        cur.execute("SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
                    "last_failed_wal, last_failed_time, pg_read_file(%s, 0, 262144, true) AS last_error "
                    "FROM pg_stat_archiver", (error_file,))
        names = [c.name for c in cur.description]
        return dict(zip(names, cur.fetchone()))
