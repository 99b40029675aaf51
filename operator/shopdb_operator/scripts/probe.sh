#!/bin/bash
# Kubernetes probes for the database container: probe.sh startup|ready|live (exit 0 = ok).
#   startup: the server accepts connections (crash recovery and replica catch-up are done),
#            and it is not a fenced primary waiting for the primary lease.
#   live:    the postmaster answers at all (also while starting or shutting down), so a long
#            recovery is never killed.
#   ready:   a primary accepts writes (and is not fenced: it lost the primary lease); a
#            replica streams and lags at most SHOPDB_READY_MAX_LAG_BYTES behind what its
#            primary last reported.
# The role is read from the server, not from SHOPDB_ROLE, which is stale after a promotion.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export PGCONNECT_TIMEOUT="${SHOPDB_PROBE_TIMEOUT:-3}"
export PGOPTIONS="-c statement_timeout=${PGCONNECT_TIMEOUT}s"

is_ready_answer() {
    pg_isready -q -h "$SHOPDB_RUN_DIR" -p "$SHOPDB_PORT" -t "$PGCONNECT_TIMEOUT"
}

# A primary that lost the primary lease says so (fence.sh or the instance-agent wrote why),
# also while it waits to start again: only the startup probe runs then.
fenced() {
    [[ -s "$SHOPDB_FENCE_FILE" ]] || return 1
    echo "fenced: $(head -c 300 "$SHOPDB_FENCE_FILE")"
}

ready() {
    local max_lag="${SHOPDB_READY_MAX_LAG_BYTES:-16777216}" verdict
    fenced && return 1
    [[ "$max_lag" =~ ^[0-9]+$ ]] || { echo "SHOPDB_READY_MAX_LAG_BYTES is not a number"; return 1; }
    verdict=$(local_psql -c "
        SELECT CASE
          WHEN NOT pg_is_in_recovery() THEN
            CASE WHEN current_setting('transaction_read_only') = 'on'
                 THEN 'primary is read-only (fenced)' ELSE 'ok' END
          WHEN w.status IS DISTINCT FROM 'streaming' THEN
            'replica is not streaming (wal receiver: ' || coalesce(w.status, 'not running') || ')'
          WHEN pg_wal_lsn_diff(w.latest_end_lsn, pg_last_wal_replay_lsn()) > $max_lag THEN
            'replica lags ' || pg_wal_lsn_diff(w.latest_end_lsn, pg_last_wal_replay_lsn()) || ' bytes'
          ELSE 'ok' END
        FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS w ON true" 2>&1)
    [[ "$verdict" == ok ]] && return 0
    echo "not ready: $verdict"
    return 1
}

case "${1:-}" in
    startup) fenced && exit 1; is_ready_answer ;;
    live)
        is_ready_answer
        # 1 = the server answers but rejects connections (starting up, shutting down).
        [[ $? -le 1 ]] ;;
    ready) ready ;;
    *) echo "usage: probe.sh startup|ready|live" >&2; exit 2 ;;
esac
