#!/bin/bash
# A restore-verification Job: verify.sh REPO_INDEX restores the latest backup of that
# repository into a scratch volume, starts PostgreSQL on it (no network, a private socket),
# lets it replay to the end of the backup, then checks every table and index of every
# database with pg_amcheck (which reads every page: the data checksums are verified too).
#
# Its last line is `SHOPDB-VERIFY {"repo":N,"label":...,"ok":true|false,"seconds":N,...}`.
set -uo pipefail
HERE="$(dirname "${BASH_SOURCE[0]}")"
repo="${1:?usage: verify.sh REPO_INDEX}"
scratch="${SHOPDB_VERIFY_DIR:-/scratch}"
pgdata="$scratch/pgdata"
socket="$scratch/run"
started=$SECONDS
label=""

log() {
    printf '%s verify: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"
}

finish() {  # finish OK REASON
    local ok=$1 reason=${2:-} seconds=$((SECONDS - started))
    [[ -f "$pgdata/postmaster.pid" ]] && pg_ctl -D "$pgdata" -m immediate -w stop > /dev/null 2>&1
    reason=${reason//\\/\\\\}
    reason=${reason//\"/\\\"}
    printf 'SHOPDB-VERIFY {"repo":%s,"label":"%s","ok":%s,"seconds":%s,"reason":"%s"}\n' \
        "$repo" "$label" "$ok" "$seconds" "${reason:0:400}"
    [[ "$ok" == true ]] && exit 0 || exit 1
}

rm -rf "$pgdata" "$socket"
mkdir -m 0700 -p "$pgdata" "$socket"
log "restoring the latest backup of repo$repo into $pgdata"
bash "$HERE/pgbackrest.sh" verify --stanza="$SHOPDB_STANZA" --repo="$repo" --pg1-path="$pgdata" restore \
    --type=immediate --target-action=promote \
    --recovery-option="restore_command=bash $HERE/pgbackrest.sh verify --stanza=$SHOPDB_STANZA --repo=$repo --pg1-path=$pgdata archive-get %f \"%p\"" \
    2>&1 | tee /tmp/restore.out
restored=${PIPESTATUS[0]}
label=$(sed -n 's/.*restore backup set \([0-9A-Z_-]*\).*/\1/p' /tmp/restore.out | tail -1)
((restored == 0)) || finish false "$(grep -E 'ERROR: \[' /tmp/restore.out | tail -1)"

# hot_standby off: pg_ctl waits until recovery reached the end of the backup and promoted,
# and this small server need not match the source's max_connections & co (a standby must)
log "starting PostgreSQL on the restored backup $label"
cat > "$scratch/pg_hba.conf" <<'HBA'
local all all trust
HBA
pg_ctl -D "$pgdata" -w -t 3600 -s -l "$scratch/postgres.log" start -o "-c config_file=$pgdata/postgresql.conf \
    -c hba_file=$scratch/pg_hba.conf -c listen_addresses='' -c unix_socket_directories=$socket \
    -c port=5432 -c archive_mode=off -c hot_standby=off -c shared_buffers=64MB -c max_connections=20 \
    -c logging_collector=off" || { tail -20 "$scratch/postgres.log"; finish false "PostgreSQL did not start on the restored backup"; }
state=""
for _ in $(seq 3600); do
    pg_ctl -D "$pgdata" status > /dev/null || {
        tail -20 "$scratch/postgres.log"; finish false "PostgreSQL stopped while replaying the backup's WAL"; }
    state=$(psql -X -At -h "$socket" -p 5432 -U postgres -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)
    [[ "$state" == f ]] && break
    sleep 1
done
[[ "$state" == f ]] || finish false "recovery did not reach the end of the backup within an hour"

log "checking every table and index (pg_amcheck --heapallindexed)"
pg_amcheck -h "$socket" -p 5432 -U postgres --all --install-missing --heapallindexed > /tmp/amcheck.out 2>&1
amcheck=$?
tail -20 /tmp/amcheck.out
((amcheck == 0)) || finish false "pg_amcheck found problems: $(grep -v '^ *$' /tmp/amcheck.out | head -1)"
tables=$(psql -X -At -h "$socket" -p 5432 -U postgres -d postgres -c \
    "SELECT count(*) FROM pg_database WHERE datallowconn")
log "backup $label restored and checked: $tables databases"
finish true ""
