#!/bin/bash
# pgbackrest with the configuration of one role and the S3 keys that role may use.
#
#   pgbackrest.sh instance|job|verify|recovery PGBACKREST-ARGS...
#
# The keys are read from the mounted Secrets (/etc/shopdb/s3/<repoN|recovery>/{key,secret})
# into pgBackRest's environment for this one command: they are never in a configuration
# file, on a command line, or in the container's environment. `recovery` is another
# cluster's repository, always numbered repo1 in recovery.conf.
set -euo pipefail

SHOPDB_PGBACKREST_DIR="${SHOPDB_PGBACKREST_DIR:-/etc/shopdb/pgbackrest}"
SHOPDB_S3_DIR="${SHOPDB_S3_DIR:-/etc/shopdb/s3}"

role="${1:?usage: pgbackrest.sh instance|job|verify|recovery ARGS...}"
shift
command -v pgbackrest > /dev/null || {
    echo "FATAL: this image has no pgbackrest, but the cluster backs up or restores (spec.backup or spec.bootstrap.recovery); use an image with pgBackRest, e.g. images/postgres/Dockerfile" >&2
    exit 127
}

export_keys() {  # export_keys INDEX DIR
    [[ -r "$2/key" && -r "$2/secret" ]] || { echo "FATAL: no S3 key pair in $2" >&2; exit 1; }
    export "PGBACKREST_REPO$1_S3_KEY=$(< "$2/key")"
    export "PGBACKREST_REPO$1_S3_KEY_SECRET=$(< "$2/secret")"
}

case "$role" in
    instance|job|verify)
        for dir in "$SHOPDB_S3_DIR"/repo*; do
            [[ -d "$dir" ]] && export_keys "${dir##*/repo}" "$dir"
        done ;;
    recovery)
        export_keys 1 "$SHOPDB_S3_DIR/recovery" ;;
    *)
        echo "FATAL: unknown role '$role'" >&2; exit 2 ;;
esac
mkdir -p /tmp/pgbackrest
config="$SHOPDB_PGBACKREST_DIR/$role.conf"
if [[ "$role" != instance || " $* " != *" archive-push "* ]]; then
    exec pgbackrest --config="$config" "$@"
fi
# PostgreSQL's archive_command: pgBackRest's errors stay in the server log and the last
# failure's are also kept in a file the operator reads over SQL (pg_read_file), so status
# says why archiving fails and to which repository. A success removes it.
error_file=/tmp/pgbackrest/archive-push.error
rc=0
pgbackrest --config="$config" "$@" 2> "$error_file.new" || rc=$?
cat "$error_file.new" >&2
if (( rc == 0 )); then
    rm -f "$error_file" "$error_file.new"
else
    mv -f "$error_file.new" "$error_file"
fi
exit "$rc"
