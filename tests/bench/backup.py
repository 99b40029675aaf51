"""Backup benchmark on the local cluster: pgBackRest to a real S3 server (versitygw, TLS),
with a database of --size-gb (2 by default):

- backup:  full backup duration and throughput (MB/s of database) for each --process-max,
           with the pgBackRest sidecar and the backup Job at 500m CPU each
- RPO:     a client commits a timestamped row every 50 ms; the primary's processes are
           frozen (--loss frozen, a node lost) and the cluster and its volumes are deleted
           (reclaimPolicy Delete) while it writes; a recovery cluster at the latest point holds
           rows up to some moment: the seconds of commits lost
- restore: pgBackRest restore and WAL replay of the recovery cluster's first primary, for
           each --process-max (the recovery cluster is made again for each)
- RTO:     from `kubectl apply` of the recovery cluster to Ready (restore, replay, promotion,
           the primary serving; no replica, as above)

Numbers, not a test: it asserts nothing. Usage (as root, for the local cluster):

    make bench-backup                       # 2 GB, process-max 1 and 2
    python tests/bench/backup.py --size-gb 0.2 --process-max 2    # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))

import yaml  # noqa: E402

from backups import Committer, S3Servers, backup_of, execute, repository  # noqa: E402
from conftest import LOCALKUBE, Images, Kubectl  # noqa: E402
from failover import ensure_cluster  # noqa: E402  (tests/bench/failover.py)
from load import ClusterView, query  # noqa: E402
from support import example_cluster, install_operator, wait_for  # noqa: E402

S3_NAMESPACE, SOURCE, RESTORE = "bench-s3", "bench-backup", "bench-restore"
ROW_BYTES = 250  # what one generated row takes on disk, roughly
BACKUP_CPU = "500m"


def sized(cluster: dict, process_max: int, storage: str) -> dict:
    spec = cluster["spec"]
    # Two cores hold the primary, its pgBackRest sidecar and the backup Job (both with
    # spec.backup.resources, Guaranteed), the operator and the S3 server: no replica, so the
    # backup runs off the primary (the fallback when no standby streams).
    spec["replicas"] = []
    spec["failover"] = {"enabled": False}
    spec["postgres"]["resources"] = {"primary": {"cpu": "700m", "memory": "2Gi"},
                                     "replica": {"cpu": "100m", "memory": "256Mi"}}
    spec["postgres"]["storage"] = {"size": storage}
    spec["postgres"].pop("initSQL", None)
    spec["pgbouncer"].update({"instances": 1, "resources": {"cpu": "50m", "memory": "64Mi"}})
    spec["redis"]["enabled"] = False
    spec["maintenance"] = {"partitionedTables": [], "materializedViews": []}
    spec["backup"] = {"repositories": [repository("a", S3_NAMESPACE)], "processMax": process_max,
                      "resources": {"cpu": BACKUP_CPU, "memory": "512Mi"}, "verify": {"enabled": False}}
    return cluster


def apply_cluster(kubectl: Kubectl, images: Images, s3: S3Servers, namespace: str, extra: dict,
                  process_max: int, storage: str) -> float:
    kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=true", timeout=600)
    kubectl("create", "namespace", namespace)
    s3.client_secrets(namespace)
    cluster = sized(example_cluster(images, namespace), process_max, storage)
    cluster["spec"].update(extra)
    applied = time.monotonic()
    kubectl.apply(yaml.safe_dump(cluster))
    wait_for(lambda: (kubectl.json("-n", namespace, "get", "sdc", "shop").get("status") or {}).get("phase")
             == "Ready", 3600, f"{namespace}/shop to become Ready", interval=2)
    return time.monotonic() - applied


def load(view: ClusterView, size_gb: float) -> float:
    primary = view.primary()
    execute(view, primary, "CREATE TABLE bench_data (id bigint, pad text)")
    rows, batch, started = int(size_gb * 1024 ** 3 / ROW_BYTES), 1_000_000, time.monotonic()
    for first in range(0, rows, batch):
        execute(view, primary, "INSERT INTO bench_data SELECT i, md5(random()::text) || md5(random()::text) || "
                                "md5(random()::text) || md5(random()::text) || md5(random()::text) || "
                                "md5(random()::text) FROM generate_series(%s, %s) i",
                (first, min(first + batch, rows) - 1))
    return time.monotonic() - started


def database_bytes(view: ClusterView) -> int:
    return view.sql(view.primary(), "SELECT sum(pg_database_size(datname)) FROM pg_database")[0][0]


def backup(kubectl: Kubectl, view: ClusterView, process_max: int) -> dict:
    kubectl("-n", view.namespace, "patch", "sdc", "shop", "--type=merge", "-p",
            f'{{"spec": {{"backup": {{"processMax": {process_max}}}}}}}')
    wait_for(lambda: f"process-max={process_max}" in kubectl(
        "-n", view.namespace, "get", "configmap", "shop-pgbackrest", "-o", "jsonpath={.data.job\\.conf}").stdout,
        120, "the new process-max in job.conf")
    previous = view.status()["backup"].get("lastJob")
    kubectl("-n", view.namespace, "annotate", "--overwrite", "sdc", "shop", "shopdb.io/backup-now=full")
    wait_for(lambda: view.status()["backup"].get("lastJob") not in (None, previous), 7200, "the backup", interval=5)
    return backup_of(view, "region-a")["lastSuccessfulBackup"]


def restore_seconds(kubectl: Kubectl, namespace: str) -> tuple[float | None, float | None]:
    """(pgBackRest restore, WAL replay) of the restored primary, from its log's timestamps."""
    text = kubectl("-n", namespace, "logs", "shop-1-0", "-c", "postgres", check=False).stdout
    stamps = {}
    for key, pattern in (("start", "restoring stanza"), ("replay", "replaying WAL"), ("end", "recovery reached")):
        match = re.search(r"^(\S+) shopdb\[[^]]+\]: " + pattern, text, re.M)
        if match:
            stamps[key] = datetime.datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
    if len(stamps) < 3:
        return None, None
    return stamps["replay"] - stamps["start"], stamps["end"] - stamps["replay"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--process-max", default="1,2", help="backups with each of these (comma-separated)")
    parser.add_argument("--loss", choices=["frozen", "graceful"], default="frozen",
                        help="frozen: the primary's processes are stopped, then the cluster deleted (a node "
                             "lost); graceful: deleted while running (PostgreSQL archives its last segment)")
    parser.add_argument("--keep", action="store_true", help="keep the namespaces (and a cluster brought up)")
    args = parser.parse_args()
    process_maxes = [int(p) for p in args.process_max.split(",")]
    storage = f"{max(5, int(args.size_gb * 3) + 2)}Gi"

    kubeconfig, started_cluster = ensure_cluster()
    kubectl, images = Kubectl(kubeconfig), Images.from_env()
    s3 = S3Servers(kubectl, images, S3_NAMESPACE)
    try:
        install_operator(kubectl, images)
        s3.start()
        kubectl("-n", S3_NAMESPACE, "scale", "deployment", "s3-b", "--replicas=0")  # one region is enough here
        apply_cluster(kubectl, images, s3, SOURCE, {"reclaimPolicy": "Delete"}, process_maxes[-1], storage)
        view = ClusterView(kubeconfig, SOURCE)
        wait_for(lambda: backup_of(view, "region-a").get("lastSuccessfulBackup"), 1800, "the first backup", 5)
        seconds = load(view, args.size_gb)
        size = database_bytes(view)
        print(f"database: {size / 1024 ** 2:.0f} MB, loaded in {seconds:.0f}s", flush=True)
        print(f"{'process-max':>11} {'seconds':>8} {'MB/s':>7} {'stored MB':>10}", flush=True)
        for process_max in process_maxes:
            result = backup(kubectl, view, process_max)
            print(f"{process_max:>11} {result['durationSeconds']:>8} "
                  f"{result['sizeBytes'] / 1024 ** 2 / max(result['durationSeconds'], 1):>7.1f} "
                  f"{result['repositorySizeBytes'] / 1024 ** 2:>10.0f}", flush=True)

        committer = Committer(view)
        committer.start()
        time.sleep(90)
        if args.loss == "frozen":
            # every process of the primary's pod stops at once (as on a node that dies): the
            # segment being written never reaches the archive; deletion then kills them
            kubectl("-n", SOURCE, "exec", f"{view.primary()}-0", "-c", "postgres", "--", "bash", "-c", "kill -STOP -1")
        deleted_at = time.time()
        kubectl("-n", SOURCE, "delete", "sdc", "shop", "--wait=false")
        committer.join(timeout=120)
        committer.done.set()
        recovery = {"bootstrap": {"recovery": {"source": {"clusterName": "shop", "namespace": SOURCE,
                                                          "repository": repository("a", S3_NAMESPACE)}}}}
        print(f"{'restore process-max':>19} {'pgBackRest s':>12} {'WAL replay s':>12} {'RTO s':>6}", flush=True)
        for process_max in process_maxes:
            rto = apply_cluster(kubectl, images, s3, RESTORE, recovery, process_max, storage)
            restore, replay = restore_seconds(kubectl, RESTORE)
            print(f"{process_max:>19} {restore:>12} {replay:>12} {rto:>6.0f}", flush=True)
        restored = ClusterView(kubeconfig, RESTORE)
        recovered = restored.sql(restored.primary(), "SELECT max(at) FROM rpo_probe")[0][0]
        lost = (committer.last_acked - recovered).total_seconds()
        print(f"RPO ({args.loss} primary, archive_timeout 60s): {lost:.1f}s of acknowledged commits lost "
              f"({len(committer.acked)} acknowledged; the cluster was deleted "
              f"{deleted_at - committer.last_acked.timestamp():.1f}s after the last one)")
    finally:
        if not args.keep:
            for namespace in (SOURCE, RESTORE):
                kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false", check=False)
            s3.stop()
            if started_cluster:
                subprocess.run([str(LOCALKUBE), "down"], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
