#!/bin/bash
# fence.sh watch PID: the database container's own watcher of the primary lease, started by
# instance.sh for the postmaster it is about to become (PID).
#
# While this instance runs as a primary (no standby.signal) and the lease file does not say
# it may write (SHOPDB_LEASE_FILE, kept by the instance-agent sidecar), the postmaster gets
# SIGINT: a fast shutdown, which refuses new connections and ends every session at once.
# It needs only that file and the clock, so an agent that crashed, hangs or cannot reach the
# API server fences the primary by saying nothing; the agent fences from its side too.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Why the lease file no longer lets this primary write, in words.
describe_lease() {
    local renewed until now
    now=$(now_hundredths)
    if { read -r renewed until < "$SHOPDB_LEASE_FILE"; } 2> /dev/null && [[ "$renewed" =~ ^[0-9]+$ && "$until" =~ ^[0-9]+$ ]] \
        && ((renewed > 0)); then
        printf 'the instance-agent last renewed the primary lease %d.%02d s ago; its writable time ended %d.%02d s ago' \
            $(((now - renewed) / 100)) $(((now - renewed) % 100)) $(((now - until) / 100)) $(((now - until) % 100))
    else
        printf 'the instance-agent holds no renewal of the primary lease'
    fi
}

watch_postmaster() {
    local pm="$1" fenced=""
    # Only the postmaster's end ends it (the container's stop signal goes to the postmaster).
    trap '' HUP INT TERM
    while kill -0 "$pm" 2> /dev/null; do
        if [[ ! -f "$PGDATA/standby.signal" ]] && ! lease_valid; then
            if [[ -z "$fenced" ]]; then
                fenced=$(describe_lease)
                printf '%s\n' "$fenced" > "$SHOPDB_FENCE_FILE"
                log "fencing this primary: $fenced; stopping PostgreSQL (fast shutdown)"
            fi
            kill -INT "$pm" 2> /dev/null
        fi
        sleep 0.5
    done
}

case "${1:-}" in
    watch)
        [[ -n "$SHOPDB_LEASE_FILE" && "${2:-}" =~ ^[0-9]+$ ]] || { echo "usage: SHOPDB_LEASE_FILE=... fence.sh watch PID" >&2; exit 2; }
        watch_postmaster "$2" ;;
    *) echo "usage: fence.sh watch PID" >&2; exit 2 ;;
esac
