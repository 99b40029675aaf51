"""Backups on the real cluster: pgBackRest to two real S3 servers over verified TLS, the
first backup and WAL archiving reported in status, a backup taken while writes go on, and
point-in-time recovery into a new cluster that brings back a dropped table.

One backed-up cluster serves the module (shared, as CI time asks)."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import pytest

from backups import (S3Servers, backup_of, condition, create_cluster, db_time, repository, wait_archived)
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
    kubectl("delete", "namespace", namespace, "--wait=false", check=False)


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
                self.view.sql(primary, f"INSERT INTO {self.table} DEFAULT VALUES")
                self.count += 1
            except Exception:  # noqa: BLE001 - counted; the test asserts on it
                self.errors += 1
                time.sleep(0.2)


def test_backup_while_writing_then_point_in_time_recovery(kubectl, images, s3, source):
    primary = source.primary()
    source.sql(primary, "CREATE TABLE pitr_probe (id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
    writer = Inserts(source, "pitr_probe")
    writer.start()
    previous = source.status()["backup"].get("lastJob")
    kubectl("-n", source.namespace, "annotate", "sdc", "shop", "shopdb.io/backup-now=full",
            "shopdb.io/backup-repository=region-a")
    wait_for(lambda: source.status()["backup"].get("lastJob") not in (None, previous), 300,
             "the requested backup to finish", interval=3)
    writer.done.set()
    writer.join(timeout=30)
    assert condition(source, "LastBackupSucceeded")["status"] == "True", condition(source, "LastBackupSucceeded")
    assert writer.count > 0 and writer.errors == 0, (writer.count, writer.errors)

    # a point in time: rows before it must come back, the dropped table too; nothing after it
    kept = source.sql(primary, "SELECT count(*) FROM pitr_probe")[0][0]
    time.sleep(1)
    target = db_time(source)
    time.sleep(1)
    source.sql(primary, "INSERT INTO pitr_probe DEFAULT VALUES")
    source.sql(primary, "DROP TABLE products CASCADE")
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
        assert restored.sql(new_primary, "SELECT to_regclass('public.products') IS NOT NULL")[0][0]
        assert restored.sql(new_primary, "SELECT pg_is_in_recovery()")[0][0] is False
        # an ordinary cluster: its replica cloned from the restored primary streams
        wait_for(lambda: restored.all_replicas_stream(["shop-1", "shop-2"]), 180, "the restored replica to stream")
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _logs(kubectl, namespace: str) -> str:
    proc = subprocess.run(["kubectl", "--kubeconfig", kubectl.kubeconfig, "-n", namespace, "logs", "shop-1-0",
                           "-c", "postgres", "--tail=50"], capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr
