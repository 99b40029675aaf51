"""Backups on the real cluster: pgBackRest to two real S3 servers over verified TLS, the
first backup and WAL archiving reported in status, a backup taken while writes go on, and
point-in-time recovery into a new cluster that brings back a dropped table.

One backed-up cluster serves the module (shared, as CI time asks)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from backups import (S3Servers, backup_of, condition, create_cluster, db_time, execute, repository, wait_archived)
from support import is_local_cluster, wait_for

pytestmark = pytest.mark.e2e

SOURCE_REPLICAS = [{"name": "search", "poolSize": 10},
                   {"name": "analytics", "poolSize": 5, "promotable": False, "analytics": True}]
RECOVERY_REPLICAS = [{"name": "search", "poolSize": 10}]
BACKUP_RESOURCES = {"cpu": "100m", "memory": "128Mi"}


@pytest.fixture(scope="module")
def s3(kubectl, images, operator):
    if not is_local_cluster(kubectl):
        pytest.skip("the backup tests read the clusters' pods by their addresses, which only the local cluster "
                    "(tests/cluster/localkube) routes to the test host")
    servers = S3Servers(kubectl, images)
    servers.start()
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def source(kubectl, images, s3):
    namespace = f"e2e-backup-{uuid.uuid4().hex[:6]}"
    backup = {"repositories": [repository("a"), repository("b")], "resources": BACKUP_RESOURCES,
              "archiveTimeoutSeconds": 30}
    view = create_cluster(kubectl, images, s3, namespace, {"backup": backup}, SOURCE_REPLICAS)
    wait_for(lambda: all(backup_of(view, f"region-{r}").get("lastSuccessfulBackup") for r in "ab"), 300,
             "the first full backup in both repositories", interval=3)
    yield view
    delete_namespace(kubectl, namespace)


def test_first_backup_and_archiving_are_in_status(source):
    for region in "ab":
        held = backup_of(source, f"region-{region}")
        last = held["lastSuccessfulBackup"]
        assert last["type"] == "full" and last["sizeBytes"] > 0 and last["repositorySizeBytes"] > 0, held
        assert held["firstRecoverabilityPoint"] == last["finishedAt"]
    assert condition(source, "LastBackupSucceeded")["status"] == "True"
    wait_archived(source)
    wait_for(lambda: condition(source, "ContinuousArchiving").get("status") == "True", 60, "ContinuousArchiving")
    archiving = source.status()["backup"]["archiving"]
    assert archiving["lastArchivedWal"] and archiving["lastArchivedAgeSeconds"] < 120


class Inserts(threading.Thread):
    """Rows inserted straight into the primary, as fast as one client goes, until stopped."""

    def __init__(self, view, table: str):
        super().__init__(daemon=True)
        self.view, self.table, self.done, self.count, self.errors = view, table, threading.Event(), 0, 0

    def run(self) -> None:
        primary = self.view.primary()
        while not self.done.is_set():
            try:
                execute(self.view, primary, f"INSERT INTO {self.table} DEFAULT VALUES")
                self.count += 1
            except Exception:  # noqa: BLE001 - counted; the test asserts on it
                self.errors += 1
                time.sleep(0.2)


def test_backup_while_writing_then_point_in_time_recovery(kubectl, images, s3, source):
    primary = source.primary()
    execute(source, primary, "CREATE TABLE pitr_probe (id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
    execute(source, primary, "CREATE TABLE products_probe AS SELECT i AS id, 'product ' || i AS name "
                             "FROM generate_series(1, 300) i")
    writer = Inserts(source, "pitr_probe")
    writer.start()
    previous = source.status()["backup"].get("lastJob")
    request(kubectl, source, "shopdb.io/backup-now=full", "shopdb.io/backup-repository=region-a")
    wait_new_backup_job(source, previous)
    writer.done.set()
    writer.join(timeout=30)
    assert condition(source, "LastBackupSucceeded")["status"] == "True", condition(source, "LastBackupSucceeded")
    assert writer.count > 0 and writer.errors == 0, (writer.count, writer.errors)

    # a point in time: rows before it must come back, the dropped table too; nothing after it
    kept = source.sql(primary, "SELECT count(*) FROM pitr_probe")[0][0]
    time.sleep(1)
    target = db_time(source)
    time.sleep(1)
    execute(source, primary, "INSERT INTO pitr_probe DEFAULT VALUES")
    execute(source, primary, "DROP TABLE products_probe")  # the bad migration
    wait_archived(source)

    namespace = f"e2e-restore-{uuid.uuid4().hex[:6]}"
    recovery = {"recovery": {"source": {"clusterName": "shop", "namespace": source.namespace,
                                        "repository": repository("a")},
                             "target": {"time": target}}}
    started = time.monotonic()
    try:
        restored = create_cluster(kubectl, images, s3, namespace, {"bootstrap": recovery}, RECOVERY_REPLICAS)
        print(f"\nrecovery cluster Ready {time.monotonic() - started:.0f}s after apply "
              f"({kept} rows before the target)")
        new_primary = restored.primary()
        assert restored.sql(new_primary, "SELECT count(*) FROM pitr_probe")[0][0] == kept
        assert restored.sql(new_primary, "SELECT count(*) FROM products_probe")[0][0] == 300
        assert restored.sql(new_primary, "SELECT pg_is_in_recovery()")[0][0] is False
        # an ordinary cluster: its replica cloned from the restored primary streams
        wait_for(lambda: restored.all_replicas_stream(["shop-1", "shop-2"]), 180, "the restored replica to stream")
    finally:
        delete_namespace(kubectl, namespace)


def delete_namespace(kubectl, namespace: str) -> None:
    """Gone before the next cluster comes: two clusters and two S3 servers fill two cores."""
    kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=240s", check=False, timeout=300)


def request(kubectl, view, *annotations: str) -> None:
    kubectl("-n", view.namespace, "annotate", "--overwrite", "sdc", "shop", *annotations)


def wait_new_backup_job(view, previous: str | None) -> dict:
    wait_for(lambda: (view.status().get("backup") or {}).get("lastJob") not in (None, previous), 400,
             "the requested backup to finish", interval=3)
    return view.status()["backup"]


def test_a_lost_repository_stops_archiving_there_only_and_the_other_region_restores(kubectl, images, s3, source):
    """After a failover between two backups, region A's bucket is wiped (its server's volume is
    lost): archiving reports the failure
    (condition, Event) while the database keeps serving; region B holds what was archived;
    a cluster in another namespace is made from region B alone, at the latest point (across
    the failover's new timeline); a new backup to region A heals it, and the WAL held back
    meanwhile reaches both."""
    # first a failover between two backups: the new primary archives on its new timeline
    old = source.primary()
    execute(source, old, "CREATE TABLE region_probe (id int PRIMARY KEY)")
    execute(source, old, "INSERT INTO region_probe SELECT generate_series(1, 500)")
    kubectl("-n", source.namespace, "delete", "pod", f"{old}-0", "--wait=false")
    primary = wait_for(lambda: source.primary() != old and source.primary(), 180, "the failover", interval=2)
    wait_for(lambda: source.sql(primary, "SELECT NOT pg_is_in_recovery()")[0][0], 60, "the new primary", interval=1)
    execute(source, primary, "INSERT INTO region_probe SELECT generate_series(501, 1000)")
    wait_archived(source)
    kubectl("-n", "shopdb-e2e-s3", "delete", "pod", "-l", "app=s3-a", "--wait=true", timeout=120)
    kubectl("-n", "shopdb-e2e-s3", "rollout", "status", "deployment/s3-a", "--timeout=120s", timeout=150)
    execute(source, primary, "INSERT INTO region_probe SELECT generate_series(1001, 1500)")
    source.sql(primary, "SELECT pg_switch_wal()")
    wait_for(lambda: condition(source, "ContinuousArchiving").get("status") == "False", 120,
             "ContinuousArchiving to turn False", interval=2)
    assert "ArchivingFailed" in events(kubectl, source.namespace)
    # the database keeps serving writes
    execute(source, primary, "INSERT INTO region_probe SELECT generate_series(1501, 2000)")
    # With synchronous archive-push, region B gets at most one segment ahead of the failing
    # region A (pgBackRest's documented limit without archive-async): the rows archived
    # before the loss are the promise.
    archived_before_the_loss = 1000

    namespace = f"e2e-region-{uuid.uuid4().hex[:6]}"
    recovery = {"recovery": {"source": {"clusterName": "shop", "namespace": source.namespace,
                                        "repository": repository("b")}}}
    started = time.monotonic()
    try:
        restored = create_cluster(kubectl, images, s3, namespace, {"bootstrap": recovery}, RECOVERY_REPLICAS)
        print(f"\nregion B recovery Ready {time.monotonic() - started:.0f}s after apply")
        recovered = restored.sql(restored.primary(), "SELECT count(*) FROM region_probe")[0][0]
        print(f"region B alone: {recovered} of 2000 rows ({archived_before_the_loss} archived before region A was lost)")
        assert recovered >= archived_before_the_loss
    finally:
        delete_namespace(kubectl, namespace)

    # a full backup to region A creates the stanza again: archiving there resumes, nothing lost
    previous = source.status()["backup"].get("lastJob")
    request(kubectl, source, "shopdb.io/backup-now=full", "shopdb.io/backup-repository=region-a")
    wait_new_backup_job(source, previous)
    wait_archived(source)
    wait_for(lambda: condition(source, "ContinuousArchiving").get("status") == "True", 120,
             "ContinuousArchiving to recover", interval=2)


def events(kubectl, namespace: str) -> str:
    return kubectl("-n", namespace, "get", "events", "-o", "custom-columns=R:.reason,M:.message").stdout


def test_retention_prunes_expired_full_backups_and_their_wal(kubectl, source):
    before = backup_of(source, "region-b")
    assert len([b for b in before["backups"] if b["type"] == "full"]) >= 1
    kubectl("-n", source.namespace, "patch", "sdc", "shop", "--type=json", "-p",
            '[{"op": "add", "path": "/spec/backup/repositories/1/retention/fullCount", "value": 1}]')
    wait_for(lambda: "repo2-retention-full-type=count" in kubectl(
        "-n", source.namespace, "get", "configmap", "shop-pgbackrest", "-o", "jsonpath={.data.job\\.conf}").stdout,
        60, "the count retention in job.conf")
    previous = source.status()["backup"].get("lastJob")
    request(kubectl, source, "shopdb.io/backup-now=full", "shopdb.io/backup-repository=region-b")
    wait_new_backup_job(source, previous)
    after = backup_of(source, "region-b")
    assert [b["type"] for b in after["backups"]] == ["full"], after["backups"]
    assert after["backups"][0]["label"] not in {b["label"] for b in before["backups"]}
    # the WAL the pruned backups needed is gone too: the archive starts at the kept backup
    assert after["walRange"][0] == after["backups"][0]["walStart"], after
    assert after["firstRecoverabilityPoint"] > before["firstRecoverabilityPoint"]


def test_restore_verification_passes_then_reports_a_damaged_backup(kubectl, source):
    def verification():
        return (source.status().get("backup") or {}).get("lastVerifiedBackup") or {}

    request(kubectl, source, "shopdb.io/verify-now=region-b")
    wait_for(lambda: verification().get("result"), 600, "the restore verification", interval=3)
    good = verification()
    print(f"\nrestore verification of {good['label']}: {good['result']} in {good['durationSeconds']}s")
    assert good["result"] == "Succeeded", good
    assert good["label"] == backup_of(source, "region-b")["lastSuccessfulBackup"]["label"]
    assert condition(source, "BackupVerified")["status"] == "True"

    damaged = damage_a_backup_file(kubectl, source, "b", good["label"])
    request(kubectl, source, "shopdb.io/verify-now=region-b")
    wait_for(lambda: verification().get("job") != good["job"], 600, "the second verification", interval=3)
    bad = verification()
    assert bad["result"] == "Failed", (damaged, bad)
    assert condition(source, "BackupVerified")["status"] == "False"
    assert "RestoreVerificationFailed" in events(kubectl, source.namespace)


def damage_a_backup_file(kubectl, view, region: str, label: str) -> str:
    """Flip bytes in the middle of the largest file of a backup set, on the S3 server's volume
    (the test host is the local cluster's node, so the volume is a directory here)."""
    pod = kubectl.json("-n", "shopdb-e2e-s3", "get", "pods", "-l", f"app=s3-{region}")["items"][0]
    root = Path(f"/var/lib/shopdb-localkube/kubelet/pods/{pod['metadata']['uid']}/volumes/kubernetes.io~empty-dir/data")
    backup_dir = next(root.glob(f"shop-backups/shopdb/{view.namespace}/shop/backup/shop/{label}"))
    victim = max((p for p in backup_dir.rglob("*") if p.is_file() and "pg_data" in p.parts),
                 key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    victim.write_bytes(bytes(data))
    return str(victim.relative_to(backup_dir))


def test_an_image_without_pgbackrest_fails_with_one_clear_line(kubectl, images, s3, source):
    """Backups configured, an image that has bash but no pgBackRest (the local PgBouncer image):
    the instance does not start, and says why in status and in a Warning Event."""
    namespace = f"e2e-nopgbr-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    try:
        s3.client_secrets(namespace)
        cluster = {"apiVersion": "shopdb.io/v1alpha1", "kind": "ShopDatabaseCluster",
                   "metadata": {"name": "shop", "namespace": namespace},
                   "spec": {"postgres": {"image": images.pgbouncer, "storage": {"size": "1Gi"},
                                         "resources": {"primary": {"cpu": "50m", "memory": "128Mi"},
                                                       "replica": {"cpu": "50m", "memory": "128Mi"}}},
                            "replicas": [], "failover": {"enabled": False},
                            "pgbouncer": {"instances": 1, "image": images.pgbouncer, "readOnlyPoolSize": 0,
                                          "resources": {"cpu": "20m", "memory": "32Mi"}},
                            "redis": {"enabled": False},
                            "maintenance": {"partitionedTables": [], "materializedViews": []},
                            "backup": {"repositories": [repository("a")],
                                       "resources": {"cpu": "20m", "memory": "64Mi"}},
                            "reclaimPolicy": "Delete"}}
        kubectl.apply(yaml.safe_dump(cluster))

        def failure():
            instances = (kubectl.json("-n", namespace, "get", "sdc", "shop").get("status") or {}).get("instances")
            return next((i.get("error") for i in instances or [] if i.get("error")), None)

        error = wait_for(failure, 180, "the instance's failure in status", interval=3)
        assert "has no pgbackrest" in error, error
        assert "InstanceFailing" in events(kubectl, namespace)
    finally:
        delete_namespace(kubectl, namespace)
