#!/bin/bash
# A backup Job: backup.sh TYPE REPO_INDEX... takes one backup of TYPE (full|diff|incr) to each
# repository in turn (pgBackRest holds one backup lock per stanza), from a streaming
# replica; when none streams, from the primary. Expired backups and their WAL are pruned by
# pgBackRest after each backup (repoN-retention-full).
#
# Its last line is `SHOPDB-INFO <pgbackrest info --output=json>`: what the operator reads
# back into the cluster's status. It exits non-zero when any repository failed.
set -uo pipefail
HERE="$(dirname "${BASH_SOURCE[0]}")"
type="${1:?usage: backup.sh full|diff|incr REPO_INDEX...}"
shift
[[ "$type" =~ ^(full|diff|incr)$ ]] || { echo "FATAL: unknown backup type '$type'" >&2; exit 2; }
(($# > 0)) || { echo "FATAL: no repository given" >&2; exit 2; }

pgbr() {
    bash "$HERE/pgbackrest.sh" job --stanza="$SHOPDB_STANZA" "$@"
}

log() {
    printf '%s backup: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"
}

# Creates the stanza in any repository that lacks it (a new cluster, a new repository);
# a repository that holds another database's stanza is refused here, loudly.
pgbr stanza-create || { echo "FATAL: stanza-create failed"; exit 1; }

# One backup to one repository. Another backup of this stanza holds pgBackRest's lock (a
# schedule overlapping another, an on-demand backup; the instances' pgBackRest servers take
# it, so two Jobs never run at once): wait for it, up to an hour.
backup_to() {
    local repo=$1 rc waited=0
    while true; do
        pgbr backup --type="$type" --repo="$repo" 2>&1 | tee /tmp/backup.out
        rc=${PIPESTATUS[0]}
        if ((rc == 56)) && grep -q "unable to find standby" /tmp/backup.out; then
            log "no replica is streaming: backing up repo$repo from the primary"
            pgbr backup --type="$type" --repo="$repo" --no-backup-standby 2>&1 | tee /tmp/backup.out
            rc=${PIPESTATUS[0]}
        fi
        if ((rc != 0 && waited < 3600)) && grep -q "unable to acquire lock" /tmp/backup.out; then
            log "another backup of this stanza runs: waiting for it"
            sleep 30
            waited=$((waited + 30))
            continue
        fi
        return "$rc"
    done
}

failed=()
for repo in "$@"; do
    log "$type backup to repo$repo"
    started=$SECONDS
    if backup_to "$repo"; then
        log "repo$repo: $type backup done in $((SECONDS - started))s"
    else
        log "repo$repo: $type backup FAILED"
        failed+=("$repo")
    fi
done

info=$(pgbr info --output=json --log-level-console=warn 2>/dev/null | tr -d '\n')
[[ -n "$info" ]] && printf 'SHOPDB-INFO %s\n' "$info"
if ((${#failed[@]})); then
    echo "FATAL: backup failed for repo ${failed[*]}"
    exit 1
fi
