# shellcheck shell=bash disable=SC2034
# Pinned versions for the local cluster (sourced by localkube and lib/*.sh).
# k8s: v1.34.4 is the newest v1.34 k8s.io/kubernetes on the Go module proxy reachable here
# (it has v1.34.0, v1.34.2-4, then v1.35.4), and the only one of them with every staging
# module at its matching v0.34.x (k8s.io/endpointslice starts at v0.34.4). v1.34 is the last
# minor whose kubelet runs on cgroup v1 without `failCgroupV1: false`. Toolchain = that
# release's own .go-version (build-k8s.sh refuses any other), fetched as golang.org/toolchain.
K8S_VERSION=${K8S_VERSION:-v1.34.4}
K8S_GO_TOOLCHAIN=${K8S_GO_TOOLCHAIN:-go1.24.12}
COREDNS_VERSION=v1.11.3          # Kubernetes 1.32's CoreDNS; 1.34 ships v1.12.1, v1.11.3 still serves it
HELM_VERSION=v3.17.4             # built against k8s.io/* v0.32; fine against a v1.34 server
# Debian bookworm package versions used inside the images
POSTGRES_DEB=15.20-0+deb12u1
REDIS_DEB=5:7.0.15-1~deb12u10
PYTHON_DEB=3.11.2-1+b1
PGBACKREST_DEB=2.45-1
# Debian trixie's PgBouncer (the pgbouncer image is built on trixie: 1.24 has
# max_prepared_statements). tests/bootstrap.sh builds the same Debian source (upstream
# tarball + Debian's patches) for the host's data-plane tests; the .dsc's sha256 pins both.
PGBOUNCER_TRIXIE_DEB=1.24.1-1+deb13u2
PGBOUNCER_TRIXIE_DSC_SHA256=dc1bc121e10a7ac2da987e72bb13798c94a7ff162ddc480d93a3f93c19b637a7
# promtool of Debian trixie's Prometheus (the alert rules' tests: promtool check/test rules).
# Debian ships it as its own binary package, promtool_<version>_amd64.deb (source prometheus);
# tests/bootstrap.sh fetches that .deb, checks this sha256 (from trixie's Packages index) and
# extracts usr/bin/promtool (a Go binary needing only libc >= 2.34: runs on bookworm).
PROMETHEUS_TRIXIE_DEB=2.53.3+ds1-2
PROMTOOL_TRIXIE_DEB_SHA256=ff27654eacc95abd846d344e91fe4ba3b4f0588a50d606ed1d2f09ad3408722f
# S3 server of the backup tests (Apache-2.0), go install'ed
VERSITYGW_VERSION=v1.8.0

LK_CACHE=${LK_CACHE:-/var/cache/shopdb-localkube}
K8S_BIN=$LK_CACHE/k8s-$K8S_VERSION/bin
TOOLS_BIN=$LK_CACHE/tools-coredns-$COREDNS_VERSION-helm-$HELM_VERSION/bin

PAUSE_IMAGE=localhost/shopdb/pause:3.10
COREDNS_IMAGE=localhost/shopdb/coredns:${COREDNS_VERSION#v}
POSTGRES_IMAGE=localhost/shopdb/postgres:15
PGBOUNCER_IMAGE=localhost/shopdb/pgbouncer:1
REDIS_IMAGE=localhost/shopdb/redis:7
OPERATOR_IMAGE=localhost/shopdb/operator:dev
VERSITYGW_IMAGE=localhost/shopdb/versitygw:${VERSITYGW_VERSION#v}
VERSITYGW_BIN=$LK_CACHE/versitygw-$VERSITYGW_VERSION/bin
