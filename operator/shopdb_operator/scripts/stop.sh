#!/bin/bash
# A fast shutdown on demand (disconnect clients, checkpoint, let replicas receive the
# last WAL) instead of the smart shutdown SIGTERM means, which waits for PgBouncer forever.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
pg_ctl -D "$PGDATA" -m fast -w -t "${1:-60}" stop
