#!/usr/bin/env bash
# Build the cluster's container images from debootstrap'd Debian (minbase) root
# filesystems, bookworm for all but PgBouncer (trixie: PgBouncer 1.24 with
# max_prepared_statements), and write them as OCI archives into the cache.
#
#   images.sh all                 # pause, coredns, postgres, pgbouncer, redis, versitygw
#   images.sh NAME                # one of them
#   images.sh base [SUITE]        # the cached root filesystems (both, or bookworm|trixie)
#   images.sh operator REPO_DIR   # localhost/shopdb/operator:dev from a repo checkout
#
# Prints nothing but progress; archives land in $IMG_CACHE/<name>-<key>.tar with
# <name>-<key>.ref (image reference) and <name>-<key>.versions (dpkg versions).
# The base root filesystems are cached as $IMG_CACHE/base-<suite>.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/versions.sh"
IMG_CACHE=${IMG_CACHE:-$LK_CACHE/images}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_SUITES="bookworm trixie"   # the bases the recipes use (prune removes others)
WORKDIR=$IMG_CACHE/work
mkdir -p "$IMG_CACHE" "$WORKDIR"
# Cache key of one image: its recipe (the shell function), the shared helpers, the
# archive writer and the pinned versions. Editing one recipe rebuilds only that image.
key_of() {
  { declare -f "build_$1" mounted_chroot base_dir build_base new_rootfs slim archive
    cat "$HERE/mkimage.py" "$HERE/versions.sh"
    if [ "$1" = pause ]; then cat "$HERE/pause/main.go"; fi
    if [ "$1" = coredns ]; then cat "$HERE/build-tools.sh"; fi
  } | sha256sum | cut -c1-10
}

log() { echo "[images $(date +%H:%M:%S)] $*" >&2; }

mounted_chroot() {  # run "$@" inside rootfs $1 with /proc, /dev, resolv.conf
  local root=$1; shift
  mount -t proc proc "$root/proc"
  mount --bind /dev "$root/dev"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  local rc=0
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 HOME=/root /bin/sh -ec "$*" || rc=$?
  umount "$root/dev" "$root/proc"
  : > "$root/etc/resolv.conf"
  return $rc
}

base_dir() { echo "$IMG_CACHE/base-${1:-bookworm}"; }

build_base() {  # build_base [SUITE]: the debootstrap'd minbase of bookworm (default) or trixie
  local suite=${1:-bookworm} base
  base=$(base_dir "$suite")
  [ -f "$base/.complete" ] && return 0
  log "debootstrap $suite minbase from $MIRROR"
  if [ ! -f "$base.partial/.debootstrapped" ]; then
    rm -rf "$base.partial"
    debootstrap --variant=minbase --include=ca-certificates "$suite" "$base.partial" "$MIRROR" >&2
    touch "$base.partial/.debootstrapped"
  fi
  cat > "$base.partial/etc/apt/sources.list" <<SRC
deb $MIRROR $suite main
deb $MIRROR $suite-updates main
deb ${MIRROR%/debian}/debian-security $suite-security main
SRC
  printf '#!/bin/sh\nexit 101\n' > "$base.partial/usr/sbin/policy-rc.d"; chmod +x "$base.partial/usr/sbin/policy-rc.d"
  cat > "$base.partial/etc/dpkg/dpkg.cfg.d/01-shopdb-nodoc" <<'CFG'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
  echo 'APT::Install-Recommends "false"; APT::Install-Suggests "false";' > "$base.partial/etc/apt/apt.conf.d/01-shopdb"
  mounted_chroot "$base.partial" "apt-get update -qq && apt-get -y -qq upgrade >/dev/null && apt-get clean"
  rm -f "$base.partial/.debootstrapped"; touch "$base.partial/.complete"
  mv "$base.partial" "$base"
}

new_rootfs() {  # new_rootfs NAME [SUITE]: copy of that base into $WORKDIR/NAME, echo its path
  local r=$WORKDIR/$1
  rm -rf "$r"; cp -a "$(base_dir "${2:-bookworm}")" "$r"; rm -f "$r/.complete"
  echo "$r"
}

slim() {  # drop apt lists/caches and logs, record package versions
  local r=$1 out=$2
  chroot "$r" dpkg-query -W -f '${Package}=${Version}\n' > "$out.versions"
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
         "$r"/var/log/* "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/tmp/* "$r"/root/.cache
}

archive() {  # archive NAME ROOTFS REF mkimage-args...
  local name=$1 root=$2 ref=$3; shift 3
  local out key
  key=$(key_of "$name"); out=$IMG_CACHE/$name-$key
  python3 "$HERE/mkimage.py" "$root" "$out.tar.tmp" "$ref" "$@" >&2
  mv "$out.tar.tmp" "$out.tar"; echo "$ref" > "$out.ref"
  rm -rf "$root"
}

have() { local k; k=$(key_of "$1"); [ -f "$IMG_CACHE/$1-$k.tar" ] && [ -f "$IMG_CACHE/$1-$k.ref" ]; }

build_pause() {
  have pause && return 0
  log "pause"
  local r=$WORKDIR/pause; rm -rf "$r"; mkdir -p "$r"/{dev,proc,sys,etc}
  (cd "$HERE/pause" && CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=$K8S_GO_TOOLCHAIN \
     go build -trimpath -ldflags "-s -w" -o "$r/pause" .)
  echo "pause (static Go, tests/cluster/lib/pause)" > "$IMG_CACHE/pause-$(key_of pause).versions"
  archive pause "$r" "$PAUSE_IMAGE" --entrypoint '["/pause"]' --user 65535
}

build_coredns() {
  have coredns && return 0
  "$HERE/build-tools.sh" >&2
  log "coredns"
  local r=$WORKDIR/coredns; rm -rf "$r"; mkdir -p "$r"/{dev,proc,sys,etc/coredns,tmp}
  cp "$TOOLS_BIN/coredns" "$r/coredns"
  echo "nobody:x:65534:65534:nobody:/:/sbin/nologin" > "$r/etc/passwd"
  echo "coredns $COREDNS_VERSION (go install)" > "$IMG_CACHE/coredns-$(key_of coredns).versions"
  archive coredns "$r" "$COREDNS_IMAGE" --entrypoint '["/coredns"]' --port 53/udp --port 53/tcp
}

build_postgres() {
  have postgres && return 0
  build_base; log "postgres $POSTGRES_DEB"
  local r; r=$(new_rootfs postgres)
  # Same layout as the official postgres image (Debian variant).
  mounted_chroot "$r" "
    groupadd -r postgres --gid=999
    useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres
    mkdir -p /var/lib/postgresql && chown -R postgres:postgres /var/lib/postgresql
    apt-get install -y -qq postgresql-common >/dev/null
    sed -ri 's/#(create_main_cluster) .*\$/\1 = false/' /etc/postgresql-common/createcluster.conf
    apt-get install -y -qq postgresql-15=$POSTGRES_DEB postgresql-client-15=$POSTGRES_DEB bash procps >/dev/null
    apt-get install -y -qq pgbackrest=$PGBACKREST_DEB >/dev/null
    mkdir -p /etc/pgbackrest && pgbackrest version
    mkdir -p /var/run/postgresql && chown -R postgres:postgres /var/run/postgresql && chmod 3777 /var/run/postgresql
    mkdir -p /var/lib/postgresql/data && chown -R postgres:postgres /var/lib/postgresql/data && chmod 1777 /var/lib/postgresql/data
    sed -ri \"s!^#?(listen_addresses)\\s*=\\s*\\S+.*!\\1 = '*'!\" /usr/share/postgresql/15/postgresql.conf.sample
    for b in psql pg_ctl initdb pg_basebackup pg_rewind postgres pg_isready; do test -x /usr/lib/postgresql/15/bin/\$b; done
    apt-get clean"
  slim "$r" "$IMG_CACHE/postgres-$(key_of postgres)"
  archive postgres "$r" "$POSTGRES_IMAGE" --cmd '["postgres"]' --user 999 --workdir /var/lib/postgresql \
    --env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/15/bin" \
    --env PG_MAJOR=15 --env PGDATA=/var/lib/postgresql/data --env LANG=C.UTF-8 --port 5432/tcp \
    --stop-signal SIGINT
}

build_versitygw() {
  have versitygw && return 0
  if [ ! -x "$VERSITYGW_BIN/versitygw" ]; then
    log "versitygw $VERSITYGW_VERSION (go install)"
    rm -rf "$VERSITYGW_BIN.partial"; mkdir -p "$VERSITYGW_BIN.partial"
    CGO_ENABLED=0 GOBIN=$VERSITYGW_BIN.partial GOFLAGS=-trimpath GOTOOLCHAIN=local \
      go install -ldflags "-s -w" "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" >&2
    mv "$VERSITYGW_BIN.partial" "$VERSITYGW_BIN"
  fi
  log "versitygw image"
  local r=$WORKDIR/versitygw; rm -rf "$r"; mkdir -p "$r"/{dev,proc,sys,etc,tmp,data}
  chmod 1777 "$r/tmp"
  cp "$VERSITYGW_BIN/versitygw" "$r/versitygw"
  echo "nonroot:x:65532:65532:nonroot:/data:/sbin/nologin" > "$r/etc/passwd"
  echo "nonroot:x:65532:" > "$r/etc/group"
  echo "versitygw $VERSITYGW_VERSION (go install)" > "$IMG_CACHE/versitygw-$(key_of versitygw).versions"
  archive versitygw "$r" "$VERSITYGW_IMAGE" --entrypoint '["/versitygw"]' --user 65532 --workdir /data --port 7070/tcp
}

# Trixie's PgBouncer (bookworm's 1.18 has no max_prepared_statements). The operator's
# pgbouncer-start.sh needs /bin/sh, sed, printf, mkdir, mv: all in minbase; no psql. bash
# stays (Essential): the e2e tests use this image as "an image without pgBackRest".
build_pgbouncer() {
  have pgbouncer && return 0
  build_base trixie; log "pgbouncer $PGBOUNCER_TRIXIE_DEB (trixie)"
  local r; r=$(new_rootfs pgbouncer trixie)
  mounted_chroot "$r" "
    groupadd -r pgbouncer --gid=70
    useradd -r -g pgbouncer --uid=70 --home-dir=/var/lib/pgbouncer --shell=/bin/sh pgbouncer
    apt-get install -y -qq pgbouncer=$PGBOUNCER_TRIXIE_DEB >/dev/null
    pgbouncer --version | grep -qx 'PgBouncer ${PGBOUNCER_TRIXIE_DEB%%-*}'
    mkdir -p /var/lib/pgbouncer /var/run/pgbouncer /var/log/pgbouncer
    chown -R pgbouncer:pgbouncer /etc/pgbouncer /var/lib/pgbouncer /var/run/pgbouncer /var/log/pgbouncer
    apt-get clean"
  slim "$r" "$IMG_CACHE/pgbouncer-$(key_of pgbouncer)"
  archive pgbouncer "$r" "$PGBOUNCER_IMAGE" --cmd '["pgbouncer", "/etc/pgbouncer/pgbouncer.ini"]' \
    --user 70 --workdir /var/lib/pgbouncer --port 6432/tcp \
    --env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

build_redis() {
  have redis && return 0
  build_base; log "redis $REDIS_DEB"
  local r; r=$(new_rootfs redis)
  mounted_chroot "$r" "
    groupadd -r redis --gid=999
    useradd -r -g redis --uid=999 --home-dir=/data --shell=/bin/sh redis
    apt-get install -y -qq redis-server=$REDIS_DEB redis-tools=$REDIS_DEB >/dev/null
    mkdir -p /data && chown redis:redis /data
    apt-get clean"
  slim "$r" "$IMG_CACHE/redis-$(key_of redis)"
  archive redis "$r" "$REDIS_IMAGE" --cmd '["redis-server", "--protected-mode", "no"]' --user 999 \
    --workdir /data --port 6379/tcp
}

# The operator image, mirroring the repo's Dockerfile on a Debian base: a venv at /venv
# with the repo pip-installed (with tests/constraints.txt when present), USER 65532:65532
# (no passwd entry, as in python:3.11-slim), HOME=/tmp, WORKDIR /tmp,
# ENTRYPOINT shopdb-operator, CMD run --all-namespaces.
build_operator() {
  local repo=${1:?usage: images.sh operator REPO_DIR}
  repo=$(cd "$repo" && pwd)
  [ -f "$repo/pyproject.toml" ] || { echo "no pyproject.toml in $repo" >&2; return 1; }
  build_base
  local pybase key
  key=$(key_of operator); pybase=$IMG_CACHE/operator-base-$key
  if [ ! -f "$pybase/.complete" ]; then
    log "operator base: python3 $PYTHON_DEB + venv"
    rm -rf "$pybase"; cp -a "$(base_dir bookworm)" "$pybase"; rm -f "$pybase/.complete"
    mounted_chroot "$pybase" "
      apt-get install -y -qq python3=$PYTHON_DEB python3-venv=$PYTHON_DEB >/dev/null
      python3 -m venv /venv
      apt-get clean"
    touch "$pybase/.complete"
  fi
  log "operator: pip install $repo"
  local r; r=$(new_rootfs operator); rm -rf "$r"; cp -a "$pybase" "$r"; rm -f "$r/.complete"
  mkdir -p "$r/tmp/src"
  tar -C "$repo" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ --exclude=.venv \
      --exclude=node_modules --exclude=.pytest_cache -cf - . | tar -C "$r/tmp/src" -xf -
  # pip inside the chroot trusts what the host trusts (this network re-signs TLS with
  # its own CA); the bundle is removed again before the image is written.
  local pip_env="PIP_CERT=/tmp/host-ca.pem PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180"
  cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$r/tmp/host-ca.pem"
  [ -n "${PIP_INDEX_URL:-}" ] && pip_env+=" PIP_INDEX_URL=$PIP_INDEX_URL"
  local constraints=""
  [ -f "$repo/tests/constraints.txt" ] && constraints="--constraint /tmp/src/tests/constraints.txt"
  mounted_chroot "$r" "
    export $pip_env
    /venv/bin/pip install -q --no-cache-dir $constraints /tmp/src
    test -x /venv/bin/shopdb-operator
    /venv/bin/python -c 'import shopdb_operator'
    rm -rf /tmp/src /tmp/host-ca.pem"
  local out=$IMG_CACHE/operator-dev
  chroot "$r" /venv/bin/pip freeze > "$out.versions" 2>/dev/null || true
  slim "$r" "$out.dpkg"
  chmod 1777 "$r/tmp"
  python3 "$HERE/mkimage.py" "$r" "$out.tar.tmp" "$OPERATOR_IMAGE" --user 65532:65532 --workdir /tmp \
    --env "PATH=/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --env PYTHONUNBUFFERED=1 --env PYTHONDONTWRITEBYTECODE=1 --env HOME=/tmp \
    --entrypoint '["shopdb-operator"]' --cmd '["run", "--all-namespaces"]' >&2
  mv "$out.tar.tmp" "$out.tar"; echo "$OPERATOR_IMAGE" > "$out.ref"
  rm -rf "$r"
  echo "$out.tar"
}

prune() {  # archives and rootfs caches of older recipes, bases no recipe uses
  local f n keep
  for n in pause coredns postgres pgbouncer redis versitygw; do
    keep=$(key_of "$n")
    for f in "$IMG_CACHE/$n-"*; do
      [ -e "$f" ] || continue
      case "$f" in "$IMG_CACHE/$n-$keep".*) ;; *) rm -rf "$f" ;; esac
    done
  done
  keep=$(key_of operator)
  for f in "$IMG_CACHE"/operator-base-*; do [ "$f" = "$IMG_CACHE/operator-base-$keep" ] || rm -rf "$f"; done
  for f in "$IMG_CACHE"/base-*; do
    [ -d "$f" ] || continue
    case " $BASE_SUITES " in *" ${f#"$IMG_CACHE/base-"} "*) continue ;; esac
    # a .partial of ours, or a base whose chroot is still mounted (a killed build): keep
    case "$f" in *.partial) continue ;; esac
    grep -q " $f/" /proc/mounts && continue
    rm -rf "$f"
  done
}

list_archives() {  # the archives `up` imports
  local n
  for n in pause coredns postgres pgbouncer redis versitygw; do echo "$IMG_CACHE/$n-$(key_of "$n").tar"; done
}

case "${1:-all}" in
  all) build_pause; build_coredns; build_postgres; build_pgbouncer; build_redis; build_versitygw; prune ;;
  base) if [ -n "${2:-}" ]; then build_base "$2"; else for s in $BASE_SUITES; do build_base "$s"; done; fi ;;
  pause|coredns|postgres|pgbouncer|redis|versitygw) "build_$1" ;;
  operator) shift; build_operator "$@" ;;
  list) list_archives ;;
  *) echo "usage: images.sh all|base [SUITE]|pause|coredns|postgres|pgbouncer|redis|versitygw|list|operator REPO" >&2; exit 2 ;;
esac
