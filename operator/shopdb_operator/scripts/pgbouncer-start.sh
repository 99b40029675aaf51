#!/bin/sh
# PgBouncer container entry point (POSIX sh: PgBouncer images may be alpine).
# Writes the auth file from the Secret's env into a private run dir, then becomes pgbouncer.
# Usage: pgbouncer-start.sh [pgbouncer.ini]   (default $PGBOUNCER_INI or /etc/pgbouncer/pgbouncer.ini)
set -eu

ini="${1:-${PGBOUNCER_INI:-/etc/pgbouncer/pgbouncer.ini}}"
run_dir="${PGBOUNCER_RUN_DIR:-/var/run/pgbouncer}"
: "${PGBOUNCER_APP_USER:?is required}" "${PGBOUNCER_APP_PASSWORD:?is required}"
: "${PGBOUNCER_ADMIN_USER:?is required}" "${PGBOUNCER_ADMIN_PASSWORD:?is required}"

# One userlist field: double quotes are doubled; a newline could not be represented.
field() {
    case "$1" in
        *'
'*) echo "pgbouncer-start: a user name or password contains a newline" >&2; exit 1 ;;
    esac
    printf '"%s"' "$(printf '%s' "$1" | sed 's/"/""/g')"
}

umask 077
mkdir -p "$run_dir"
{
    printf '%s %s\n' "$(field "$PGBOUNCER_APP_USER")" "$(field "$PGBOUNCER_APP_PASSWORD")"
    printf '%s %s\n' "$(field "$PGBOUNCER_ADMIN_USER")" "$(field "$PGBOUNCER_ADMIN_PASSWORD")"
} > "$run_dir/userlist.txt.tmp"
mv -f "$run_dir/userlist.txt.tmp" "$run_dir/userlist.txt"
exec pgbouncer "$ini"
