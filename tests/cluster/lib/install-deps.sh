#!/usr/bin/env bash
# Debian packages the local cluster needs, pinned to the bookworm versions it was
# built and tested with. If a pinned version has gone from the mirror (point
# release), fall back to the current candidate and say so.
set -euo pipefail
PKGS=(
  etcd-server=3.4.23-4+b4
  containerd=1.6.20~ds1-1+deb12u3
  runc=1.1.5+ds1-1+deb12u1
  containernetworking-plugins=1.1.1+ds1-3+b5
  iptables=1.8.9-2
  conntrack=1:1.4.7-1+b2
  debootstrap=1.0.128+nmu2+deb12u2
  socat=1.7.4.4-2
  ethtool=1:6.1-1
  ebtables=2.0.11-5
  kmod=30+20221128-1
  openssl
  iproute2
  procps
  psmisc
  util-linux
  curl
)
missing=()
for p in "${PKGS[@]}"; do
  name=${p%%=*}; want=${p#*=}; [ "$want" = "$p" ] && want=""
  have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)
  case "$have" in
    "install ok installed $want"|"install ok installed "*) [ -z "$want" ] || [ "$have" = "install ok installed $want" ] || missing+=("$p") ;;
    *) missing+=("$p") ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "localkube: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# No service may be started by a postinst (etcd would grab :2379).
if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi
apt-get update -qq || true
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  echo "localkube: pinned versions unavailable, installing current candidates" >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]%%=*}" >/dev/null
fi
