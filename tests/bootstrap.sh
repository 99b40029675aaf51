#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian bookworm machine, pinned:
# Debian packages (PostgreSQL, PgBouncer, Redis) and a Python venv outside the repo.
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
  "pgbouncer=1.18.0-1+deb12u1"
  "redis-server=5:7.0.15-1~deb12u10"
  "redis-tools=5:7.0.15-1~deb12u10"
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
for service in postgresql redis-server pgbouncer; do
  systemctl is-active --quiet "$service" 2>/dev/null && systemctl stop "$service" >/dev/null 2>&1 || true
done

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
echo "$venv/bin/python"
