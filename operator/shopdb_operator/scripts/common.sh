# Sourced by instance.sh, probe.sh and stop.sh: environment defaults and the helpers they share.
# Every path can be overridden by env so that the tests run the same scripts on loopback.

export PGDATA="${PGDATA:-/var/lib/postgresql/data/pgdata}"
SHOPDB_CONFIG_DIR="${SHOPDB_CONFIG_DIR:-/etc/shopdb/config}"
SHOPDB_RUN_DIR="${SHOPDB_RUN_DIR:-/var/run/postgresql}"
SHOPDB_INIT_SQL="${SHOPDB_INIT_SQL:-/etc/shopdb/init/init.sql}"
SHOPDB_PORT="${SHOPDB_PORT:-5432}"
SHOPDB_LISTEN="${SHOPDB_LISTEN:-*}"
SHOPDB_PRIMARY_PORT="${SHOPDB_PRIMARY_PORT:-5432}"
SHOPDB_REPLICATION_USER="${SHOPDB_REPLICATION_USER:-streaming_replica}"
SHOPDB_PRIMARY_WAIT_SECONDS="${SHOPDB_PRIMARY_WAIT_SECONDS:-120}"
SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The passfile lets libpq (walreceiver, pg_basebackup, pg_rewind) authenticate without
# putting passwords on command lines or in postgresql.auto.conf.
export PGPASSFILE="$SHOPDB_RUN_DIR/pgpass"
export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-5}"
# The primary lease (instance-agent): unset outside Kubernetes, where no lease fences a primary.
SHOPDB_LEASE_FILE="${SHOPDB_LEASE_FILE:-}"
SHOPDB_FENCE_FILE="$SHOPDB_RUN_DIR/fenced"

log() {
    printf '%s shopdb[%s]: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${SHOPDB_INSTANCE:-?}" "$*" >&2
}

die() {
    log "FATAL: $*"
    exit 1
}

require_env() {
    local name
    for name in "$@"; do
        [[ -n "${!name:-}" ]] || die "environment variable $name is required"
    done
}

# A SQL string literal (standard_conforming_strings is on: only quotes need doubling).
sql_literal() {
    local quote="'"
    printf "'%s'" "${1//$quote/$quote$quote}"
}

# One pgpass field: backslash and colon are escaped.
pgpass_field() {
    local value="${1//\\/\\\\}"
    printf '%s' "${value//:/\\:}"
}

# libpq connection string to the recorded primary as `user`.
# tcp_user_timeout bounds the TCP handshake too: the walreceiver ignores connect_timeout,
# and right after a failover the -rw address may still lead to the vanished old primary's
# pod for a moment (kube-proxy catching up), where a SYN waits for minutes otherwise.
# Keepalives end a connection whose peer vanished while this side waits for an answer
# (tcp_user_timeout covers unacknowledged data only): pg_rewind and pg_basebackup have no
# timeout of their own and would wait forever.
primary_conninfo() {
    printf 'host=%s port=%s user=%s dbname=%s connect_timeout=%s tcp_user_timeout=5000 keepalives=1 keepalives_idle=10 keepalives_interval=3 keepalives_count=3 application_name=%s' \
        "$SHOPDB_PRIMARY_HOST" "$SHOPDB_PRIMARY_PORT" "$1" "${2:-postgres}" \
        "$PGCONNECT_TIMEOUT" "${SHOPDB_INSTANCE:-shopdb}"
}

# pgbackrest.sh ROLE ARGS...: pgBackRest with that role's configuration and S3 keys.
pgbackrest_cmd() {
    bash "$SCRIPTS_DIR/pgbackrest.sh" "$@"
}

# psql with the options every script wants: no psqlrc, unaligned tuples, stop on error.
run_psql() {
    psql -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

# This instance's own server, through its Unix socket, as the postgres OS user (peer auth).
local_psql() {
    run_psql -h "$SHOPDB_RUN_DIR" -p "$SHOPDB_PORT" -U postgres -d postgres "$@"
}

# The recorded primary, as superuser (needs the passfile).
primary_psql() {
    run_psql "$(primary_conninfo postgres)" "$@"
}

# The recorded primary over the replication protocol, as the replication user.
primary_replication_psql() {
    run_psql "$(primary_conninfo "$SHOPDB_REPLICATION_USER" replication) replication=true" "$@"
}

# CLOCK_BOOTTIME in hundredths of a second: the clock the instance-agent writes the lease
# file with (containers of a pod share the kernel's clock).
now_hundredths() {
    local uptime
    read -r uptime _ < /proc/uptime
    echo $((10#${uptime/./}))
}

# True when the lease file says this instance may write now, and (with an argument) its
# last stored renewal was sent at or after that time (hundredths, as now_hundredths).
lease_valid() {
    local renewed until
    { read -r renewed until < "$SHOPDB_LEASE_FILE"; } 2> /dev/null || return 1
    [[ "$renewed" =~ ^[0-9]+$ && "$until" =~ ^[0-9]+$ ]] || return 1
    ((until > $(now_hundredths) && renewed >= ${1:-0}))
}
