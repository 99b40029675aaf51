"""Health-check connections kept open between checks: one per instance of one cluster.

A new connection per check costs both sides a SCRAM exchange, and the server a backend
process (fork, catalog caches) every `failover.checkIntervalSeconds`; a kept connection
costs one short query. What a check reports must not change with it, so:

- The query on a kept connection is bounded on the client, not only by the server's
  statement_timeout (which a hung or cut-off server never enforces): its bytes must be
  acknowledged by the peer's TCP stack within `ack_within` (as the TCP handshake of a fresh
  check must be, else "Unreachable"), and its answer must arrive within `answer_within` (as a
  fresh connection's startup must, else ConnectionTimeout). Either way the connection is
  closed and the check reports what a fresh check would have.
- A kept connection that fails at once (its server restarted or stopped: the socket was
  closed, reset, or ended by the server) is closed, and the check starts over as a fresh
  one, so a stopped server is still reported ConnectionRefused (an immediate failover).
- A connection serves one target only: the same pod (uid), address, port and password;
  any change closes it and the next check connects anew. It also serves for MAX_AGE_SECONDS
  at most: what only a new connection proves (pg_hba.conf still admits the operator, the
  role's password in the server) is proven again that often. A pod being deleted is checked
  with a fresh connection, as before (a smart shutdown keeps its sessions, refuses new ones).
- Connections of instances that left the topology are closed at the next check, and all of
  a cluster's when its check daemon ends (the cluster deleted, the operator stopping).

Checks of one cluster run in parallel threads (one per instance): a connection is taken
out of the cache for a check and put back after it, so no two threads ever share one.
"""

from __future__ import annotations

import asyncio
import fcntl
from concurrent.futures import ThreadPoolExecutor
import hashlib
import select
import struct
import termios
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generator, NamedTuple

import psycopg
from psycopg import errors, pq

# The query of postgres.health(), sent through libpq directly so that the wait is bounded.
HEALTH_SQL = (
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, "
    "pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
    "(SELECT status FROM pg_stat_wal_receiver)"
)
MAX_AGE_SECONDS = 300


class Unreachable(psycopg.OperationalError):
    """The peer's TCP stack did not acknowledge the query in time (an address that went
    away, a cut network): what a fresh check's unanswered TCP handshake reports."""


@dataclass(frozen=True)
class Target:
    """What a connection was made for."""

    host: str
    port: int
    pod_uid: str
    password_digest: str  # a changed password (a rotated Secret) means a new connection

    @classmethod
    def of(cls, host: str, port: int, pod_uid: str, password: str) -> "Target":
        return cls(host, port, pod_uid, hashlib.sha256(password.encode()).hexdigest())


def close_quietly(conn: psycopg.Connection | None) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # noqa: BLE001 (closing a broken connection may complain; it is closed)
        pass


class Kept(NamedTuple):
    conn: psycopg.Connection
    born: float  # when it was made (InstanceConnections.clock)


class InstanceConnections:
    """One cluster's kept connections, by instance name. Thread-safe."""

    def __init__(self, max_age: float = MAX_AGE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, tuple[Target, Kept]] = {}
        self._closed = False
        self._pool: ThreadPoolExecutor | None = None
        self.max_age, self.clock = max_age, clock

    def take(self, instance: str, target: Target) -> Kept | None:
        """The kept connection for `target`, now the caller's alone; None when there is none
        (one made for another pod, address or password, or too old, is closed)."""
        with self._lock:
            entry = self._idle.pop(instance, None)
        if entry is None:
            return None
        kept_for, kept = entry
        if (kept_for != target or kept.conn.closed or kept.conn.pgconn.status != pq.ConnStatus.OK
                or self.clock() - kept.born >= self.max_age):
            close_quietly(kept.conn)
            return None
        return kept

    def keep(self, instance: str, target: Target, conn: psycopg.Connection, born: float | None = None) -> None:
        """Put a healthy, idle connection back for the next check of `instance`; `born`: when
        it was made (now when None: a new connection)."""
        kept = Kept(conn, self.clock() if born is None else born)
        with self._lock:
            closed = self._closed  # the cluster's daemon ended meanwhile: close it instead
            replaced = None if closed else self._idle.get(instance)
            if not closed:
                self._idle[instance] = (target, kept)
        if closed:
            close_quietly(conn)
        if replaced is not None and replaced[1].conn is not conn:
            close_quietly(replaced[1].conn)

    def drop(self, instance: str) -> None:
        with self._lock:
            entry = self._idle.pop(instance, None)
        if entry is not None:
            close_quietly(entry[1].conn)

    def retain(self, instances) -> None:
        """Close the connections of instances no longer in the topology."""
        keep = set(instances)
        with self._lock:
            gone = [self._idle.pop(name) for name in list(self._idle) if name not in keep]
        for _, kept in gone:
            close_quietly(kept.conn)

    def executor(self, workers: int) -> ThreadPoolExecutor | None:
        """The cluster's check threads, kept between checks like its connections (a thread
        started per instance per check cost more CPU than the check's SQL); None once closed.
        Checks of one cluster never overlap, so `workers` threads serve every check."""
        with self._lock:
            if self._closed:
                return None
            if self._pool is None or self._pool._max_workers < workers:
                old, self._pool = self._pool, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check")
                if old is not None:
                    old.shutdown(wait=False)
            return self._pool

    def close(self) -> None:
        """Close every connection and end the check threads; later keep()s close theirs at once."""
        with self._lock:
            self._closed = True
            entries, self._idle = list(self._idle.values()), {}
            pool, self._pool = self._pool, None
        for _, kept in entries:
            close_quietly(kept.conn)
        if pool is not None:
            pool.shutdown(wait=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._idle)

    def instances(self) -> list[str]:
        with self._lock:
            return sorted(self._idle)

    def sockets(self) -> list[int]:
        """The kept connections' sockets, to wait on between checks: a server that ends its
        session (killed, shutting down, its pod deleted) makes its socket readable at once."""
        with self._lock:
            kept = [k for _, k in self._idle.values()]
        return [k.conn.pgconn.socket for k in kept
                if not k.conn.closed and k.conn.pgconn.status == pq.ConnStatus.OK]


def unacknowledged_bytes(fd: int) -> int | None:
    """Bytes sent on a TCP socket and not yet acknowledged by the peer (Linux SIOCOUTQ, which
    counts unsent and unacknowledged data); None where the kernel cannot say."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0]
    except (OSError, AttributeError):
        return None


def bounded_row(conn: psycopg.Connection, sql: str, answer_within: float, ack_within: float,
                clock: Callable[[], float] = time.monotonic) -> tuple[str | None, ...]:
    """Run one single-row query (text values) on an idle autocommit connection, bounded:

    - Unreachable when, after `ack_within` seconds without an answer, the peer's TCP stack
      has not even acknowledged the query (a stopped server's kernel still does);
    - errors.ConnectionTimeout when no answer came within `answer_within` seconds;
    - psycopg.OperationalError when the connection fails (closed, reset);
    - the server's own error (e.g. QueryCanceled by statement_timeout) as psycopg's class.

    After any exception the connection is in an unknown state: close it."""
    exchange = _exchange(conn, sql, answer_within, ack_within, clock)
    poller = select.poll()
    try:
        fd, writing, left = next(exchange)
        while True:
            poller.register(fd, select.POLLIN | (select.POLLOUT if writing else 0))
            fd, writing, left = exchange.send(bool(poller.poll(max(1, int(left * 1000 + 0.999)))))
    except StopIteration as done:
        return done.value


async def bounded_row_async(conn: psycopg.Connection, sql: str, answer_within: float, ack_within: float,
                            clock: Callable[[], float] = time.monotonic) -> tuple[str | None, ...]:
    """bounded_row() on the running event loop: no thread, the socket waited on by the loop."""
    loop = asyncio.get_running_loop()
    exchange = _exchange(conn, sql, answer_within, ack_within, clock)
    try:
        fd, writing, left = next(exchange)
        while True:
            fd, writing, left = exchange.send(await _ready(loop, fd, writing, left))
    except StopIteration as done:
        return done.value


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, writing: bool, seconds: float) -> bool:
    """Whether `fd` became readable (or writable, while `writing`) within `seconds`."""
    ready = loop.create_future()

    def wake(value: bool) -> None:
        if not ready.done():
            ready.set_result(value)

    loop.add_reader(fd, wake, True)
    if writing:
        loop.add_writer(fd, wake, True)
    timer = loop.call_later(seconds, wake, False)
    try:
        return await ready
    finally:
        timer.cancel()
        loop.remove_reader(fd)
        if writing:
            loop.remove_writer(fd)


def _exchange(conn: psycopg.Connection, sql: str, answer_within: float, ack_within: float,
              clock: Callable[[], float]) -> Generator[tuple[int, bool, float], bool, tuple[str | None, ...]]:
    """bounded_row's protocol, for a driver that does the waiting: yields (socket, whether it
    waits to write too, seconds at most), is sent whether the socket became ready, and
    returns the row."""
    pgconn = conn.pgconn
    if pgconn.status != pq.ConnStatus.OK or pgconn.transaction_status != pq.TransactionStatus.IDLE:
        raise psycopg.OperationalError("the connection is not idle")
    started = clock()
    pgconn.nonblocking = 1
    pgconn.send_query(sql.encode())
    fd = pgconn.socket
    ack_checked = ack_within >= answer_within
    results: list[pq.PGresult] = []
    while True:
        sending = pgconn.flush() == 1
        limit = started + (answer_within if ack_checked else ack_within)
        left = limit - clock()
        if left <= 0:
            if not ack_checked:
                ack_checked = True
                if (unacknowledged_bytes(fd) or 0) > 0:
                    raise Unreachable(f"the query was not acknowledged within {ack_within:g} s")
                continue
            raise errors.ConnectionTimeout(f"no answer within {answer_within:g} s")
        if not (yield fd, sending, left):
            continue
        pgconn.consume_input()  # raises OperationalError when the connection failed
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                return _single_row(results)
            results.append(result)


def _single_row(results: list[pq.PGresult]) -> tuple[str | None, ...]:
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            message = (result.error_message or b"").decode(errors="replace").strip()
            try:
                cls = errors.lookup(sqlstate)
            except KeyError:
                cls = psycopg.DatabaseError
            raise cls(message)
    rows = [r for r in results if r.status == pq.ExecStatus.TUPLES_OK]
    if len(rows) != 1 or rows[0].ntuples != 1:
        raise psycopg.ProgrammingError("expected one row")
    row = rows[0]
    values = (row.get_value(0, i) for i in range(row.nfields))
    return tuple(None if v is None else bytes(v).decode() for v in values)
