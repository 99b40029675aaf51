"""Backups on the real cluster: pgBackRest to two real S3 servers over verified TLS, the
first backup and WAL archiving reported in status, a backup taken while writes go on, and
point-in-time recovery into a new cluster that brings back a dropped table.

One backed-up cluster serves the module (shared, as CI time asks)."""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from shopdb_operator import certs

from backups import (Committer, S3Servers, backup_of, condition, create_cluster, db_time, execute, repository,
                     wait_archived)
from support import is_local_cluster, wait_for

pytestmark = pytest.mark.e2e

SOURCE_REPLICAS = [{"name": "search", "poolSize": 10},
                   {"name": "analytics", "poolSize": 5, "promotable": False, "analytics": True}]
RECOVERY_REPLICAS = [{"name": "search", "poolSize": 10}]
BACKUP_RESOURCES = {"cpu": "100m", "memory": "128Mi"}
ARCHIVE_TIMEOUT = 30
ARCHIVE_SLACK = 10  # seconds for archive-push of the switched segment to two repositories


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
              "archiveTimeoutSeconds": ARCHIVE_TIMEOUT}
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
    """After a failover between two backups (pgBackRest's check passes on the new primary),
    region A's bucket is wiped (its server's volume is lost): archiving reports the failure
    (condition with the reason, Event) while the database keeps serving; region B stays
    current; a cluster in another namespace is made from region B alone, at the latest point
    (across the failover's new timeline), with every row; a new backup to region A heals it,
    and the WAL held back meanwhile reaches both."""
    # first a failover between two backups: the new primary archives on its new timeline
    old = source.primary()
    execute(source, old, "CREATE TABLE region_probe (id int PRIMARY KEY)")
    execute(source, old, "INSERT INTO region_probe SELECT generate_series(1, 500)")
    kubectl("-n", source.namespace, "delete", "pod", f"{old}-0", "--wait=false")
    primary = wait_for(lambda: source.primary() != old and source.primary(), 180, "the failover", interval=2)
    wait_for(lambda: source.sql(primary, "SELECT NOT pg_is_in_recovery()")[0][0], 60, "the new primary", interval=1)
    execute(source, primary, "INSERT INTO region_probe SELECT generate_series(501, 1000)")
    wait_archived(source)
    # pgBackRest's own check on the new primary: its WAL reaches both repositories
    checked = kubectl("-n", source.namespace, "exec", f"{primary}-0", "-c", "postgres", "--", "bash",
                      "/etc/shopdb/scripts/pgbackrest.sh", "instance", "--stanza=shop", "check", timeout=180)
    assert "check command end: completed successfully" in checked.stdout, checked.stdout
    kubectl("-n", "shopdb-e2e-s3", "delete", "pod", "-l", "app=s3-a", "--wait=true", timeout=120)
    kubectl("-n", "shopdb-e2e-s3", "rollout", "status", "deployment/s3-a", "--timeout=120s", timeout=150)
    execute(source, primary, "INSERT INTO region_probe SELECT generate_series(1001, 1500)")
    source.sql(primary, "SELECT pg_switch_wal()")
    wait_for(lambda: condition(source, "ContinuousArchiving").get("status") == "False", 120,
             "ContinuousArchiving to turn False", interval=2)
    assert "ArchivingFailed" in events(kubectl, source.namespace)
    failing = source.status()["backup"]["archiving"]["failingRepositories"]
    assert [f.get("repository") for f in failing] == ["region-a"], failing
    # the database keeps serving writes, and region B stays current (asynchronous archive-push)
    execute(source, primary, "INSERT INTO region_probe SELECT generate_series(1501, 2000)")
    last = source.sql(primary, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    wait_for(lambda: in_bucket(kubectl, "b", f"shopdb/{source.namespace}/shop/archive/shop/*/{last[:16]}/{last}-*"),
             120, f"{last} in region B while region A fails", interval=2)
    assert not in_bucket(kubectl, "a", f"shopdb/{source.namespace}/shop/archive/shop/*/{last[:16]}/{last}-*")

    namespace = f"e2e-region-{uuid.uuid4().hex[:6]}"
    recovery = {"recovery": {"source": {"clusterName": "shop", "namespace": source.namespace,
                                        "repository": repository("b")}}}
    started = time.monotonic()
    try:
        restored = create_cluster(kubectl, images, s3, namespace, {"bootstrap": recovery}, RECOVERY_REPLICAS)
        print(f"\nregion B recovery Ready {time.monotonic() - started:.0f}s after apply")
        recovered = restored.sql(restored.primary(), "SELECT count(*) FROM region_probe")[0][0]
        assert recovered == 2000
    finally:
        delete_namespace(kubectl, namespace)

    # a full backup to region A creates the stanza again: archiving there resumes, nothing lost
    previous = source.status()["backup"].get("lastJob")
    request(kubectl, source, "shopdb.io/backup-now=full", "shopdb.io/backup-repository=region-a")
    wait_new_backup_job(source, previous)
    assert condition(source, "LastBackupSucceeded")["status"] == "True", condition(source, "LastBackupSucceeded")
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


def bucket_dir(kubectl, region: str) -> Path:
    """The bucket of a region's S3 server, on its volume: the test host is the local
    cluster's node, so the volume is a directory here."""
    pod = next(p for p in kubectl.json("-n", "shopdb-e2e-s3", "get", "pods", "-l", f"app=s3-{region}")["items"]
               if not p["metadata"].get("deletionTimestamp"))
    root = Path(f"/var/lib/shopdb-localkube/kubelet/pods/{pod['metadata']['uid']}/volumes/kubernetes.io~empty-dir/data")
    return root / "shop-backups"


def in_bucket(kubectl, region: str, pattern: str) -> list[Path]:
    return list(bucket_dir(kubectl, region).glob(pattern))


def damage_a_backup_file(kubectl, view, region: str, label: str) -> str:
    """Flip bytes in the middle of the largest file of a backup set, on the S3 server's volume."""
    backup_dir = next(bucket_dir(kubectl, region).glob(f"shopdb/{view.namespace}/shop/backup/shop/{label}"))
    victim = max((p for p in backup_dir.rglob("*") if p.is_file() and "pg_data" in p.parts),
                 key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    victim.write_bytes(bytes(data))
    return str(victim.relative_to(backup_dir))


def test_bad_repository_settings_fail_archiving_with_the_reason_and_lose_nothing(kubectl, s3, source):
    """A missing bucket, a wrong secret key, a CA that did not sign the S3 server: each turns
    ContinuousArchiving False with pgBackRest's reason per repository and a Warning Event; the
    database keeps taking writes; once the setting is right again, the WAL held back meanwhile
    is archived (pg_stat_archiver passes the segments written during the fault)."""
    namespace, primary = source.namespace, source.primary()
    execute(source, primary, "CREATE TABLE settings_probe (id serial PRIMARY KEY, fault text)")
    other_ca = certs.new_ca("a CA the S3 server never heard of").cert_pem

    def bucket(name: str):
        return lambda: kubectl("-n", namespace, "patch", "sdc", "shop", "--type=json", "-p",
                               f'[{{"op": "replace", "path": "/spec/backup/repositories/1/s3/bucket", '
                               f'"value": "{name}"}}]')

    faults = [
        ("a missing bucket", bucket("no-such-bucket"), bucket("shop-backups"), {"region-b"}),
        ("a wrong secret key", lambda: s3.client_secrets(namespace, secret_key="not-the-key"),
         lambda: s3.client_secrets(namespace), {"region-a", "region-b"}),
        ("a CA that did not sign the server", lambda: s3.client_secrets(namespace, ca_pem=other_ca),
         lambda: s3.client_secrets(namespace), {"region-a", "region-b"}),
    ]
    for fault, break_it, heal, failing in faults:
        break_it()

        def failing_with_reasons():
            # each write and switch wakes the archiver (it rests a minute after three failures)
            execute(source, primary, f"INSERT INTO settings_probe (fault) VALUES ('{fault}')")
            source.sql(primary, "SELECT pg_switch_wal()")
            archiving = (source.status().get("backup") or {}).get("archiving") or {}
            held = {f.get("repository"): f["error"] for f in archiving.get("failingRepositories") or []}
            return condition(source, "ContinuousArchiving").get("status") == "False" and set(held) == failing and held

        reasons = wait_for(failing_with_reasons, 240, f"archiving to fail with its reason ({fault})", interval=3)
        print(f"\n{fault}: {reasons}")
        message = condition(source, "ContinuousArchiving")["message"]
        assert all(f"{name}: " in message for name in failing), message
        written_during_the_fault = source.sql(primary, "SELECT count(*) FROM settings_probe WHERE fault = %s",
                                              (fault,))[0][0]
        assert written_during_the_fault > 0  # the database kept serving
        stuck = source.sql(primary, "SELECT last_failed_wal FROM pg_stat_archiver")[0][0]
        heal()

        def archived_past_the_fault():
            # PostgreSQL archives in order: past the segment that failed, nothing was skipped
            execute(source, primary, f"INSERT INTO settings_probe (fault) VALUES ('healed: {fault}')")
            source.sql(primary, "SELECT pg_switch_wal()")
            return (source.sql(primary, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "") > stuck

        wait_for(archived_past_the_fault, 240, f"{stuck} and what followed to be archived ({fault})", interval=3)
        wait_for(lambda: condition(source, "ContinuousArchiving").get("status") == "True", 120,
                 f"ContinuousArchiving to recover ({fault})", interval=2)
    assert "ArchivingFailed" in events(kubectl, namespace)


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


def test_the_source_deleted_while_writing_comes_back_to_its_last_archived_seconds(kubectl, images, s3, source):
    """The source cluster and its volumes are deleted (reclaimPolicy Delete) while a client
    commits a row every 50 ms. A recovery cluster at the latest point holds every row
    committed more than archive_timeout before the deletion (the segment being written
    when it died is the loss); the seconds of commits lost are printed. Last in the module:
    the shared cluster is gone after it."""
    namespace = source.namespace
    kubectl("-n", namespace, "patch", "sdc", "shop", "--type=merge", "-p", '{"spec": {"reclaimPolicy": "Delete"}}')
    wait_for(lambda: {"Delete"} == {s["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"]
                                    for s in kubectl.json("-n", namespace, "get", "statefulsets",
                                                          "-l", "app.kubernetes.io/component=postgres")["items"]},
             60, "the instances' volumes to follow reclaimPolicy Delete")
    committer = Committer(source)
    committer.start()
    time.sleep(ARCHIVE_TIMEOUT + 20)
    deleted_at = datetime.datetime.now(datetime.timezone.utc)
    kubectl("-n", namespace, "delete", "sdc", "shop", "--wait=false")
    committer.join(timeout=120)
    committer.done.set()
    wait_for(lambda: not kubectl.json("-n", namespace, "get", "pvc")["items"], 180, "the source's volumes to go")
    assert committer.acked, "no commit was acknowledged"

    restore_namespace = f"e2e-latest-{uuid.uuid4().hex[:6]}"
    recovery = {"recovery": {"source": {"clusterName": "shop", "namespace": namespace,
                                        "repository": repository("a")}}}
    try:
        restored = create_cluster(kubectl, images, s3, restore_namespace,
                                  {"bootstrap": recovery, "failover": {"enabled": False}}, [])
        primary = restored.primary()
        recovered = restored.sql(primary, "SELECT max(at) FROM rpo_probe")[0][0]
        lost = (committer.last_acked - recovered).total_seconds()
        print(f"\nsource deleted while writing: {lost:.1f}s of acknowledged commits lost "
              f"({len(committer.acked)} acknowledged, archive_timeout {ARCHIVE_TIMEOUT}s)")
        promised = [at for at in committer.acked
                    if at < deleted_at - datetime.timedelta(seconds=ARCHIVE_TIMEOUT + ARCHIVE_SLACK)]
        assert promised, "the client committed for less than archive_timeout"
        held = restored.sql(primary, "SELECT count(*) FROM rpo_probe WHERE at <= %s", (promised[-1],))[0][0]
        assert held == len(promised), (held, len(promised))
    finally:
        delete_namespace(kubectl, restore_namespace)
