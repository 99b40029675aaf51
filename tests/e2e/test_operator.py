"""The operator as users run it: installed with `kubectl apply -f crds/ -f manifests/`,
creating the example cluster on a real Kubernetes with real images.

One database cluster is shared by the tests of this module (it takes a minute or two to
come up on two cores); the tests run in file order and the last one deletes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from support import (REPO, apply_schema_config_map, cluster_status, example_cluster, is_local_cluster, metric_values,
                     operator_metrics, psql,
                     psql_remote, secret_value, wait_for)

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 600


@pytest.fixture(scope="module")
def shop(kubectl, images, operator):
    """The example cluster `shop` in its own namespace; yields the namespace."""
    namespace = f"e2e-shop-{int(time.time()) % 100000}"
    kubectl("create", "namespace", namespace)
    apply_schema_config_map(kubectl, namespace)
    cluster = example_cluster(images, namespace)
    cluster["spec"]["reclaimPolicy"] = "Retain"  # the last test checks that volumes outlive the cluster
    kubectl.apply(yaml.safe_dump(cluster))
    yield namespace
    kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def test_the_operators_metrics_follow_the_cluster(kubectl, shop):
    """The operator's own /metrics, scraped from its pod: the Ready cluster's phase, its
    instances ready against desired, and its reconciliations counted."""
    wait_for(lambda: cluster_status(kubectl, shop).get("phase") == "Ready", READY_TIMEOUT,
             "the example cluster to become Ready", interval=5)

    def scraped():
        samples = operator_metrics(kubectl)
        ready = metric_values(samples, "shopdb_cluster_phase", namespace=shop, cluster="shop", phase="Ready")
        return ready == [1.0] and samples

    samples = wait_for(scraped, 60, "phase Ready in the operator's metrics")
    assert metric_values(samples, "shopdb_cluster_phase", namespace=shop, cluster="shop", phase="Creating") == [0.0]
    assert metric_values(samples, "shopdb_cluster_instances", namespace=shop, cluster="shop") == [4.0]
    assert metric_values(samples, "shopdb_cluster_instances_ready", namespace=shop, cluster="shop") == [4.0]
    assert sum(metric_values(samples, "shopdb_reconcile_total", namespace=shop, cluster="shop", result="ok")) >= 1
    assert metric_values(samples, "shopdb_failover_blocked", namespace=shop, cluster="shop") == [0.0]
    assert metric_values(samples, "process_resident_memory_bytes")


def test_example_cluster_becomes_ready(kubectl, shop):
    status = wait_for(lambda: (s := cluster_status(kubectl, shop)).get("phase") == "Ready" and s,
                      READY_TIMEOUT, "the example cluster to become Ready", interval=5)
    assert status["currentPrimary"] == "shop-1"
    assert status["readyInstances"] == "4/4"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    printed = kubectl("-n", shop, "get", "sdc", "shop").stdout
    assert "Ready" in printed and "shop-1" in printed and "4/4" in printed
    pods = kubectl.json("-n", shop, "get", "pods")["items"]
    for pod in pods:
        if pod["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "maintenance":
            continue
        assert pod["status"]["phase"] == "Running", pod["metadata"]["name"]
        assert all(c["ready"] for c in pod["status"]["containerStatuses"]), pod["metadata"]["name"]
    # replication lag, as the failover monitor measures it, reaches status and the Lag column
    lagged = wait_for(lambda: (s := cluster_status(kubectl, shop)).get("maxLagBytes") is not None and s,
                      120, "replication lag in status")
    replicas = [i for i in lagged["instances"] if i["name"] != "shop-1"]
    assert all(isinstance(i.get("lagBytes"), int) for i in replicas), replicas
    kubectl("-n", shop, "rollout", "status", "deployment/shop-pgbouncer", "--timeout=120s", timeout=150)
    kubectl("-n", shop, "rollout", "status", "deployment/shop-redis", "--timeout=120s", timeout=150)


def test_children_are_owned_by_the_cluster(kubectl, shop):
    uid = kubectl.json("-n", shop, "get", "sdc", "shop")["metadata"]["uid"]
    kinds = "statefulsets,deployments,services,configmaps,cronjobs,poddisruptionbudgets,networkpolicies"
    items = kubectl.json("-n", shop, "get", kinds, "-l", "shopdb.io/cluster=shop")["items"]
    assert len(items) >= 25
    for item in items:
        owners = [ref["uid"] for ref in item["metadata"].get("ownerReferences", [])]
        assert owners == [uid], f"{item['kind']}/{item['metadata']['name']}"


def test_every_replica_streams_from_the_primary(kubectl, shop):
    rows = wait_for(lambda: (r := psql(kubectl, shop, "shop-1-0",
                                       "select application_name || ':' || state from pg_stat_replication "
                                       "order by 1")).count("streaming") == 3 and r,
                    120, "three streaming replicas")
    assert rows.splitlines() == ["shop-2:streaming", "shop-3:streaming", "shop-analytics:streaming"]
    for pod in ("shop-2-0", "shop-3-0", "shop-analytics-0"):
        assert psql(kubectl, shop, pod, "select pg_is_in_recovery()") == "t"
    assert psql(kubectl, shop, "shop-1-0", "select pg_is_in_recovery()") == "f"


def test_pgbouncer_routes_reach_their_instances(kubectl, shop):
    """A row written through the primary route is read back through every replica route,
    each served by the instance the topology assigns."""
    password = secret_value(kubectl, shop, "shop-app")
    pod_ips = {p["metadata"]["name"]: p["status"]["podIP"]
               for p in kubectl.json("-n", shop, "get", "pods", "-l", "app.kubernetes.io/component=postgres")["items"]}

    def route(database: str, sql: str) -> str:
        conninfo = f"host=shop-pgbouncer port=5432 dbname={database} user=shop connect_timeout=10"
        return psql_remote(kubectl, shop, "shop-1-0", conninfo, password, sql)

    marker = f"e2e-{time.time_ns()}"
    route("shop", f"insert into shops (name, slug) values ('{marker}', '{marker}')")
    expected = {"shop": "shop-1-0", "shop_search": "shop-2-0", "shop_orders": "shop-3-0",
                "shop_analytics": "shop-analytics-0"}
    for database, pod in expected.items():
        found = wait_for(lambda: route(database, f"select count(*) from shops where name = '{marker}'") == "1",
                         60, f"the row on route {database}")
        assert found
        server = route(database, "select host(inet_server_addr())")
        assert server == pod_ips[pod], f"{database} reached {server}, expected {pod} ({pod_ips[pod]})"
    read_only = route("shop_ro", "select pg_is_in_recovery()")
    assert read_only == "t"


# pgbench -M prepared: every statement of the script is a protocol-level prepared statement,
# named alike (P_0, P_1, ...) on every client; each client checks its own results (a wrong
# one runs 1/0, which aborts the client and fails pgbench).
PREPARED_SCRIPT = r"""\set n random(1, 1000000)
BEGIN;
SELECT :n::int * 2 AS doubled \gset
SELECT :n::bigint + :client_id AS shifted \gset
\if :doubled != 2 * :n OR :shifted != :n + :client_id
SELECT 1 / 0;
\endif
END;
"""


def pgbouncer_config_hash(kubectl, namespace: str) -> str | None:
    """The pgbouncer.ini hash every PgBouncer pod runs with (status.configuration.pgbouncer,
    recorded once its SHOW CONFIG and SHOW DATABASES match the file); None while they differ."""
    pods = [p["metadata"]["name"] for p in kubectl.json("-n", namespace, "get", "pods", "-l",
                                                        "app.kubernetes.io/component=pgbouncer")["items"]
            if not p["metadata"].get("deletionTimestamp")]
    recorded = (cluster_status(kubectl, namespace).get("configuration") or {}).get("pgbouncer") or {}
    hashes = {recorded.get(pod) for pod in pods}
    return hashes.pop() if len(hashes) == 1 and None not in hashes else None


def test_prepared_statements_through_pgbouncer_with_more_clients_than_server_connections(kubectl, shop):
    """maxPreparedStatements (default 200): protocol-level prepared statements work in
    transaction mode. The primary route's pool is shrunk to 2 server connections per PgBouncer
    (reloaded, no restart); 8 pgbench clients in as many threads (its prepares block) run 25
    transactions each through the Service, so one PgBouncer at least serves 4 clients with 2
    server connections, preparing each statement on whichever one runs the transaction."""
    password = secret_value(kubectl, shop, "shop-app")
    spec = kubectl.json("-n", shop, "get", "sdc", "shop")["spec"]["pgbouncer"]
    assert spec["poolMode"] == "transaction" and spec["maxPreparedStatements"] > 0 and spec["instances"] == 2
    before = wait_for(lambda: pgbouncer_config_hash(kubectl, shop), 120, "every PgBouncer running its pgbouncer.ini")

    def primary_pool(size: int) -> None:
        kubectl("-n", shop, "patch", "sdc", "shop", "--type=merge",
                "-p", json.dumps({"spec": {"pgbouncer": {"primaryPoolSize": size}}}))

    primary_pool(2)
    try:
        wait_for(lambda: pgbouncer_config_hash(kubectl, shop) not in (None, before), 120,
                 "every PgBouncer reloaded with a primary pool of 2", interval=1)
        run = ('IFS= read -r PGPASSWORD; export PGPASSWORD; '
               'pgbench -n -M prepared -c 8 -j 8 -t 25 -f <(printf "%s" "$2") "$1"')
        conninfo = "host=shop-pgbouncer port=5432 dbname=shop user=shop connect_timeout=10"
        proc = kubectl("-n", shop, "exec", "-i", "shop-1-0", "-c", "postgres", "--", "bash", "-c", run, "pgbench",
                       conninfo, PREPARED_SCRIPT, input=password + "\n", timeout=180, check=False)
        assert proc.returncode == 0, f"pgbench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        assert "number of transactions actually processed: 200/200" in proc.stdout, proc.stdout
    finally:
        primary_pool(spec["primaryPoolSize"])
        wait_for(lambda: pgbouncer_config_hash(kubectl, shop) == before, 120,
                 "every PgBouncer back on its primary pool", interval=1)


def test_redis_answers_with_its_password(kubectl, shop):
    pod = kubectl.json("-n", shop, "get", "pods", "-l", "app.kubernetes.io/component=redis")["items"][0]
    name = pod["metadata"]["name"]
    # REDISCLI_AUTH comes from the Secret in the pod's env; without it Redis refuses.
    assert kubectl("-n", shop, "exec", name, "--", "redis-cli", "ping").stdout.strip() == "PONG"
    denied = kubectl("-n", shop, "exec", name, "--", "env", "-u", "REDISCLI_AUTH", "redis-cli", "ping").stdout
    assert "NOAUTH" in denied
    settings = kubectl.json("-n", shop, "get", "configmap", "shop-cache")["data"]
    assert settings["CACHE_TTL_LISTINGS_SECONDS"] == "300"


@pytest.mark.parametrize("cronjob", ["shop-partitions-orders", "shop-refresh-shop-analytics"])
def test_cronjob_runs_to_completion(kubectl, shop, cronjob):
    job = f"{cronjob[:40]}-manual"
    kubectl("-n", shop, "create", "job", f"--from=cronjob/{cronjob}", job)
    try:
        kubectl.wait("-n", shop, "--for=condition=Complete", f"job/{job}", timeout=300)
    except AssertionError:
        logs = kubectl("-n", shop, "logs", f"job/{job}", check=False)
        raise AssertionError(f"job {job} did not complete:\n{logs.stdout}\n{logs.stderr}") from None
    if "partitions" in cronjob:
        partitions = psql(kubectl, shop, "shop-1-0",
                          "select count(*) from pg_inherits where inhparent = 'orders'::regclass", "shop")
        assert int(partitions) >= 5  # this month, three ahead, and DEFAULT


def test_drift_is_undone(kubectl, shop):
    kubectl("-n", shop, "delete", "service", "shop-rw")
    kubectl("-n", shop, "patch", "deployment", "shop-pgbouncer", "--type", "merge",
            "-p", json.dumps({"spec": {"replicas": 5, "template": {"spec": {"terminationGracePeriodSeconds": 7}}}}))
    wait_for(lambda: kubectl("-n", shop, "get", "service", "shop-rw", check=False).returncode == 0,
             120, "the deleted Service to come back")

    def deployment_restored():
        spec = kubectl.json("-n", shop, "get", "deployment", "shop-pgbouncer")["spec"]
        return spec["replicas"] == 2 and spec["template"]["spec"].get("terminationGracePeriodSeconds") == 30
    wait_for(deployment_restored, 120, "the hand-edited PgBouncer Deployment to be restored")


def test_bad_clusters_are_refused_and_nothing_is_built(kubectl, images, operator, namespace):
    bad = example_cluster(images, namespace, name="bad")
    bad["spec"]["replicas"] = [{"name": "analytics", "promotable": False}]
    proc = kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert proc.returncode != 0
    assert "failover needs at least one replica with promotable: true" in proc.stderr

    shrink = example_cluster(images, namespace, name="bad")
    shrink["spec"]["postgres"]["parameters"] = {"max_connections": "50"}
    proc = kubectl("apply", "-f", "-", input=yaml.safe_dump(shrink), check=False)
    assert "PgBouncer pools do not fit max_connections" in proc.stderr

    short = example_cluster(images, namespace, name="bad")
    short["spec"]["failover"] = {"lease": {"durationSeconds": 5, "fenceMarginSeconds": 3}}
    proc = kubectl("apply", "-f", "-", input=yaml.safe_dump(short), check=False)
    assert "durationSeconds - fenceMarginSeconds must be at least 3" in proc.stderr

    # what the schema cannot judge, the operator refuses with a condition and an Event
    invalid = example_cluster(images, namespace, name="bad")
    invalid["spec"]["maintenance"] = {"materializedViews": [{"name": "v", "schedule": "61 * * * *"}]}
    kubectl.apply(yaml.safe_dump(invalid))
    status = wait_for(lambda: (s := cluster_status(kubectl, namespace, "bad")).get("phase") == "InvalidSpec" and s,
                      120, "the InvalidSpec condition")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec" and "outside 0-59" in ready["message"]
    events = kubectl.json("-n", namespace, "get", "events", "--field-selector", "type=Warning")["items"]
    assert any(e["reason"] == "InvalidSpec" and "outside 0-59" in e["message"] for e in events)
    children = kubectl.json("-n", namespace, "get", "statefulsets,deployments,services,secrets",
                            "-l", "shopdb.io/cluster=bad")["items"]
    assert children == []


def test_an_invalid_cluster_can_be_deleted(kubectl, images, operator, namespace):
    """A refused cluster still carries the operator's finalizer (kopf adds it for the failover
    daemon and the drift timer, which run for it too); deleting it must release the finalizer
    and leave nothing behind."""
    invalid = example_cluster(images, namespace, name="bad")
    invalid["spec"]["maintenance"] = {"materializedViews": [{"name": "v", "schedule": "61 * * * *"}]}
    kubectl.apply(yaml.safe_dump(invalid))
    wait_for(lambda: cluster_status(kubectl, namespace, "bad").get("phase") == "InvalidSpec", 120,
             "the InvalidSpec condition")
    finalizers = kubectl.json("-n", namespace, "get", "sdc", "bad")["metadata"].get("finalizers", [])
    assert "shopdb.io/finalizer" in finalizers
    time.sleep(20)  # past the drift timer's first run (15 s): the report had it and the daemon running on

    kubectl("-n", namespace, "delete", "sdc", "bad", "--wait=false")

    def gone() -> bool:
        return not kubectl("-n", namespace, "get", "sdc", "bad", "-o", "name", "--ignore-not-found").stdout.strip()
    try:
        wait_for(gone, 60, "the invalid cluster to be deleted")
    except AssertionError:
        meta = kubectl.json("-n", namespace, "get", "sdc", "bad")["metadata"]
        raise AssertionError(f"the invalid cluster is still there 60s after `kubectl delete`: finalizers "
                             f"{meta.get('finalizers')}, deletionTimestamp {meta.get('deletionTimestamp')}") from None
    left = kubectl.json("-n", namespace, "get", "statefulsets,deployments,services,configmaps,secrets,pvc",
                        "-l", "shopdb.io/cluster=bad")["items"]
    assert left == [], [f"{i['kind']}/{i['metadata']['name']}" for i in left]


def test_the_load_benchmark_runs_on_the_example_cluster(kubectl, shop):
    """tests/bench/load.py --smoke: a tiny marketplace in its own schema, every scenario for
    a few seconds through PgBouncer and straight to the instances, EXPLAIN and
    pg_stat_statements (which the operator preloads and creates at bootstrap). It asserts
    that everything ran without errors, not how fast."""
    if not is_local_cluster(kubectl):
        pytest.skip("the benchmark reaches Services and pods by their cluster addresses, which only the local "
                    "cluster (tests/cluster/localkube) routes to the test host")
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "bench" / "load.py"), "--smoke", "--namespace", shop,
                           "--cluster", "shop", "--kubeconfig", kubectl.kubeconfig],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    assert "smoke: every scenario ran" in proc.stdout
    extensions = psql(kubectl, shop, "shop-1-0", "select extname from pg_extension order by 1", "shop")
    assert "pg_stat_statements" in extensions.splitlines()


def test_deleting_the_cluster_keeps_its_volumes(kubectl, shop):
    claims = {c["metadata"]["name"] for c in kubectl.json("-n", shop, "get", "pvc")["items"]}
    assert claims == {"data-shop-1-0", "data-shop-2-0", "data-shop-3-0", "data-shop-analytics-0"}
    kubectl("-n", shop, "delete", "sdc", "shop", "--wait=true", timeout=300)
    wait_for(lambda: not kubectl.json("-n", shop, "get", "statefulsets,deployments,services")["items"],
             300, "the cluster's objects to be removed")
    remaining = {c["metadata"]["name"] for c in kubectl.json("-n", shop, "get", "pvc")["items"]}
    assert remaining == claims
    secrets = {s["metadata"]["name"] for s in kubectl.json("-n", shop, "get", "secrets", "-l", "shopdb.io/cluster=shop")["items"]}
    assert {"shop-superuser", "shop-app", "shop-replication"} <= secrets
