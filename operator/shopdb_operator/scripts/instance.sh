#!/bin/bash
# Entry point of the database container: decide this instance's role from the primary the
# operator recorded (SHOPDB_ROLE), bootstrap or rejoin accordingly, then exec postgres.
#
# Never writable unless recorded primary: every other start keeps (or creates) standby.signal,
# and a former primary is rewound (or re-cloned) before it starts.
#
# PID 1 becomes postgres. SIGTERM is a smart shutdown, which waits for PgBouncer's server
# connections forever; the image's STOPSIGNAL SIGINT (or stop.sh) makes it a fast one.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CONFIG_FILE="$SHOPDB_CONFIG_DIR/postgresql.conf"
HBA_FILE="$SHOPDB_CONFIG_DIR/pg_hba.conf"
BOOTSTRAP_SOCKET_DIR="$SHOPDB_RUN_DIR/bootstrap"
SLOT_NAME_PATTERN='^[a-z0-9_]{1,63}$'

# A sleep the pod's stop signal cuts short: bash runs a trap only once its foreground command
# ends, but `wait` returns at once. A fenced or deleted pod waiting to start stops in a blink.
pause() {
    sleep "$1" &
    wait $!
}

has_data() {
    [[ -f "$1/PG_VERSION" ]]
}

# A staged bootstrap is moved into place with mv, which needs PGDATA absent; anything else
# there is not ours to delete.
require_empty_pgdata() {
    [[ -e "$PGDATA" ]] || return 0
    rmdir "$PGDATA" 2>/dev/null || die "$PGDATA exists but holds no database (no PG_VERSION); refusing to overwrite it"
}

prepare_run_dir() {
    mkdir -p "$SHOPDB_RUN_DIR"
    local tmp="$PGPASSFILE.tmp"
    (
        umask 077
        printf '*:*:*:%s:%s\n' "$(pgpass_field postgres)" "$(pgpass_field "$SHOPDB_SUPERUSER_PASSWORD")"
        printf '*:*:*:%s:%s\n' "$(pgpass_field "$SHOPDB_REPLICATION_USER")" "$(pgpass_field "$SHOPDB_REPLICATION_PASSWORD")"
    ) > "$tmp"
    chmod 0600 "$tmp"
    mv -f "$tmp" "$PGPASSFILE"
}

# --- a private server: no TCP, trust on a private socket, no synchronous waits ----------

start_private_server() {
    local datadir="$1" extra="${2:-}"
    rm -rf "$BOOTSTRAP_SOCKET_DIR"
    mkdir -m 0700 "$BOOTSTRAP_SOCKET_DIR"
    printf 'local all all trust\n' > "$BOOTSTRAP_SOCKET_DIR/pg_hba.conf"
    trap 'stop_private_server "'"$datadir"'"' EXIT
    log "starting a private server on $datadir (crash recovery may take a while)"
    # synchronous_standby_names is cleared: no standby can connect, commits would hang.
    pg_ctl -D "$datadir" -w -t 86400 -s start -o "-c config_file=$CONFIG_FILE \
        -c hba_file=$BOOTSTRAP_SOCKET_DIR/pg_hba.conf -c listen_addresses='' \
        -c unix_socket_directories=$BOOTSTRAP_SOCKET_DIR -c port=$SHOPDB_PORT \
        -c synchronous_standby_names='' -c archive_mode=off $extra"
}

stop_private_server() {
    trap - EXIT
    pg_ctl -D "$1" -w -t 600 -s -m fast stop || true
    rm -rf "$BOOTSTRAP_SOCKET_DIR"
}

private_psql() {
    run_psql -h "$BOOTSTRAP_SOCKET_DIR" -p "$SHOPDB_PORT" "$@"
}

# Roles, passwords (re-applied on every start, so rotated Secrets take effect), the
# application database and one physical slot per peer instance.
configure_primary() {
    local slots="" slot peer_slots
    IFS=',' read -r -a peer_slots <<< "${SHOPDB_PEER_SLOTS:-}"
    for slot in "${peer_slots[@]}"; do
        [[ -z "$slot" ]] && continue
        [[ "$slot" =~ $SLOT_NAME_PATTERN ]] || die "invalid slot name '$slot' in SHOPDB_PEER_SLOTS"
        slots+="${slots:+,}$(sql_literal "$slot")"
    done
    local owner replication database
    owner=$(sql_literal "$SHOPDB_OWNER")
    replication=$(sql_literal "$SHOPDB_REPLICATION_USER")
    database=$(sql_literal "$SHOPDB_DATABASE")
    # Statements carry passwords: keep them out of the server log whatever the settings.
    private_psql -U postgres -d postgres <<SQL
SET log_statement = 'none';
SET log_min_duration_statement = -1;
SET log_min_error_statement = 'panic';
ALTER ROLE postgres WITH PASSWORD $(sql_literal "$SHOPDB_SUPERUSER_PASSWORD");
SELECT format('CREATE ROLE %I', $replication) WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = $replication)
\\gexec
SELECT format('ALTER ROLE %I WITH LOGIN REPLICATION NOSUPERUSER PASSWORD %L', $replication, $(sql_literal "$SHOPDB_REPLICATION_PASSWORD"))
\\gexec
SELECT format('CREATE ROLE %I', $owner) WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = $owner)
\\gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOREPLICATION PASSWORD %L', $owner, $(sql_literal "$SHOPDB_OWNER_PASSWORD"))
\\gexec
SELECT format('CREATE DATABASE %I OWNER %I', $database, $owner) WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = $database)
\\gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', $database)
\\gexec
SELECT pg_create_physical_replication_slot(slot, true)
  FROM unnest(ARRAY[${slots}]::text[]) AS slot
 WHERE slot NOT IN (SELECT slot_name FROM pg_replication_slots);
SQL
    log "roles, database '$SHOPDB_DATABASE' and slots [${SHOPDB_PEER_SLOTS:-}] are in place"
}

# pg_stat_statements (postgresql.conf preloads it) in the application database, where its
# view is read: it is not a trusted extension, so the owner could not create it. Skipped when
# the image lacks it (such an image needs its own spec.postgres.parameters
# shared_preload_libraries, or the server would not start at all).
create_extensions() {
    private_psql -U postgres -d "$SHOPDB_DATABASE" <<SQL
SELECT 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements'
 WHERE EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_stat_statements')
\\gexec
SQL
    log "extensions in '$SHOPDB_DATABASE': $(private_psql -U postgres -d "$SHOPDB_DATABASE" \
        -c "SELECT coalesce(string_agg(extname, ', ' ORDER BY extname), 'none') FROM pg_extension WHERE extname <> 'plpgsql'")"
}

run_init_sql() {
    [[ -f "$SHOPDB_INIT_SQL" ]] || return 0
    log "running $SHOPDB_INIT_SQL as $SHOPDB_OWNER in $SHOPDB_DATABASE"
    private_psql -U "$SHOPDB_OWNER" -d "$SHOPDB_DATABASE" -f "$SHOPDB_INIT_SQL" > /dev/null
}

# Until a staged data directory is complete it lives next to PGDATA, so that an
# interrupted bootstrap starts over instead of leaving half a cluster behind.
bootstrap_primary() {
    local staging="$PGDATA.initdb" pwfile="$SHOPDB_RUN_DIR/initdb.pw"
    require_empty_pgdata
    rm -rf "$staging"
    log "initializing a new cluster (checksums, SCRAM)"
    (umask 077; printf '%s\n' "$SHOPDB_SUPERUSER_PASSWORD" > "$pwfile")
    initdb -D "$staging" --username=postgres --pwfile="$pwfile" --data-checksums \
        --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 > /dev/null
    rm -f "$pwfile"
    start_private_server "$staging"
    configure_primary
    create_extensions
    run_init_sql
    stop_private_server "$staging"
    mv "$staging" "$PGDATA"
    log "new cluster ready"
}

# A new cluster made from another cluster's backup (spec.bootstrap.recovery): pgBackRest
# restores the source's backup, a private server replays its WAL to the target and
# promotes, and the result gets this cluster's roles and passwords. Like initdb, it is
# staged next to PGDATA until complete. PostgreSQL refuses to promote when the target lies
# beyond the archived WAL: that is a clear error in the log and the container restarts.
bootstrap_from_backup() {
    local staging="$PGDATA.restore" options
    require_empty_pgdata
    rm -rf "$staging"
    mapfile -t options <<< "${SHOPDB_RECOVERY_OPTIONS:---type=default}"
    log "restoring stanza '$SHOPDB_RECOVERY_STANZA' (${options[*]})"
    mkdir -m 0700 "$staging"
    pgbackrest_cmd recovery --stanza="$SHOPDB_RECOVERY_STANZA" --pg1-path="$staging" restore "${options[@]}" \
        --recovery-option="restore_command=bash $SCRIPTS_DIR/pgbackrest.sh recovery --stanza=$SHOPDB_RECOVERY_STANZA --pg1-path=$staging archive-get %f \"%p\"" \
        || die "pgbackrest restore of stanza '$SHOPDB_RECOVERY_STANZA' failed"
    # No hot standby while it replays: this cluster's settings need not match the source's
    # (a hot standby refuses fewer max_wal_senders or max_connections than its source had).
    log "replaying WAL to the recovery target"
    start_private_server "$staging" "-c hot_standby=off" \
        || die "recovery of stanza '$SHOPDB_RECOVERY_STANZA' stopped before its target (PostgreSQL's reason is above)"
    local state
    while true; do
        pg_ctl -D "$staging" status > /dev/null \
            || die "the restored server stopped during recovery (see the log above: a target beyond the archived WAL?)"
        # (no connections until recovery ends: hot standby is off)
        state=$(private_psql -U postgres -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null) || state=""
        [[ "$state" == f ]] && break
        sleep 1
    done
    log "recovery reached its target and promoted"
    # The source's recovery settings must not apply to this cluster's later starts.
    # (postgresql.auto.conf holds nothing else: the operator renders the configuration)
    private_psql -U postgres -d postgres -c 'ALTER SYSTEM RESET ALL' > /dev/null
    configure_primary
    stop_private_server "$staging"
    rm -f "$staging/recovery.signal" "$staging/standby.signal"
    mv "$staging" "$PGDATA"
    log "restored cluster ready"
}

# Existing data on the recorded primary. A standby here means the operator chose this
# instance as primary: promote it, which starts a new timeline that pg_rewind can follow.
start_as_primary() {
    start_private_server "$PGDATA"
    if [[ "$(private_psql -U postgres -d postgres -c 'SELECT pg_is_in_recovery()')" == t ]]; then
        log "this instance is the recorded primary but holds a standby: promoting it"
        [[ "$(private_psql -U postgres -d postgres -c 'SELECT pg_promote(true, 600)')" == t ]] \
            || die "promotion did not finish"
        rm -f "$PGDATA/standby.signal"
    fi
    configure_primary
    stop_private_server "$PGDATA"
}

# A recorded primary that starts again on its existing data (its server crashed, its
# container restarted, or its pod was deleted) stays down for the operator's failover
# window first: the operator, which saw it go down, promotes a replica meanwhile and fences
# this pod, so it never becomes writable beside the new primary. When no failover comes
# (failover off, refused, or no operator), it starts in place after the hold.
hold_before_primary_start() {
    local hold="${SHOPDB_PRIMARY_START_HOLD_SECONDS:-0}"
    [[ "$hold" =~ ^[0-9]+$ ]] || die "invalid SHOPDB_PRIMARY_START_HOLD_SECONDS '$hold'"
    ((hold > 0)) || return 0
    log "recorded primary restarting on existing data: holding ${hold}s for the operator's failover decision"
    pause "$hold"
}

# A primary starts (or starts again, after a fence) only once its instance-agent has stored a
# renewal of the primary lease sent after this wait began: a lease renewed before a crash,
# or one the operator has handed to another instance since, never lets it write. Without a
# lease file (outside Kubernetes) there is nothing to wait for.
wait_for_primary_lease() {
    [[ -n "$SHOPDB_LEASE_FILE" ]] || return 0
    local since
    since=$(now_hundredths)
    if ! lease_valid "$since"; then
        local why=""
        [[ -s "$SHOPDB_FENCE_FILE" ]] && why=" (fenced: $(head -c 300 "$SHOPDB_FENCE_FILE"))"
        log "waiting for the instance-agent to renew the primary lease: this instance starts writable only while it holds it$why"
        until lease_valid "$since"; do pause 0.5; done
    fi
    rm -f "$SHOPDB_FENCE_FILE"
    log "the primary lease is held: starting as primary"
}

# Watches the lease for the postmaster this shell becomes (fence.sh); detached, so that the
# pod's pause process (shared PID namespace) reaps it, never PostgreSQL.
start_fence_watcher() {
    [[ -n "$SHOPDB_LEASE_FILE" ]] || return 0
    (bash "$SCRIPTS_DIR/fence.sh" watch "$$" < /dev/null &)
}

wait_for_primary() {
    local deadline=$((SECONDS + SHOPDB_PRIMARY_WAIT_SECONDS)) state
    while true; do
        state=$(primary_psql -c 'SELECT pg_is_in_recovery()' 2>/dev/null || true)
        [[ "$state" == f ]] && return 0
        ((SECONDS < deadline)) || return 1
        pause 2
    done
}

# The primary keeps WAL for this instance from now on; creating the slot ourselves also
# heals a primary that was promoted without it. Only the replication privilege is needed.
ensure_own_slot() {
    local output
    if output=$(primary_replication_psql -c "CREATE_REPLICATION_SLOT $SHOPDB_SLOT PHYSICAL RESERVE_WAL" 2>&1); then
        log "created slot $SHOPDB_SLOT on the primary"
    elif [[ "$output" == *"already exists"* ]]; then
        return 0
    else
        log "could not create slot $SHOPDB_SLOT on the primary: $output"
        return 1
    fi
}

clone_from_primary() {
    local staging="$PGDATA.clone"
    wait_for_primary || die "no data yet and the primary $SHOPDB_PRIMARY_HOST:$SHOPDB_PRIMARY_PORT is not reachable as a writable primary after ${SHOPDB_PRIMARY_WAIT_SECONDS}s; exiting so that the container restarts"
    ensure_own_slot || die "cannot reserve slot $SHOPDB_SLOT on the primary"
    require_empty_pgdata
    rm -rf "$staging"
    log "cloning from $SHOPDB_PRIMARY_HOST:$SHOPDB_PRIMARY_PORT with slot $SHOPDB_SLOT"
    pg_basebackup -D "$staging" -d "$(primary_conninfo "$SHOPDB_REPLICATION_USER" replication)" -w \
        --wal-method=stream --slot="$SHOPDB_SLOT" --checkpoint=fast
    touch "$staging/standby.signal"
    mv "$staging" "$PGDATA"
    log "clone complete"
}

control_field() {
    LC_ALL=C pg_controldata -D "$PGDATA" | sed -n "s/^$1: *//p"
}

# The primary's system identifier and current timeline (replication protocol: no superuser).
primary_identity() {
    primary_replication_psql -F ' ' -c 'IDENTIFY_SYSTEM' | awk '{print $1, $2}'
}

# Data from another cluster is never rewound, re-cloned or otherwise overwritten.
require_same_system() {
    local system="$1"
    [[ "$system" == "$(control_field 'Database system identifier')" ]] || die "the data in $PGDATA belongs to another cluster than the primary at $SHOPDB_PRIMARY_HOST:$SHOPDB_PRIMARY_PORT (system identifiers differ); refusing to touch it"
}

# pg_rewind winds this instance back to where its history forked from the primary's; when
# that is impossible the data is discarded and cloned again (the failover already accepted
# that loss, and the volume has no room for both copies).
rewind_or_reclone() {
    # A just-promoted primary writes its new timeline to pg_control only at a checkpoint;
    # without it pg_rewind sees no fork and would wrongly answer "no rewind required".
    primary_psql -c 'CHECKPOINT' > /dev/null
    if pg_rewind --target-pgdata="$PGDATA" --source-server="$(primary_conninfo postgres)"; then
        log "pg_rewind finished"
        rm -rf "$PGDATA"/pg_replslot/*
        touch "$PGDATA/standby.signal"
    else
        log "pg_rewind failed; discarding the diverged data and cloning from the primary"
        rm -rf "$PGDATA"
        clone_from_primary
    fi
}

# A former primary (no standby.signal) may hold WAL the new primary never received.
rejoin_as_replica() {
    log "data written as a primary, but $SHOPDB_PRIMARY_HOST:$SHOPDB_PRIMARY_PORT is the recorded primary: rejoining as a replica"
    wait_for_primary || die "the recorded primary $SHOPDB_PRIMARY_HOST:$SHOPDB_PRIMARY_PORT is not reachable as a writable primary after ${SHOPDB_PRIMARY_WAIT_SECONDS}s; refusing to start a former primary without rewinding it"
    local identity system timeline
    identity=$(primary_identity) || die "cannot identify the primary's system over the replication protocol"
    read -r system timeline <<< "$identity"
    require_same_system "$system"
    ensure_own_slot || die "cannot reserve slot $SHOPDB_SLOT on the primary"
    rewind_or_reclone
}

# A replica may have received WAL past the point where a newer timeline forked (it was
# ahead of the replica that got promoted): it could never follow that timeline. When the
# primary's timeline is newer than ours, rewind; pg_rewind answers quickly when there is
# nothing to undo. Only after a clean shutdown: pg_rewind cannot recover a crashed standby.
start_replica_from_existing_data() {
    local identity system timeline local_timeline recovery_timeline
    if ! identity=$(primary_identity 2>/dev/null); then
        log "the primary is not reachable now; starting from local data (it streams once the primary is back)"
        return 0
    fi
    read -r system timeline <<< "$identity"
    require_same_system "$system"
    ensure_own_slot || true
    local_timeline=$(control_field "Latest checkpoint's TimeLineID")
    recovery_timeline=$(control_field "Min recovery ending loc's timeline")
    ((recovery_timeline > local_timeline)) && local_timeline=$recovery_timeline
    if ((timeline > local_timeline)); then
        if [[ "$(control_field 'Database cluster state')" == "shut down in recovery" ]]; then
            log "the primary is on timeline $timeline, this replica on $local_timeline: rewinding in case it went past the fork"
            rewind_or_reclone
        else
            log "the primary is on timeline $timeline, this replica on $local_timeline, but it was not shut down cleanly: starting without rewinding"
        fi
    fi
}

main() {
    require_env SHOPDB_INSTANCE SHOPDB_SLOT SHOPDB_PRIMARY_HOST SHOPDB_SUPERUSER_PASSWORD \
        SHOPDB_REPLICATION_PASSWORD SHOPDB_DATABASE SHOPDB_OWNER SHOPDB_OWNER_PASSWORD
    [[ "$SHOPDB_SLOT" =~ $SLOT_NAME_PATTERN ]] || die "invalid SHOPDB_SLOT '$SHOPDB_SLOT'"
    [[ -f "$CONFIG_FILE" && -f "$HBA_FILE" ]] || die "missing $CONFIG_FILE or $HBA_FILE"
    # Until exec, a stop signal ends the start (the EXIT trap of a private server stops it).
    trap 'log "stop signal before the server started: exiting"; exit 143' INT TERM
    prepare_run_dir
    rm -rf "$PGDATA.initdb" "$PGDATA.clone" "$PGDATA.restore"
    if [[ "${SHOPDB_BACKUP:-}" == true || -n "${SHOPDB_RECOVERY_STANZA:-}" ]]; then
        command -v pgbackrest > /dev/null || die "this image has no pgbackrest, but the cluster backs up or restores (spec.backup or spec.bootstrap.recovery): use an image with pgBackRest, e.g. images/postgres/Dockerfile"
    fi

    # A volume's fsGroup handling may have opened the directory to the group; postgres
    # refuses to start unless it is 0700 (or 0750).
    if has_data "$PGDATA"; then chmod 0700 "$PGDATA"; fi

    local role="${SHOPDB_ROLE:-}"
    if [[ "$role" == primary ]]; then
        if has_data "$PGDATA"; then
            hold_before_primary_start; wait_for_primary_lease; start_as_primary
        elif [[ -n "${SHOPDB_RECOVERY_STANZA:-}" ]]; then
            wait_for_primary_lease; bootstrap_from_backup
        else
            wait_for_primary_lease; bootstrap_primary
        fi
    else
        [[ "$role" == replica ]] || log "recorded role '${role}' is neither primary nor replica: starting read-only"
        rm -f "$SHOPDB_FENCE_FILE"
        if ! has_data "$PGDATA"; then
            clone_from_primary
        elif [[ ! -f "$PGDATA/standby.signal" ]]; then
            rejoin_as_replica
        else
            start_replica_from_existing_data
        fi
    fi

    log "starting postgres as ${role:-replica} on port $SHOPDB_PORT"
    start_fence_watcher
    exec postgres -D "$PGDATA" \
        -c config_file="$CONFIG_FILE" \
        -c hba_file="$HBA_FILE" \
        -c listen_addresses="$SHOPDB_LISTEN" \
        -c port="$SHOPDB_PORT" \
        -c unix_socket_directories="$SHOPDB_RUN_DIR" \
        -c primary_conninfo="$(primary_conninfo "$SHOPDB_REPLICATION_USER" replication)" \
        -c primary_slot_name="$SHOPDB_SLOT" \
        -c recovery_target_timeline=latest
}

main "$@"
