"""Backups with pgBackRest: configuration, volumes, Jobs, certificates and status, from the spec alone."""

import datetime
import json

import pytest
from contexts import make_context
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from pydantic import ValidationError

from shopdb_operator import certs
from shopdb_operator.api.spec import ClusterSpec
from shopdb_operator.backup import backup_objects, config, config_map, server_dns_names, tls_secret
from shopdb_operator.backup.jobs import backup_cronjobs, on_demand_job
from shopdb_operator.backup.status import archive_push_errors, archiving_state, failure_reason, parse_info, repositories_from_info
from shopdb_operator.builders import desired_objects
from shopdb_operator.builders.network import postgres_network_policy
from shopdb_operator.builders.postgres import PGDATA, instance_config_map, instance_statefulset


def repo(name, bucket, **extra):
    return {"name": name, "s3": {"endpoint": f"s3.{name}.example.com", "bucket": bucket,
                                 "credentials": {"secretName": f"{name}-s3"}}, **extra}


TWO_REPOS = {"backup": {"archiveTimeoutSeconds": 30, "repositories": [
    repo("eu", "shop-eu", retention={"fullDays": 14}),
    {"name": "us", "path": "/archive/shop", "retention": {"fullDays": 7}, "s3": {
        "endpoint": "minio.storage", "port": 9000, "bucket": "shop-us", "region": "us-west-2", "uriStyle": "path",
        "credentials": {"secretName": "us-s3", "accessKeyIdKey": "id", "secretAccessKeyKey": "sk"},
        "ca": {"name": "minio-ca", "key": "ca.pem"}}},
]}}
SOURCE = {"clusterName": "old", "repository": repo("eu", "shop-eu")}


def sections(text):
    out, current = {}, None
    for line in text.splitlines():
        if line.startswith("["):
            current = out.setdefault(line.strip("[]"), {})
        elif "=" in line and current is not None:
            key, value = line.split("=", 1)
            current[key] = value
    return out


def pod_of(ctx, instance="shop-1"):
    return instance_statefulset(ctx, ctx.topology.instance(instance))["spec"]["template"]["spec"]


def containers_of(ctx, instance="shop-1"):
    return {c["name"]: c for c in pod_of(ctx, instance)["containers"]}


def postgresql_conf(ctx, instance="shop-1"):
    return instance_config_map(ctx, ctx.topology.instance(instance))["data"]["postgresql.conf"]


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- a cluster without backups has no trace of them


def test_without_backup_nothing_of_pgbackrest_is_built(ctx):
    assert [c["name"] for c in pod_of(ctx)["containers"]] == ["postgres", "instance-agent"]
    assert not any(v["name"].startswith(("pgbackrest", "s3-")) for v in pod_of(ctx)["volumes"])
    assert not any(k.startswith("SHOPDB_BACKUP") or k.startswith("SHOPDB_RECOVERY")
                   for k in env_of(containers_of(ctx)["postgres"]))
    assert "archive_mode = 'off'" in postgresql_conf(ctx)
    assert "archive_command" not in postgresql_conf(ctx)
    assert backup_objects(ctx, PGDATA) == []
    names = [o["metadata"]["name"] for o in desired_objects(ctx)]
    assert not any("backup" in n or "pgbackrest" in n for n in names)
    ports = [p["port"] for rule in postgres_network_policy(ctx)["spec"]["ingress"] for p in rule["ports"]]
    assert ports == [5432]


# --- pgbackrest.conf


def test_instance_conf_has_every_repository_and_the_tls_server():
    ctx = make_context(TWO_REPOS, name="orders-db", namespace="prod")
    conf = sections(config.instance_conf(ctx, PGDATA))
    g = conf["global"]
    assert (g["repo1-type"], g["repo1-path"], g["repo1-s3-endpoint"], g["repo1-s3-bucket"]) == (
        "s3", "/shopdb/prod/orders-db", "s3.eu.example.com", "shop-eu")
    assert (g["repo1-s3-region"], g["repo1-s3-uri-style"], g["repo1-storage-port"]) == ("us-east-1", "host", "443")
    assert (g["repo2-path"], g["repo2-s3-endpoint"], g["repo2-storage-port"]) == ("/archive/shop", "minio.storage", "9000")
    assert (g["repo2-s3-bucket"], g["repo2-s3-region"], g["repo2-s3-uri-style"]) == ("shop-us", "us-west-2", "path")
    assert (g["repo1-retention-full-type"], g["repo1-retention-full"]) == ("time", "14")
    assert (g["repo2-retention-full-type"], g["repo2-retention-full"]) == ("time", "7")
    assert "repo1-storage-ca-file" not in g
    assert g["repo2-storage-ca-file"] == "/etc/shopdb/s3/ca/repo2/ca.crt"
    # asynchronous, its spool (status files only) on the pod's emptyDir
    assert (g["archive-async"], g["spool-path"]) == ("y", "/tmp/pgbackrest/spool")
    # archive-push waits out each repository's connection retries, so the error is the reason
    assert (g["io-timeout"], g["archive-timeout"]) == ("15", "90")
    assert g["archive-push-queue-max"] == str(4 * 1024 ** 3)
    server = conf["global:server"]
    assert server["tls-server-port"] == "8432"
    assert server["tls-server-cert-file"] == "/etc/shopdb/pgbackrest-tls/tls.crt"
    assert server["tls-server-key-file"] == "/etc/shopdb/pgbackrest-tls/tls.key"
    assert server["tls-server-ca-file"] == "/etc/shopdb/pgbackrest-tls/ca.crt"
    assert server["tls-server-auth"] == "shopdb-backup=orders-db"
    assert conf["orders-db"]["pg1-path"] == PGDATA


def test_job_conf_reaches_every_instance_over_tls_promotable_first():
    ctx = make_context(TWO_REPOS)
    conf = sections(config.job_conf(ctx, PGDATA))
    assert conf["global"]["backup-standby"] == "y"
    assert conf["global"]["repo2-path"] == "/archive/shop"
    stanza = conf["shop"]
    hosts = [stanza[f"pg{i}-host"] for i in range(1, 5)]
    assert hosts == [f"{n}-0.shop-instances.shop.svc" for n in ("shop-1", "shop-2", "shop-3", "shop-analytics")]
    assert "pg5-host" not in stanza
    for i in range(1, 5):
        assert (stanza[f"pg{i}-host-type"], stanza[f"pg{i}-host-port"], stanza[f"pg{i}-path"]) == ("tls", "8432", PGDATA)
        assert stanza[f"pg{i}-host-cert-file"] == "/etc/shopdb/pgbackrest-tls/client.crt"
        assert stanza[f"pg{i}-host-key-file"] == "/etc/shopdb/pgbackrest-tls/client.key"


def test_no_s3_key_material_in_configs_env_or_args():
    ctx = make_context(TWO_REPOS)
    texts = list(config_map(ctx, PGDATA)["data"].values())
    for obj in desired_objects(ctx):
        pod = (obj["spec"].get("template") or obj["spec"].get("jobTemplate", {}).get("spec", {}).get("template")
               if obj["kind"] in ("StatefulSet", "CronJob") else None)
        for container in (pod or {}).get("spec", {}).get("containers", []):
            texts += [json.dumps(container.get("env", [])), " ".join(container["command"])]
            assert all(e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") not in ("eu-s3", "us-s3")
                       for e in container.get("env", []))
    for text in texts:
        assert "s3-key" not in text and "S3_KEY" not in text and "secretAccessKey" not in text


def test_postgresql_conf_archives_with_pgbackrest():
    ctx = make_context(TWO_REPOS)
    for instance in ("shop-1", "shop-analytics"):  # whichever is primary archives
        conf = postgresql_conf(ctx, instance)
        assert "archive_mode = 'on'" in conf and "archive_mode = 'off'" not in conf
        assert ("archive_command = 'bash /etc/shopdb/scripts/pgbackrest.sh instance --stanza=shop archive-push %p'"
                in conf)
        assert "archive_timeout = '30s'" in conf


# --- scheduled and on-demand Jobs


def test_cronjobs_per_repository_and_scheduled_type():
    spec = {"backup": {"repositories": [repo("eu", "shop-eu", schedules={"incremental": "0 * * * *"}),
                                        repo("us", "shop-us", schedules={"differential": "30 3 * * *"})]}}
    cronjobs = {c["metadata"]["name"]: c for c in backup_cronjobs(make_context(spec))}
    assert {n: c["spec"]["schedule"] for n, c in cronjobs.items()} == {
        "shop-backup-eu-full": "0 2 * * *", "shop-backup-eu-incr": "0 * * * *",
        "shop-backup-us-full": "0 */6 * * *", "shop-backup-us-diff": "30 3 * * *",
        "shop-backup-eu-verify": "0 4 * * 0"}  # restore verification: weekly, the first repository
    job = cronjobs["shop-backup-us-diff"]
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    template = job["spec"]["jobTemplate"]["spec"]["template"]
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "backup"
    assert template["spec"]["containers"][0]["command"] == ["bash", "/etc/shopdb/scripts/backup.sh", "diff", "2"]
    assert cronjobs["shop-backup-eu-full"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0][
        "command"][2:] == ["full", "1"]
    custom = backup_cronjobs(make_context({"backup": {"repositories": [repo("eu", "b-1", schedules={"full": "5 1 * * 0"})],
                                                      "verify": {"enabled": False}}}))
    assert [c["spec"]["schedule"] for c in custom] == ["5 1 * * 0"]


def test_cronjob_names_are_bounded_and_distinct():
    spec = {"backup": {"repositories": [repo("primary-region1", "b-1"), repo("primary-region2", "b-2")]}}
    names = [c["metadata"]["name"] for c in backup_cronjobs(make_context(spec, name="a" * 40))]
    assert len(names) == len(set(names)) == 3  # two full schedules and the restore verification
    assert all(len(n) <= 52 for n in names)


def test_job_pod_mounts_the_client_side_of_the_tls_link():
    ctx = make_context(TWO_REPOS)
    pod = backup_cronjobs(ctx)[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert [i["key"] for i in volumes["pgbackrest-tls"]["secret"]["items"]] == ["ca.crt", "client.crt", "client.key"]
    assert {"s3-repo1", "s3-repo2", "s3-ca-repo2"} <= set(volumes)
    assert env_of(pod["containers"][0])["SHOPDB_STANZA"] == "shop"


def test_job_pod_mounts_the_scripts_it_runs():
    # the container runs a script of the scripts ConfigMap (which calls pgbackrest.sh next to it):
    # no image carries them
    ctx = make_context(TWO_REPOS)
    scripts = next(o for o in desired_objects(ctx) if o["metadata"]["name"] == "shop-scripts")["data"]
    assert {"backup.sh", "verify.sh", "pgbackrest.sh"} <= set(scripts)
    for job in [*(c["spec"]["jobTemplate"] for c in backup_cronjobs(ctx)), on_demand_job(ctx, "j", "full", [1]),
                on_demand_job(ctx, "v", "verify", [2])]:
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["command"][1] in ("/etc/shopdb/scripts/backup.sh", "/etc/shopdb/scripts/verify.sh")
        mount = next((m for m in container["volumeMounts"] if m["mountPath"] == "/etc/shopdb/scripts"), None)
        assert mount is not None, "the backup Job does not mount the scripts it runs"
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == "shop-scripts"


def test_on_demand_job_backs_up_to_several_repositories():
    job = on_demand_job(make_context(TWO_REPOS), "shop-backup-full-now", "full", [1, 2])
    assert (job["kind"], job["metadata"]["name"]) == ("Job", "shop-backup-full-now")
    assert job["metadata"]["labels"]["shopdb.io/backup-repos"] == "1-2"
    assert job["metadata"]["labels"]["shopdb.io/backup-type"] == "full"
    template = job["spec"]["template"]
    assert template["metadata"]["labels"]["shopdb.io/backup-repos"] == "1-2"
    assert template["spec"]["containers"][0]["command"] == ["bash", "/etc/shopdb/scripts/backup.sh", "full", "1", "2"]


# --- the database pods


def test_statefulset_runs_a_pgbackrest_server_sidecar():
    ctx = make_context(TWO_REPOS)
    pod, containers = pod_of(ctx), containers_of(ctx)
    sidecar = containers["pgbackrest"]
    assert [p["containerPort"] for p in sidecar["ports"]] == [8432]
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert mounts["data"] == "/var/lib/postgresql/data"
    assert mounts["run"] == "/var/run/postgresql"  # the socket pgBackRest reaches PostgreSQL through
    assert mounts["pgbackrest-tls"] == "/etc/shopdb/pgbackrest-tls"
    assert mounts["pgbackrest-config"] == "/etc/shopdb/pgbackrest"
    volumes = {v["name"]: v for v in pod["volumes"]}
    tls = volumes["pgbackrest-tls"]["secret"]
    assert tls["secretName"] == "shop-pgbackrest-tls"
    assert sorted(i["key"] for i in tls["items"]) == ["ca.crt", "tls.crt", "tls.key"]  # never the client key
    assert volumes["s3-repo1"]["secret"] == {"secretName": "eu-s3", "defaultMode": 0o440, "items": [
        {"key": "accessKeyId", "path": "key"}, {"key": "secretAccessKey", "path": "secret"}]}
    assert volumes["s3-repo2"]["secret"]["items"] == [{"key": "id", "path": "key"}, {"key": "sk", "path": "secret"}]
    assert volumes["s3-ca-repo2"]["secret"]["items"] == [{"key": "ca.pem", "path": "ca.crt"}]
    assert "s3-ca-repo1" not in volumes
    pg_mounts = {m["name"]: m["mountPath"] for m in containers["postgres"]["volumeMounts"]}
    assert pg_mounts["s3-repo1"] == "/etc/shopdb/s3/repo1" and pg_mounts["s3-repo2"] == "/etc/shopdb/s3/repo2"
    assert pg_mounts["s3-ca-repo2"] == "/etc/shopdb/s3/ca/repo2"
    env = env_of(containers["postgres"])
    assert (env["SHOPDB_BACKUP"], env["SHOPDB_STANZA"]) == ("true", "shop")
    assert "SHOPDB_RECOVERY_STANZA" not in env
    # the pause process, not PostgreSQL, reaps the asynchronous archive-push worker
    assert pod["shareProcessNamespace"] is True


def test_network_policy_lets_backup_pods_reach_the_pgbackrest_servers():
    ingress = postgres_network_policy(make_context(TWO_REPOS))["spec"]["ingress"]
    rule = next(r for r in ingress if r["ports"] == [{"protocol": "TCP", "port": 8432}])
    assert rule["from"] == [{"podSelector": {"matchLabels": {"shopdb.io/cluster": "shop",
                                                             "app.kubernetes.io/component": "backup"}}}]


def test_desired_objects_put_the_pgbackrest_config_before_the_instances():
    objects = desired_objects(make_context(TWO_REPOS))
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    first_sts = next(i for i, (kind, _) in enumerate(names) if kind == "StatefulSet")
    assert names.index(("ConfigMap", "shop-pgbackrest")) < first_sts
    assert {"shop-backup-eu-full", "shop-backup-us-full"} <= {n for k, n in names if k == "CronJob"}
    data = objects[names.index(("ConfigMap", "shop-pgbackrest"))]["data"]
    assert sorted(data) == ["instance.conf", "job.conf", "verify.conf"]


# --- a cluster made from another cluster's backup


@pytest.mark.parametrize("source_ns, expected_path", [(None, "/shopdb/shop/old"), ("legacy", "/shopdb/legacy/old")])
def test_recovery_conf_reads_the_source_repository(source_ns, expected_path):
    source = {**SOURCE, **({"namespace": source_ns} if source_ns else {})}
    ctx = make_context({"bootstrap": {"recovery": {"source": source}}})
    data = config_map(ctx, PGDATA)["data"]
    assert sorted(data) == ["recovery.conf"]
    conf = sections(data["recovery.conf"])
    assert conf["global"]["repo1-path"] == expected_path
    assert conf["global"]["repo1-s3-bucket"] == "shop-eu"
    assert "repo2-path" not in conf["global"]
    assert conf["old"]["pg1-path"] == PGDATA and "shop" not in conf
    containers = containers_of(ctx)
    assert list(containers) == ["postgres", "instance-agent"]  # restores, but does not back up
    env = env_of(containers["postgres"])
    assert env["SHOPDB_RECOVERY_STANZA"] == "old" and env["SHOPDB_RECOVERY_OPTIONS"] == "--type=default"
    assert "SHOPDB_BACKUP" not in env
    mounts = {m["name"]: m["mountPath"] for m in containers["postgres"]["volumeMounts"]}
    assert mounts["s3-recovery"] == "/etc/shopdb/s3/recovery"
    assert backup_cronjobs(ctx) == []


def test_recovery_source_ca_is_mounted_where_recovery_conf_reads_it():
    source = {**SOURCE, "repository": {**SOURCE["repository"], "s3": {
        **SOURCE["repository"]["s3"], "ca": {"name": "old-ca", "key": "ca.pem"}}}}
    ctx = make_context({"bootstrap": {"recovery": {"source": source}}})
    ca_path = sections(config_map(ctx, PGDATA)["data"]["recovery.conf"])["global"]["repo1-storage-ca-file"]
    mounts = {m["name"]: m["mountPath"] for m in containers_of(ctx)["postgres"]["volumeMounts"]}
    assert ca_path == mounts["s3-ca-recovery"] + "/ca.crt"
    volumes = {v["name"]: v for v in pod_of(ctx)["volumes"]}
    assert volumes["s3-ca-recovery"]["secret"]["items"] == [{"key": "ca.pem", "path": "ca.crt"}]


@pytest.mark.parametrize("target, options", [
    # pgBackRest takes "YYYY-MM-DD HH:MM:SS[.mmm]+00" only
    ({"time": "2026-05-01T12:00:00.123456+02:00"},
     ["--type=time", "--target=2026-05-01 10:00:00.123+00", "--target-action=promote"]),
    ({"lsn": "0/5000138"}, ["--type=lsn", "--target=0/5000138", "--target-action=promote"]),
    ({"backupSet": "20261202-224232F"}, ["--set=20261202-224232F", "--type=immediate", "--target-action=promote"]),
    ({}, ["--type=default"]),
])
def test_restore_options_per_target(target, options):
    ctx = make_context({"bootstrap": {"recovery": {"source": SOURCE, "target": target}}})
    assert config.restore_options(ctx.spec.bootstrap.recovery) == options
    assert env_of(containers_of(ctx)["postgres"])["SHOPDB_RECOVERY_OPTIONS"] == "\n".join(options)


# --- certificates and the TLS Secret


def test_server_certificate_verifies_for_instance_hosts_only():
    ctx = make_context(TWO_REPOS)
    ca = certs.new_ca("shop/shop pgbackrest CA")
    server = certs.issue(ca, "pgbackrest-server", server_dns_names(ctx))
    store = Store([x509.load_pem_x509_certificate(ca.cert_pem.encode())])
    leaf = x509.load_pem_x509_certificate(server.cert_pem.encode())
    host = config.pg_host(ctx, "shop-1")
    assert host == "shop-1-0.shop-instances.shop.svc"
    chain = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(host)).verify(leaf, [])
    assert chain[0] == leaf
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("shop-1-0.other-instances.shop.svc")).verify(leaf, [])
    other_ca = certs.new_ca("another CA")
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([x509.load_pem_x509_certificate(other_ca.cert_pem.encode())])) \
            .build_server_verifier(x509.DNSName(host)).verify(leaf, [])


def test_client_certificate_and_keys():
    ca = certs.new_ca("CA")
    client = certs.issue(ca, config.BACKUP_CLIENT_CN, client=True)
    cert = x509.load_pem_x509_certificate(client.cert_pem.encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem.encode()))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "shopdb-backup"
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert certs.not_after(client.cert_pem) > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=300)
    for issued in (ca, client):
        assert issued.key_pem.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
        assert serialization.load_pem_private_key(issued.key_pem.encode(), password=None)


@pytest.mark.parametrize("policy, owned", [("Retain", False), ("Delete", True)])
def test_tls_secret_is_owned_only_when_reclaim_policy_deletes(policy, owned):
    ctx = make_context({**TWO_REPOS, "reclaimPolicy": policy})
    issued = certs.Issued("CERT", "KEY")
    secret = tls_secret(ctx, issued, issued, issued)
    assert secret["metadata"]["name"] == "shop-pgbackrest-tls"
    assert ("ownerReferences" in secret["metadata"]) is owned
    assert sorted(secret["stringData"]) == ["ca.crt", "client.crt", "client.key", "tls.crt", "tls.key"]


# --- what the Jobs and the archiver report

INFO = json.loads('[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000006","min":"000000010000000000000001"}],"backup":[{"archive":{"start":"000000010000000000000005","stop":"000000010000000000000005"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},"error":false,"info":{"delta":23164603,"repository":{"delta":3076834,"size":3076834},"size":23164603},"label":"20261202-224232F","lsn":{"start":"0/5000028","stop":"0/5000138"},"prior":null,"reference":null,"timestamp":{"start":1796251352,"stop":1796251359},"type":"full"}],"cipher":"none","db":[{"id":1,"repo-key":1,"system-id":7714840328422405528,"version":"15"}],"name":"shop","repo":[{"cipher":"none","key":1,"status":{"code":0,"message":"ok"}}],"status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]')  # noqa: E501


def test_parse_info_takes_the_last_marker_line():
    log = "\n".join(["INFO: backup start", 'SHOPDB-INFO [{"name": "old"}]', "INFO: expire",
                     "SHOPDB-INFO " + json.dumps(INFO), "INFO: done"])
    assert parse_info(log) == INFO
    assert parse_info("INFO: nothing here\n") is None
    assert parse_info("SHOPDB-INFO {not json") is None


def test_repositories_from_realistic_pgbackrest_info():
    backup = make_context(TWO_REPOS).spec.backup
    older = {**INFO[0]["backup"][0], "label": "20261201-224232F",
             "timestamp": {"start": 1796251352 - 86400, "stop": 1796251359 - 86400}}
    failed = {**INFO[0]["backup"][0], "label": "20261203-000000F", "error": True,
              "timestamp": {"start": 1796251352 + 3600, "stop": 1796251352 + 3700}}
    info = [{**INFO[0], "backup": [INFO[0]["backup"][0], failed, older]}]
    repos = repositories_from_info(info, backup)
    eu = repos["eu"]
    last = eu["lastSuccessfulBackup"]
    assert last["label"] == "20261202-224232F" and last["type"] == "full"
    assert (last["sizeBytes"], last["repositorySizeBytes"], last["durationSeconds"]) == (23164603, 3076834, 7)
    assert (last["startedAt"], last["finishedAt"]) == ("2026-12-02T22:42:32Z", "2026-12-02T22:42:39Z")
    assert eu["firstRecoverabilityPoint"] == "2026-12-01T22:42:39Z"
    assert eu["walRange"] == ["000000010000000000000001", "000000010000000000000006"]
    assert [b["label"] for b in eu["backups"]] == ["20261201-224232F", "20261202-224232F"]
    assert eu["repositoryStatus"] == "ok"
    assert repos["us"]["lastSuccessfulBackup"] is None and repos["us"]["walRange"] is None


def test_failure_reason_is_the_last_pgbackrest_error():
    log = ("P00 INFO: backup command begin\nP00 ERROR: [039]: HTTP request failed\n"
           "P00 ERROR: [104]: unable to find primary cluster - cannot proceed\n"
           "FATAL: backup failed for repo 1\n")
    assert failure_reason(log) == "ERROR: [104]: unable to find primary cluster - cannot proceed"
    assert failure_reason("FATAL: backup failed for repo 2\n") == "FATAL: backup failed for repo 2"
    assert "see its pod's log" in failure_reason("nothing useful")
    assert len(failure_reason("ERROR: [055]: " + "x" * 2000)) <= 500


def test_archiving_state_from_pg_stat_archiver():
    now = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.timezone.utc)
    earlier, later = now - datetime.timedelta(minutes=5), now - datetime.timedelta(minutes=1)
    row = {"last_archived_wal": "000000010000000000000005", "last_archived_time": earlier,
           "last_failed_wal": "000000010000000000000006", "last_failed_time": later, "failed_count": 3}
    ok, reason, _, fields = archiving_state(row, now)
    assert (ok, reason) == (False, "ArchiveFailing")
    # archiving again: the key is there, None, so a merge patch removes what failed before
    assert archiving_state({**row, "last_failed_time": None}, now)[3]["failingRepositories"] is None
    assert fields["lastArchivedAgeSeconds"] == 300 and fields["failedCount"] == 3
    ok, reason, _, _ = archiving_state({**row, "last_archived_time": later, "last_failed_time": earlier}, now)
    assert (ok, reason) == (True, "Archiving")
    assert archiving_state({**row, "last_failed_time": None}, now)[0] is True
    assert archiving_state(None, now)[:2] == (False, "Unknown")


# --- the spec refuses what cannot work


@pytest.mark.parametrize("backup", [
    {"repositories": []},
    {"repositories": [repo(f"r{i}", f"bucket-{i}") for i in range(5)]},
    {"repositories": [repo("eu", "Shop_Bucket")]},
    {"repositories": [repo("eu", "ab")]},
    {"repositories": [repo("eu", "shop-eu", path="relative/path")]},
])
def test_invalid_backup_specs_are_rejected(backup):
    with pytest.raises(ValidationError):
        ClusterSpec.model_validate({"backup": backup})


@pytest.mark.parametrize("target", [{"time": "2026-05-01 10:00:00"}, {"time": "yesterday"}, {"lsn": "5000138"},
                                    {"backupSet": "20261202-224232"}])
def test_invalid_recovery_targets_are_rejected(target):
    with pytest.raises(ValidationError):
        ClusterSpec.model_validate({"bootstrap": {"recovery": {"source": SOURCE, "target": target}}})


def test_four_repositories_are_accepted():
    spec = ClusterSpec.model_validate({"backup": {"repositories": [repo(f"r{i}", f"bucket-{i}") for i in range(4)]}})
    assert len(spec.backup.repositories) == 4


def test_restore_verification_job_restores_into_a_scratch_volume_as_large_as_an_instance():
    spec = {"postgres": {"storage": {"size": "20Gi", "storageClassName": "fast"}},
            "backup": {"repositories": [repo("eu", "shop-eu"), repo("us", "shop-us")],
                       "verify": {"schedule": "0 5 * * 6", "repository": "us"}}}
    cronjob = next(c for c in backup_cronjobs(make_context(spec)) if c["metadata"]["name"] == "shop-backup-us-verify")
    assert cronjob["spec"]["schedule"] == "0 5 * * 6"
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0  # a failed verification is a finding, not something to retry
    pod = job["template"]["spec"]
    assert job["template"]["metadata"]["labels"]["shopdb.io/backup-type"] == "verify"
    assert pod["containers"][0]["command"] == ["bash", "/etc/shopdb/scripts/verify.sh", "2"]
    scratch = next(v for v in pod["volumes"] if v["name"] == "scratch")["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert scratch["resources"]["requests"]["storage"] == "20Gi" and scratch["storageClassName"] == "fast"
    assert {"name": "scratch", "mountPath": "/scratch"} in pod["containers"][0]["volumeMounts"]
    conf = make_context(spec)
    from shopdb_operator.backup import config_map
    verify = config_map(conf, "/var/lib/postgresql/data/pgdata")["data"]["verify.conf"]
    assert "pg1-path=/scratch/pgdata" in verify and "pg1-host" not in verify and "repo2-s3-bucket=shop-us" in verify


def test_count_retention():
    spec = {"backup": {"repositories": [repo("eu", "shop-eu", retention={"fullCount": 2})]}}
    conf = make_context(spec)
    from shopdb_operator.backup.config import instance_conf
    text = instance_conf(conf, "/pgdata")
    assert "repo1-retention-full-type=count" in text and "repo1-retention-full=2" in text


def test_verification_result_is_read_from_the_last_marker_line():
    from shopdb_operator.backup.status import parse_verification
    log = ('verify: restoring\nSHOPDB-VERIFY {"repo":1,"label":"old","ok":false,"seconds":1,"reason":"x"}\n'
           'SHOPDB-VERIFY {"repo":2,"label":"20261202-232706F","ok":true,"seconds":42,"reason":""}\n')
    assert parse_verification(log) == {"repo": 2, "label": "20261202-232706F", "ok": True, "seconds": 42, "reason": ""}
    assert parse_verification("no marker") is None


def test_backup_validation_refuses_what_the_schema_cannot_say():
    from shopdb_operator.api.validate import InvalidSpec, parse_spec, recovery_overlap_problem
    import pytest
    with pytest.raises(InvalidSpec) as err:
        parse_spec({"backup": {"repositories": [repo("eu", "b-1", schedules={"full": "0 25 * * *"})]}})
    assert "spec.backup.repositories[0].schedules.full" in str(err.value)
    with pytest.raises(InvalidSpec) as err:
        parse_spec({"backup": {"repositories": [repo("eu", "b-1"), repo("eu", "b-2")]}})
    assert "repeated: eu" in str(err.value)
    with pytest.raises(InvalidSpec) as err:
        parse_spec({"bootstrap": {"recovery": {"source": {"clusterName": "shop", "repository": repo("eu", "b-1")},
                                               "target": {"lsn": "0/5000028", "backupSet": "20261202-224232F"}}}})
    assert "one of time, lsn or backupSet" in str(err.value)
    # a restored cluster must never archive into its source's stanza (same system identifier)
    same = parse_spec({"backup": {"repositories": [repo("eu", "b-1")]},
                       "bootstrap": {"recovery": {"source": {"clusterName": "shop", "repository": repo("eu", "b-1")}}}})
    assert "write into its source's backups" in recovery_overlap_problem(same, "shop", "shop")
    assert recovery_overlap_problem(same, "shop", "shop-restored") is None  # another stanza and path
    other_ns = parse_spec({"backup": {"repositories": [repo("eu", "b-1")]},
                           "bootstrap": {"recovery": {"source": {"clusterName": "shop", "namespace": "prod",
                                                                 "repository": repo("eu", "b-1")}}}})
    assert recovery_overlap_problem(other_ns, "staging", "shop") is None  # /shopdb/prod/shop vs /shopdb/staging/shop


def test_a_failing_instance_container_is_summed_up_in_one_line():
    from shopdb_operator.handlers.reconcile import container_failure
    message = ("2026-12-02T23:05:31Z shopdb[shop-1]: starting\n"
               "2026-12-02T23:05:31Z shopdb[shop-1]: FATAL: this image has no pgbackrest, but the cluster backs up\n")
    pod = {"status": {"containerStatuses": [
        {"name": "pgbackrest", "ready": True, "state": {"running": {}}},
        {"name": "postgres", "ready": False, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
         "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}}}]}}
    assert container_failure(pod) == ("postgres: 2026-12-02T23:05:31Z shopdb[shop-1]: FATAL: this image has no "
                                      "pgbackrest, but the cluster backs up")
    healthy = {"status": {"containerStatuses": [{"name": "postgres", "ready": True, "state": {"running": {}},
                                                 "lastState": {"terminated": {"exitCode": 1, "message": "old"}}}]}}
    assert container_failure(healthy) is None and container_failure(None) is None


PUSH_FAILED = """\
ERROR: [103]: unable to find a valid repository:
       repo1: [ProtocolError] unable to load info file '/shopdb/ns/shop/archive/shop/archive.info' or '/shopdb/ns/shop/archive/shop/archive.info.copy':
       ProtocolError: HTTP request failed with 403 (Forbidden):
       *** Path/Query ***:
       GET /shop-backups/shopdb/ns/shop/archive/shop/archive.info
       *** Request Headers ***:
       authorization: <redacted>
       *** Response Content ***:
       <?xml version="1.0" encoding="UTF-8"?>
       <Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error>
       HINT: has a stanza-create been performed?
       repo2: [CryptoError] unable to verify certificate presented by 's3-b.svc:443': [20] unable to get local issuer certificate
"""


def test_archiving_failure_names_the_repository_and_why():
    now = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.timezone.utc)
    row = {"last_archived_wal": "000000010000000000000006", "last_archived_time": now - datetime.timedelta(minutes=3),
           "last_failed_wal": "000000010000000000000007", "last_failed_time": now, "failed_count": 1,
           "last_error": PUSH_FAILED}
    ok, _, message, fields = archiving_state(row, now, ["region-a", "region-b"])
    assert not ok
    forbidden = ("HTTP request failed with 403 (Forbidden): SignatureDoesNotMatch ([ProtocolError] unable to load "
                 "info file '/shopdb/ns/shop/archive/shop/archive.info' or '/shopdb/ns/shop/archive/shop/archive.info.copy')")
    untrusted = ("[CryptoError] unable to verify certificate presented by 's3-b.svc:443': [20] unable to get local "
                 "issuer certificate")
    assert fields["failingRepositories"] == [{"repository": "region-a", "error": forbidden},
                                             {"repository": "region-b", "error": untrusted}]
    assert message == (f"archiving 000000010000000000000007 failed at 2026-12-02T12:00:00Z: region-a: {forbidden}; "
                       f"region-b: {untrusted}")
    assert "redacted" not in message and "Path/Query" not in message
    # an error that names no repository (a bad configuration, a missing key) is still said
    general = archive_push_errors("ERROR: [037]: archive-push command requires option: repo1-s3-key", ["a"])
    assert general == {"*": "archive-push command requires option: repo1-s3-key"}
    assert archive_push_errors("FATAL: no S3 key pair in /etc/shopdb/s3/repo1", ["a"]) == {
        "*": "no S3 key pair in /etc/shopdb/s3/repo1"}
    # the synchronous form, and a repository the spec no longer has
    assert archive_push_errors("ERROR: [104]: archive-push command encountered error(s):\n"
                               "       repo3: [FileMissingError] unable to load info file 'x':\n"
                               "       FileMissingError: unable to open missing file 'x' for read", ["a"]) == {
        "repo3": "unable to open missing file 'x' for read ([FileMissingError] unable to load info file 'x')"}
    # nothing left behind (the file was gone or unreadable): the counters alone
    ok, _, message, fields = archiving_state({**row, "last_error": None}, now, ["region-a", "region-b"])
    assert fields["failingRepositories"] is None and message.endswith("failed at 2026-12-02T12:00:00Z")
    assert len(archive_push_errors("       repo1: " + "y" * 1000, ["a"])["a"]) == 300


def test_backups_table_lists_repositories_and_why_archiving_fails():
    from shopdb_operator.cli import backups_table

    status = {"backup": {
        "repositories": {"region-a": {"firstRecoverabilityPoint": "2026-12-01T02:05:00Z",
                                      "walRange": ["000000010000000000000003", "000000020000000000000009"],
                                      "backups": [{"label": "20261201-020000F", "type": "full",
                                                   "finishedAt": "2026-12-01T02:05:00Z", "durationSeconds": 300,
                                                   "sizeBytes": 2048, "repositorySizeBytes": 1024}]}},
        "archiving": {"lastArchivedWal": "000000020000000000000009", "lastArchivedAt": "2026-12-02T11:57:00Z",
                      "lastFailedWal": "00000002000000000000000A", "lastFailedAt": "2026-12-02T12:00:00Z",
                      "failingRepositories": [{"repository": "region-b",
                                               "error": "[039]: HTTP request failed with 404 (Not Found)"},
                                              {"error": "no S3 key pair in /etc/shopdb/s3/repo1"}]}}}
    table = backups_table(status)
    assert "repository region-a: recoverable from 2026-12-01T02:05:00Z" in table
    assert "20261201-020000F" in table and "full" in table
    assert "  failing: region-b: [039]: HTTP request failed with 404 (Not Found)" in table
    assert "  failing: every repository: no S3 key pair in /etc/shopdb/s3/repo1" in table
    assert backups_table({}) == "no backup recorded yet"
