"""Builders: the fields that matter in every child object."""

from contexts import make_context

from shopdb_operator.builders import desired_objects
from shopdb_operator.builders.cronjobs import bounded_name, maintenance_cronjobs
from shopdb_operator.builders.network import postgres_network_policy
from shopdb_operator.builders.pgbouncer import pgbouncer_backends, pgbouncer_config_map, pgbouncer_deployment
from shopdb_operator.builders.postgres import instance_statefulset
from shopdb_operator.builders.redis import cache_settings_config_map, redis_conf, redis_deployment
from shopdb_operator.builders.secrets import (APP_CREDENTIAL, SUPERUSER_CREDENTIAL, credential_secret)
from shopdb_operator.builders.services import database_services


def by_name(objects, kind):
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_every_child_is_owned_by_the_cluster(ctx):
    objects = desired_objects(ctx)
    assert len(objects) > 20
    for obj in objects:
        refs = obj["metadata"]["ownerReferences"]
        assert refs == [{"apiVersion": "shopdb.io/v1alpha1", "kind": "ShopDatabaseCluster", "name": "shop",
                         "uid": "uid-1234", "controller": True, "blockOwnerDeletion": True}], obj["metadata"]["name"]
        assert obj["metadata"]["namespace"] == "shop"
        assert obj["metadata"]["labels"]["shopdb.io/cluster"] == "shop"


def test_expected_children_for_the_design_topology(ctx):
    objects = desired_objects(ctx)
    assert sorted(by_name(objects, "StatefulSet")) == ["shop-1", "shop-2", "shop-3", "shop-analytics"]
    assert sorted(by_name(objects, "Service")) == sorted([
        "shop-rw", "shop-ro", "shop-instances", "shop-search", "shop-orders", "shop-analytics",
        "shop-pgbouncer", "shop-redis"])
    assert sorted(by_name(objects, "Deployment")) == ["shop-pgbouncer", "shop-redis"]
    assert sorted(by_name(objects, "CronJob")) == ["shop-partitions-orders", "shop-refresh-shop-analytics"]
    assert sorted(by_name(objects, "PodDisruptionBudget")) == ["shop-pgbouncer", "shop-postgres"]
    assert sorted(by_name(objects, "NetworkPolicy")) == ["shop-pgbouncer", "shop-postgres", "shop-redis"]
    assert "Secret" not in {o["kind"] for o in objects}  # created once, elsewhere


def test_services_select_by_role_and_route_labels(ctx):
    services = by_name(database_services(ctx), "Service")
    assert services["shop-rw"]["spec"]["selector"] == {
        "shopdb.io/cluster": "shop", "app.kubernetes.io/component": "postgres", "shopdb.io/role": "primary"}
    assert services["shop-ro"]["spec"]["selector"]["shopdb.io/role"] == "replica"
    assert services["shop-ro"]["spec"]["selector"]["shopdb.io/promotable"] == "true"
    assert services["shop-search"]["spec"]["selector"]["shopdb.io/route-search"] == "true"
    assert services["shop-instances"]["spec"]["clusterIP"] == "None"
    assert services["shop-instances"]["spec"]["publishNotReadyAddresses"] is True
    for svc in services.values():
        assert svc["spec"]["ports"][0]["port"] == 5432


def test_pod_labels_match_the_services_that_should_select_them(ctx):
    def pod_labels(name):
        return instance_statefulset(ctx, ctx.topology.instance(name))["spec"]["template"]["metadata"]["labels"]
    assert pod_labels("shop-1")["shopdb.io/role"] == "primary"
    assert "shopdb.io/route-search" not in pod_labels("shop-1")
    assert pod_labels("shop-2")["shopdb.io/role"] == "replica"
    assert pod_labels("shop-2")["shopdb.io/route-search"] == "true"
    assert pod_labels("shop-3")["shopdb.io/route-orders"] == "true"
    assert pod_labels("shop-analytics")["shopdb.io/route-analytics"] == "true"
    assert pod_labels("shop-analytics")["shopdb.io/promotable"] == "false"


def test_statefulset_fields_that_matter(ctx):
    sts = instance_statefulset(ctx, ctx.topology.instance("shop-1"))
    spec = sts["spec"]
    assert spec["replicas"] == 1
    assert spec["updateStrategy"] == {"type": "OnDelete"}
    assert spec["serviceName"] == "shop-instances"
    assert spec["selector"]["matchLabels"] == {"shopdb.io/cluster": "shop", "app.kubernetes.io/component": "postgres",
                                               "shopdb.io/instance": "shop-1"}
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    claim = spec["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Ti"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 999 and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = env_of(container)
    assert env["SHOPDB_ROLE"] == {"fieldRef": {"fieldPath": "metadata.labels['shopdb.io/role']"}}
    assert env["SHOPDB_PRIMARY_HOST"] == "shop-rw"
    assert env["SHOPDB_PEER_SLOTS"] == "shop_2,shop_3,shop_analytics"
    assert env["SHOPDB_SUPERUSER_PASSWORD"] == {"secretKeyRef": {"name": "shop-superuser", "key": "password"}}
    assert "startupProbe" in container and "readinessProbe" in container and "livenessProbe" in container
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 3600 * 11
    replica = instance_statefulset(ctx, ctx.topology.instance("shop-2"))
    assert replica["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}


def test_reclaim_delete_deletes_claims_and_owns_secrets():
    ctx = make_context({"reclaimPolicy": "Delete"})
    sts = instance_statefulset(ctx, ctx.topology.instance("shop-1"))
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    assert credential_secret(ctx, SUPERUSER_CREDENTIAL, "x")["metadata"]["ownerReferences"][0]["uid"] == "uid-1234"


def test_retained_secrets_outlive_the_cluster(ctx):
    secret = credential_secret(ctx, APP_CREDENTIAL, "pw")
    assert "ownerReferences" not in secret["metadata"]
    assert secret["stringData"] == {"username": "shop", "password": "pw", "dbname": "shop",
                                    "host": "shop-pgbouncer", "port": "5432"}


def test_storage_class_and_init_sql_are_wired():
    ctx = make_context({"postgres": {"storage": {"storageClassName": "fast"},
                                     "initSQL": {"configMapName": "schema"}}})
    sts = instance_statefulset(ctx, ctx.topology.instance("shop-1"))
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["init"]["configMap"] == {"name": "schema", "items": [{"key": "init.sql", "path": "init.sql"}]}


def test_pgbouncer_routes_point_at_services(ctx):
    assert pgbouncer_backends(ctx) == {
        "primary": ("shop-rw", 5432), "ro": ("shop-ro", 5432), "search": ("shop-search", 5432),
        "orders": ("shop-orders", 5432), "analytics": ("shop-analytics", 5432)}
    deployment = pgbouncer_deployment(ctx)
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = env_of(pod["containers"][0])
    assert env["PGBOUNCER_APP_PASSWORD"] == {"secretKeyRef": {"name": "shop-app", "key": "password"}}
    assert env["PGBOUNCER_ADMIN_PASSWORD"] == {"secretKeyRef": {"name": "shop-pgbouncer", "key": "password"}}


def test_pgbouncer_pods_stay_when_its_config_changes():
    """pgbouncer.ini is reloaded in place (RELOAD keeps the clients): not a new template."""
    a = pgbouncer_deployment(make_context())
    b = pgbouncer_deployment(make_context({"pgbouncer": {"maxClientConn": 500}}))
    assert a["spec"]["template"] == b["spec"]["template"]
    assert pgbouncer_config_map(make_context()) != pgbouncer_config_map(make_context({"pgbouncer": {"maxClientConn": 500}}))


def test_redis_memory_policy_and_cache_ttls(ctx):
    conf = redis_conf(ctx)
    assert "maxmemory 6442450944" in conf  # 75% of 8Gi
    assert "maxmemory-policy allkeys-lru" in conf
    assert "requirepass" not in conf  # the password never sits in a ConfigMap
    cache = cache_settings_config_map(ctx)["data"]
    assert cache["CACHE_TTL_LISTINGS_SECONDS"] == "300"
    assert cache["CACHE_TTL_SEARCH_RESULTS_SECONDS"] == "900"
    assert cache["REDIS_HOST"] == "shop-redis"
    container = redis_deployment(ctx)["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert not any("REDIS_PASSWORD" in arg and "$" not in arg for arg in container["command"])


def test_redis_can_be_disabled():
    objects = desired_objects(make_context({"redis": {"enabled": False}}))
    assert not [o for o in objects if o["metadata"]["labels"]["app.kubernetes.io/component"] == "redis"]


def test_cronjobs_schedule_and_command(ctx):
    jobs = by_name(maintenance_cronjobs(ctx), "CronJob")
    part = jobs["shop-partitions-orders"]
    assert part["spec"]["schedule"] == "0 0 1 * *"
    assert part["spec"]["concurrencyPolicy"] == "Forbid"
    container = part["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "shopdb/operator:test"
    assert container["command"] == ["shopdb-operator", "maintain", "partitions", "--schema", "public",
                                    "--table", "orders", "--column", "created_at", "--premake", "3"]
    env = env_of(container)
    assert env["PGHOST"] == "shop-rw" and env["PGUSER"] == "shop"
    refresh = jobs["shop-refresh-shop-analytics"]
    assert refresh["spec"]["schedule"] == "0 * * * *"
    assert refresh["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == [
        "--view", "shop_analytics"]


def test_cronjob_image_override_and_long_names():
    ctx = make_context({"maintenance": {"image": "registry.example/ops:1",
                                        "partitionedTables": [{"table": "a_very_long_table_name_for_orders_history",
                                                               "retentionMonths": 24}]}},
                       name="a-rather-long-cluster-name-xyz")
    jobs = maintenance_cronjobs(ctx)
    assert all(len(j["metadata"]["name"]) <= 52 for j in jobs)
    container = jobs[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/ops:1"
    assert container["command"][-2:] == ["--retention-months", "24"]
    assert bounded_name("x" * 60) != bounded_name("x" * 61)


def test_database_accepts_only_bouncer_peers_jobs_and_operator(ctx):
    policy = postgres_network_policy(ctx)
    sources = policy["spec"]["ingress"][0]["from"]
    components = [s["podSelector"]["matchLabels"].get("app.kubernetes.io/component") for s in sources]
    assert components == ["pgbouncer", "postgres", "maintenance", None]
    assert sources[3] == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shopdb-system"}},
                          "podSelector": {"matchLabels": {"app.kubernetes.io/name": "shopdb-operator"}}}
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "postgres"


def test_builders_are_deterministic(ctx):
    assert desired_objects(ctx) == desired_objects(make_context())


def test_synchronous_standbys_are_promotable_peers_only():
    ctx = make_context({"postgres": {"synchronous": {"enabled": True, "number": 1}}})
    sts = {o["metadata"]["name"]: o for o in desired_objects(ctx) if o["kind"] == "ConfigMap"}
    conf = sts["shop-1-config"]["data"]["postgresql.conf"]
    assert "shop-2" in conf and "shop-3" in conf
    assert "shop-analytics" not in conf.split("synchronous_standby_names")[1].splitlines()[0]


def test_analytics_readiness_ignores_replay_lag(ctx):
    analytics = instance_statefulset(ctx, ctx.topology.instance("shop-analytics"))
    container = analytics["spec"]["template"]["spec"]["containers"][0]
    assert int(env_of(container)["SHOPDB_READY_MAX_LAG_BYTES"]) > ctx.spec.failover.max_lag_bytes
    assert "lifecycle" not in container  # the image's STOPSIGNAL makes the shutdown fast
    search = instance_statefulset(ctx, ctx.topology.instance("shop-2"))
    assert env_of(search["spec"]["template"]["spec"]["containers"][0])["SHOPDB_READY_MAX_LAG_BYTES"] == str(16 * 1024 * 1024)


def test_a_restarting_primary_holds_for_the_failover_window_only_when_failover_is_on():
    def hold(spec):
        ctx = make_context(spec)
        sts = instance_statefulset(ctx, ctx.topology.instance("shop-1"))
        return env_of(sts["spec"]["template"]["spec"]["containers"][0])["SHOPDB_PRIMARY_START_HOLD_SECONDS"]

    assert hold({}) == "6"
    assert hold({"failover": {"checkIntervalSeconds": 5, "failureThreshold": 4}}) == "20"
    assert hold({"failover": {"enabled": False}}) == "0"


def test_every_kind_built_is_one_the_client_can_write(ctx):
    from shopdb_operator.kube.client import PLURALS

    assert {o["kind"] for o in desired_objects(ctx)} <= set(PLURALS)


def test_the_instance_agent_may_read_and_renew_its_clusters_lease_and_nothing_else(ctx):
    objects = desired_objects(ctx)
    account = by_name(objects, "ServiceAccount")["shop-instance"]
    assert account["automountServiceAccountToken"] is False
    role = by_name(objects, "Role")["shop-instance"]
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "resourceNames": ["shop-primary"], "verbs": ["get", "patch"]}]
    binding = by_name(objects, "RoleBinding")["shop-instance"]
    assert binding["roleRef"]["name"] == "shop-instance"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "shop-instance", "namespace": "shop"}]
    # the account's objects come before the pods that use it
    kinds = [o["kind"] for o in objects]
    assert kinds.index("RoleBinding") < kinds.index("StatefulSet")


def test_only_the_agent_container_gets_the_token_and_it_runs_as_the_database_user(ctx):
    pod = by_name(desired_objects(ctx), "StatefulSet")["shop-1"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "shop-instance" and pod["automountServiceAccountToken"] is False
    assert pod["shareProcessNamespace"] is True  # the agent signals the postmaster; pause reaps fence.sh
    containers = {c["name"]: c for c in pod["containers"]}
    agent, postgres = containers["instance-agent"], containers["postgres"]
    assert agent["image"] == ctx.operator_image and agent["command"] == ["shopdb-operator", "instance-agent"]
    assert "runAsUser" not in agent["securityContext"] and pod["securityContext"]["runAsUser"] == 999
    agent_mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert agent_mounts["data"]["readOnly"] is True
    assert agent_mounts["agent-token"]["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert "agent-token" not in {m["name"] for m in postgres["volumeMounts"]}
    token = next(v for v in pod["volumes"] if v["name"] == "agent-token")["projected"]["sources"]
    assert token[0]["serviceAccountToken"]["expirationSeconds"] == 3600
    # both read and write the same lease file, on the volume they share
    assert env_of(agent)["SHOPDB_LEASE_FILE"] == env_of(postgres)["SHOPDB_LEASE_FILE"] == \
        "/var/run/postgresql/primary-lease"
    assert env_of(agent)["SHOPDB_PRIMARY_LEASE"] == "shop-primary"
    assert agent["resources"]["requests"]["cpu"] == "10m"


def test_the_primary_lease_names_the_recorded_primary_with_the_specs_timing():
    import datetime

    from shopdb_operator.builders.agent import primary_lease

    ctx = make_context({"failover": {"lease": {"durationSeconds": 20, "fenceMarginSeconds": 5, "clockSkewSeconds": 2}}})
    lease = primary_lease(ctx, "shop-1", datetime.datetime(2026, 12, 3, tzinfo=datetime.timezone.utc))
    assert lease["metadata"]["name"] == "shop-primary"
    assert lease["metadata"]["ownerReferences"][0]["uid"] == "uid-1234"
    assert lease["spec"]["holderIdentity"] == "shop-1" and lease["spec"]["leaseDurationSeconds"] == 20
    assert lease["metadata"]["annotations"] == {"shopdb.io/lease-duration-seconds": "20",
                                                "shopdb.io/fence-margin-seconds": "5",
                                                "shopdb.io/clock-skew-seconds": "2"}
