"""`shopdb-operator maintain ...`: the commands the maintenance CronJobs run.

    maintain partitions --schema S --table T --column C --premake N
                        [--retention-months M] [--today YYYY-MM-DD]
    maintain views --schema S --view V [--view V2 ...]

The connection comes from the standard libpq environment (PGHOST, PGPORT, PGDATABASE,
PGUSER, PGPASSWORD, PGCONNECT_TIMEOUT). `SHOPDB_TODAY` is accepted in place of --today
(the injectable clock). Exit status 0 on success; on failure 1 and one line on stderr
saying what failed and why.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import date, datetime, timezone

import psycopg

from .. import postgres
from .errors import MaintenanceError, first_line
from .partitions import PartitionSettings, maintain_partitions
from .views import ViewSettings, refresh_views

log = logging.getLogger("shopdb.maintain")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-01-31") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopdb-operator maintain", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    partitions = commands.add_parser("partitions", help="create monthly partitions ahead, drop expired ones")
    partitions.add_argument("--schema", default="public")
    partitions.add_argument("--table", required=True)
    partitions.add_argument("--column", required=True)
    partitions.add_argument("--premake", type=int, required=True, help="months kept ready after the current one")
    partitions.add_argument("--retention-months", type=int, default=None)
    partitions.add_argument("--today", type=_day, default=None, help="the date to act as (default: SHOPDB_TODAY, else today in UTC)")
    partitions.add_argument("--lock-timeout-ms", type=int, default=3000)
    partitions.add_argument("--attempts", type=int, default=5)

    views = commands.add_parser("views", help="refresh materialized views")
    views.add_argument("--schema", default="public")
    views.add_argument("--view", action="append", required=True, dest="views")
    views.add_argument("--statement-timeout-ms", type=int, default=20 * 60 * 1000,
                       help="per view; below the Job's 30 min deadline")
    views.add_argument("--lock-timeout-ms", type=int, default=5000)
    views.add_argument("--attempts", type=int, default=3)
    return parser


def _today(args: argparse.Namespace) -> date:
    if args.today is not None:
        return args.today
    if os.environ.get("SHOPDB_TODAY"):
        try:
            return date.fromisoformat(os.environ["SHOPDB_TODAY"])
        except ValueError:
            raise MaintenanceError(f"SHOPDB_TODAY={os.environ['SHOPDB_TODAY']!r} is not a date like 2026-01-31") from None
    return datetime.now(timezone.utc).date()


def _run(args: argparse.Namespace) -> None:
    target = f"{os.environ.get('PGUSER', '?')}@{os.environ.get('PGHOST', 'localhost')}:{os.environ.get('PGPORT', '5432')}/{os.environ.get('PGDATABASE', '?')}"
    if args.command == "partitions":
        if args.premake < 0:
            raise MaintenanceError("--premake must be 0 or more")
        if args.retention_months is not None and args.retention_months < 1:
            raise MaintenanceError("--retention-months must be 1 or more")
        today = _today(args)
        settings = PartitionSettings(
            schema=args.schema, table=args.table, column=args.column, premake=args.premake,
            retention_months=args.retention_months, lock_timeout_ms=args.lock_timeout_ms,
            attempts=args.attempts)
    else:
        settings = ViewSettings(
            schema=args.schema, views=tuple(args.views), statement_timeout_ms=args.statement_timeout_ms,
            lock_timeout_ms=args.lock_timeout_ms, attempts=args.attempts)
    try:
        # Statement timeouts are set per step by the commands themselves.
        conn = postgres.connect(application_name=os.environ.get("PGAPPNAME") or f"shopdb-maintain-{args.command}",
                                statement_timeout_ms=0)
    except psycopg.Error as error:
        raise MaintenanceError(f"cannot connect to {target}: {first_line(error)}") from error
    with conn:
        if args.command == "partitions":
            log.info("maintaining partitions of %s.%s as of %s", args.schema, args.table, today)
            maintain_partitions(conn, settings, today)
        else:
            refresh_views(conn, settings)


def main(argv: list[str]) -> int:
    """Run one maintenance command; the exit status for the Job."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        _run(args)
    except MaintenanceError as error:
        print(f"shopdb-operator maintain {args.command}: error: {error}", file=sys.stderr)
        return 1
    except psycopg.Error as error:
        print(f"shopdb-operator maintain {args.command}: error: {first_line(error)}", file=sys.stderr)
        return 1
    return 0
