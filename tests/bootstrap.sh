#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian bookworm machine, pinned:
# Debian packages (PostgreSQL, Redis, PgBouncer's build dependencies), PgBouncer built from
# Debian trixie's source, Debian trixie's promtool, and a Python venv outside the repo (with bin/pgbouncer).
# Safe to re-run: it only installs what is missing. Prints the venv's python on stdout.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${SHOPDB_CACHE:-/var/cache/shopdb}
mkdir -p "$cache"

# name=version; bookworm's versions. A mirror that moved on to a newer point release
# gets that one, with a warning, rather than a red CI for a security update.
apt_packages=(
  "postgresql-15=15.20-0+deb12u1"
  "postgresql-client-15=15.20-0+deb12u1"
  "redis-server=5:7.0.15-1~deb12u10"
  "redis-tools=5:7.0.15-1~deb12u10"
  # to build PgBouncer (below)
  "build-essential=12.9"
  "pkg-config=1.8.1-1"
  "libevent-dev=2.1.12-stable-8+deb12u1"
  "libc-ares-dev=1.18.1-3"
  "libssl-dev=3.0.22-1~deb12u2"
)

missing=()
for spec in "${apt_packages[@]}"; do
  name=${spec%%=*}
  if ! dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$spec")
  fi
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}" >&2
  apt-get update -qq >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    echo "bootstrap: WARNING pinned versions unavailable; installing the mirror's current ones" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]%%=*}" >&2
  fi
fi
# Debian starts the packaged services; the tests run their own on free ports.
for service in postgresql redis-server; do
  systemctl is-active --quiet "$service" 2>/dev/null && systemctl stop "$service" >/dev/null 2>&1 || true
done

# PgBouncer: the version the local cluster's image runs, Debian trixie's (bookworm's 1.18 has
# no max_prepared_statements). Trixie's .deb needs trixie's libraries, so its source package
# (upstream tarball + Debian's patches) is built here against bookworm's, into a directory
# keyed by that Debian version. The .dsc is pinned by sha256; it pins the tarballs.
pgbouncer_deb=$(. "$repo/tests/cluster/lib/versions.sh" && echo "$PGBOUNCER_TRIXIE_DEB")
pgbouncer_dsc_sha256=$(. "$repo/tests/cluster/lib/versions.sh" && echo "$PGBOUNCER_TRIXIE_DSC_SHA256")
pgbouncer_upstream=${pgbouncer_deb%%-*}
pgbouncer_home="$cache/pgbouncer-$pgbouncer_deb"
build_pgbouncer() {
  local pool=${DEBIAN_MIRROR:-http://deb.debian.org/debian}/pool/main/p/pgbouncer
  local work=$1 src=$1/pgbouncer-$pgbouncer_upstream file patch
  fetch() { python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$1" "$2"; }
  fetch "$pool/pgbouncer_$pgbouncer_deb.dsc" "$work/pgbouncer.dsc"
  echo "$pgbouncer_dsc_sha256  $work/pgbouncer.dsc" | sha256sum --check --quiet --strict -
  awk '/^Checksums-Sha256:/ {f = 1; next} /^[^ ]/ {f = 0} f && NF == 3 {print $1 "  " $3}' \
    "$work/pgbouncer.dsc" > "$work/SHA256SUMS"
  grep -q " pgbouncer_$pgbouncer_upstream.orig.tar.gz\$" "$work/SHA256SUMS"
  for file in $(awk '{print $2}' "$work/SHA256SUMS"); do fetch "$pool/$file" "$work/$file"; done
  (cd "$work" && sha256sum --check --quiet --strict SHA256SUMS)
  tar -xzf "$work/pgbouncer_$pgbouncer_upstream.orig.tar.gz" -C "$work"
  tar -xJf "$work/pgbouncer_$pgbouncer_deb.debian.tar.xz" -C "$src"
  while read -r patch _; do
    case "$patch" in ''|'#'*) continue ;; esac
    patch -d "$src" -p1 --forward --quiet < "$src/debian/patches/$patch"
  done < "$src/debian/patches/series"
  # Debian's compiler flags (hardening); no PAM, no systemd: the tests need neither.
  (cd "$src" && eval "$(dpkg-buildflags --export=sh)" \
    && ./configure --with-cares=yes --without-pam --without-systemd \
    && make -j"$(nproc)")
  "$src/pgbouncer" --version | grep -qx "PgBouncer $pgbouncer_upstream"
  rm -rf "$pgbouncer_home.partial"
  install -D -m 0755 "$src/pgbouncer" "$pgbouncer_home.partial/bin/pgbouncer"
  rm -rf "$pgbouncer_home"
  mv "$pgbouncer_home.partial" "$pgbouncer_home"
}
if [ ! -x "$pgbouncer_home/bin/pgbouncer" ]; then
  exec 8> "$cache/pgbouncer-build.lock"
  flock 8  # two sessions bootstrapping at once build it once
  if [ ! -x "$pgbouncer_home/bin/pgbouncer" ]; then
    echo "bootstrap: building PgBouncer $pgbouncer_deb into $pgbouncer_home" >&2
    pgbouncer_work=$(mktemp -d)
    trap 'rc=$?; if [ "$rc" != 0 ]; then tail -40 "$pgbouncer_work/build.log" >&2
          echo "bootstrap: building PgBouncer $pgbouncer_deb failed (a mirror that dropped that" \
               "revision needs PGBOUNCER_TRIXIE_DEB and its .dsc sha256 bumped in tests/cluster/lib/versions.sh)" >&2
          fi; rm -rf "$pgbouncer_work"' EXIT
    build_pgbouncer "$pgbouncer_work" > "$pgbouncer_work/build.log" 2>&1
    trap - EXIT
    rm -rf "$pgbouncer_work"
  fi
  exec 8>&-
fi

# promtool (the alert rules' tests): Debian trixie's, from its own binary package `promtool`
# (source prometheus), pinned by the .deb's sha256; only usr/bin/promtool is kept, in a
# directory keyed by the Debian version. Tests find it there (or via $PROMTOOL).
prometheus_deb=$(. "$repo/tests/cluster/lib/versions.sh" && echo "$PROMETHEUS_TRIXIE_DEB")
promtool_deb_sha256=$(. "$repo/tests/cluster/lib/versions.sh" && echo "$PROMTOOL_TRIXIE_DEB_SHA256")
promtool_home="$cache/prometheus-$prometheus_deb"
if [ ! -x "$promtool_home/bin/promtool" ]; then
  echo "bootstrap: fetching promtool $prometheus_deb into $promtool_home" >&2
  promtool_work=$(mktemp -d)
  python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
    "${DEBIAN_MIRROR:-http://deb.debian.org/debian}/pool/main/p/prometheus/promtool_${prometheus_deb}_amd64.deb" \
    "$promtool_work/promtool.deb"
  if ! echo "$promtool_deb_sha256  $promtool_work/promtool.deb" | sha256sum --check --quiet --strict - >&2; then
    echo "bootstrap: promtool_${prometheus_deb}_amd64.deb does not match its sha256 (a mirror that dropped that" \
         "revision needs PROMETHEUS_TRIXIE_DEB and PROMTOOL_TRIXIE_DEB_SHA256 bumped in tests/cluster/lib/versions.sh)" >&2
    rm -rf "$promtool_work"
    exit 1
  fi
  dpkg-deb -x "$promtool_work/promtool.deb" "$promtool_work/root"
  promtool_version=$("$promtool_work/root/usr/bin/promtool" --version 2>&1)
  grep -q "version ${prometheus_deb%%+*}" <<<"$promtool_version"
  rm -rf "$promtool_home.partial"
  install -D -m 0755 "$promtool_work/root/usr/bin/promtool" "$promtool_home.partial/bin/promtool"
  rm -rf "$promtool_home" "$promtool_work"
  mv "$promtool_home.partial" "$promtool_home"
fi

# The venv is keyed by the dependency list, so a change in pyproject.toml builds a new one.
key=$(cat "$repo/pyproject.toml" "$repo/tests/constraints.txt" | sha256sum | cut -c1-12)
venv="$cache/venv-py311-$key"
if [ ! -f "$venv/.complete" ]; then
  echo "bootstrap: creating $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -c "$repo/tests/constraints.txt" "$repo[test]" >&2
  touch "$venv/.complete"
fi
# Tests import the working tree, not the installed copy.
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$repo" >&2
# The data-plane tests' pgbouncer (tests/dataplane/harness.py; run.sh puts this bin on PATH).
ln -sfn "$pgbouncer_home/bin/pgbouncer" "$venv/bin/pgbouncer"
echo "$venv/bin/python"
