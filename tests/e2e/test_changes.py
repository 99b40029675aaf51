"""Changes to a running cluster, on the real cluster, under continuous writes through
PgBouncer (load.Writer counts acknowledged writes lost and failed transactions):

- a reloadable parameter is live on every instance within seconds, with no restart;
- a value PostgreSQL's settings table refuses is refused before anything changes;
- a value only the server can refuse (a time zone that does not exist) is never loaded:
  the last good configuration is put back, and an instance still restarts cleanly;
- a parameter that needs a restart rolls: replicas one at a time, then a switchover to an
  up-to-date promotable replica, with the operator killed in the middle; the promoted
  replica is resized in place to the primary's resources;
- a new image (a second tag of the local PostgreSQL image) rolls the same way, supervised:
  the primary's turn waits for `shopdb-operator promote`;
- a resources change is made in place, without a restart.
"""

from __future__ import annotations

import json
import time

import pytest

import os
import subprocess
import sys

from failovers import ANALYTICS, INSTANCES, PRIMARY_CPU, REPLICA_CPU, operator_pods, postgres_container, sql_or_none
from support import OPERATOR_NAMESPACE, REPO, cluster_status, wait_for

pytestmark = pytest.mark.e2e
RELOAD_TIMEOUT = 60  # far below the kubelet's own ConfigMap sync (its sync period, a minute or more)
ROLLOUT_TIMEOUT = 600
CONTAINERD = "/run/shopdb-localkube/containerd/containerd.sock"


@pytest.fixture(scope="module")
def view(clusters):
    return clusters["async"]


def set_parameters(kubectl, view, parameters: dict) -> None:
    kubectl("-n", view.namespace, "patch", "sdc", "shop", "--type=merge",
            "-p", json.dumps({"spec": {"postgres": {"parameters": parameters}}}))


def show(view, instance: str, name: str) -> str | None:
    rows = sql_or_none(view, instance, f"SHOW {name}")
    return rows[0][0] if rows else None


def started(view) -> dict[str, object]:
    """Each instance's postmaster start time: unchanged means not restarted."""
    return {i: view.sql(i, "SELECT pg_postmaster_start_time()")[0][0] for i in INSTANCES}


def warnings(kubectl, view, reason: str) -> list[str]:
    events = kubectl.json("-n", view.namespace, "get", "events", "--field-selector",
                          f"type=Warning,reason={reason}")["items"]
    return [e["message"] for e in events]


def config_maps_hold(kubectl, view, text: str) -> list[str]:
    found = []
    for instance in INSTANCES:
        data = kubectl.json("-n", view.namespace, "get", "configmap", f"{instance}-config")["data"]
        if text in data["postgresql.conf"]:
            found.append(instance)
    return found


def test_a_reloadable_parameter_is_live_everywhere_within_seconds_without_a_restart(kubectl, view):
    before = started(view)
    writer = view.writer("reload").start()
    try:
        wait_for(lambda: len(writer.acked) >= 20, 60, "writes through PgBouncer", interval=0.2)
        changed_at = time.monotonic()
        set_parameters(kubectl, view, {"log_min_duration_statement": "250ms", "work_mem": "6MB"})
        wait_for(lambda: all(show(view, i, "log_min_duration_statement") == "250ms" for i in INSTANCES),
                 RELOAD_TIMEOUT, "the new value on every instance", interval=0.5)
        live_after = time.monotonic() - changed_at
        wait_for(lambda: writer.acked_after(time.monotonic()) >= 0 and len(writer.acked) >= 40, 30, "more writes")
    finally:
        writer.stop()
    print(f"\nreloadable parameter live on {len(INSTANCES)} instances after {live_after:.1f} s; "
          f"writes acked {len(writer.acked)}, failed {len(writer.failures)}")
    assert writer.failures == [] and writer.lost() == []
    assert started(view) == before, "an instance restarted"
    assert {show(view, i, "work_mem") for i in INSTANCES} == {"6MB"}
    configuration = wait_for(lambda: (c := cluster_status(kubectl, view.namespace).get("configuration") or {})
                             .get("parameters") == {"log_min_duration_statement": "250ms", "work_mem": "6MB"} and c,
                             30, "status.configuration.parameters")
    assert set(configuration["instances"]) == set(INSTANCES)
    assert all(e["pendingRestart"] == [] and e["loadedAt"] for e in configuration["instances"].values())
    events = kubectl.json("-n", view.namespace, "get", "events", "--field-selector", "reason=ConfigurationReloaded")
    assert events["items"], "no ConfigurationReloaded Event"


def test_a_pgbouncer_change_is_reloaded_without_dropping_a_client(kubectl, view):
    """RELOAD through the admin console: the same pods, a client connected before still served."""
    import psycopg

    from load import secret
    from shopdb_operator.builders.config_files import PGBOUNCER_ADMIN_USER

    selector = "app.kubernetes.io/component=pgbouncer"
    pods = sorted(p["metadata"]["name"] for p in
                  kubectl.json("-n", view.namespace, "get", "pods", "-l", selector)["items"])
    client = psycopg.connect(host=view.pgbouncer, port=5432, user="shop", password=view.app, dbname="shop",
                             autocommit=True, connect_timeout=5, prepare_threshold=None)
    admin_password = secret(view.kubeconfig, view.namespace, "shop-pgbouncer")

    def max_client_conn() -> set[str]:
        seen = set()
        for pod in kubectl.json("-n", view.namespace, "get", "pods", "-l", selector)["items"]:
            with psycopg.connect(host=pod["status"]["podIP"], port=5432, user=PGBOUNCER_ADMIN_USER,
                                 password=admin_password, dbname="pgbouncer", autocommit=True, connect_timeout=5,
                                 cursor_factory=psycopg.ClientCursor) as admin:
                rows = admin.execute("SHOW CONFIG", prepare=False).fetchall()
                seen |= {str(r[1]) for r in rows if r[0] == "max_client_conn"}
        return seen

    try:
        assert client.execute("SELECT 1").fetchone() == (1,)
        kubectl("-n", view.namespace, "patch", "sdc", "shop", "--type=merge", "-p",
                json.dumps({"spec": {"pgbouncer": {"maxClientConn": 900}}}))
        wait_for(lambda: max_client_conn() == {"900"}, RELOAD_TIMEOUT, "max_client_conn 900 in every PgBouncer",
                 interval=1)
        assert client.execute("SELECT 2").fetchone() == (2,)  # the same connection
    finally:
        client.close()
    assert sorted(p["metadata"]["name"] for p in
                  kubectl.json("-n", view.namespace, "get", "pods", "-l", selector)["items"]) == pods


def test_a_value_the_settings_table_refuses_changes_nothing(kubectl, view):
    generation_before = kubectl.json("-n", view.namespace, "get", "sdc", "shop")["metadata"]["generation"]
    config_before = {i: kubectl.json("-n", view.namespace, "get", "configmap", f"{i}-config")["data"] for i in INSTANCES}
    set_parameters(kubectl, view, {"work_mem": "banana"})
    wait_for(lambda: cluster_status(kubectl, view.namespace).get("phase") == "InvalidSpec", 60, "InvalidSpec")
    message = ("spec.postgres.parameters.work_mem: 'banana' is not valid (it is not a number); allowed: an amount "
               "of memory from 64kB to 2147483647kB")
    wait_for(lambda: any(message in m for m in warnings(kubectl, view, "InvalidSpec")), 30, "the Warning Event")
    time.sleep(5)  # a check or two: nothing may follow
    assert {i: kubectl.json("-n", view.namespace, "get", "configmap", f"{i}-config")["data"]
            for i in INSTANCES} == config_before
    assert kubectl.json("-n", view.namespace, "get", "sdc", "shop")["metadata"]["generation"] > generation_before
    set_parameters(kubectl, view, {"work_mem": None})
    wait_for(lambda: cluster_status(kubectl, view.namespace).get("phase") == "Ready", 120, "Ready again")


def test_a_value_only_the_server_refuses_is_never_loaded_and_the_last_good_one_comes_back(kubectl, view):
    writer = view.writer("refused").start()
    try:
        wait_for(lambda: len(writer.acked) >= 20, 60, "writes through PgBouncer", interval=0.2)
        set_parameters(kubectl, view, {"timezone": "Mars/Olympus_Mons"})
        wait_for(lambda: any("Mars/Olympus_Mons" in m and "PostgreSQL refused them" in m
                             for m in warnings(kubectl, view, "InvalidSpec")), RELOAD_TIMEOUT,
                 "the refusal as a Warning Event")
        status = cluster_status(kubectl, view.namespace)
        reconciled = next(c for c in status["conditions"] if c["type"] == "Reconciled")
        assert reconciled["status"] == "False" and "timezone" in reconciled["message"], reconciled
        assert "invalid value for parameter" in " ".join(status["configuration"]["rejected"]["problems"])
        wait_for(lambda: config_maps_hold(kubectl, view, "Mars") == [], 30, "the last good ConfigMaps back")
        assert {show(view, i, "timezone") for i in INSTANCES} != {"Mars/Olympus_Mons"}
        # the files in the pods follow (the refused value never reached a server: a restart is clean)
        replica = next(i for i in INSTANCES if i != view.primary() and i != "shop-analytics")
        wait_for(lambda: "Mars" not in (sql_or_none(view, replica, "SELECT pg_read_file("
                                        "'/etc/shopdb/config/postgresql.conf')") or [("Mars",)])[0][0],
                 RELOAD_TIMEOUT, "the pod's file put back")
        kubectl("-n", view.namespace, "delete", "pod", f"{replica}-0", "--wait=true", timeout=120)
        wait_for(lambda: show(view, replica, "timezone") not in (None, "Mars/Olympus_Mons"), 180,
                 f"{replica} back after a restart")
        wait_for(lambda: view.all_replicas_stream(INSTANCES), 180, "every replica streaming")
        # a good value goes through again
        set_parameters(kubectl, view, {"timezone": "Europe/Paris"})
        wait_for(lambda: all(show(view, i, "timezone") == "Europe/Paris" for i in INSTANCES), RELOAD_TIMEOUT,
                 "the corrected value everywhere")
        wait_for(lambda: cluster_status(kubectl, view.namespace).get("phase") == "Ready", 120, "Ready again")
        configuration = cluster_status(kubectl, view.namespace)["configuration"]
        assert not configuration.get("rejected") and configuration["parameters"]["timezone"] == "Europe/Paris"
    finally:
        writer.stop()
    assert writer.lost() == []
    assert writer.failures == [], writer.failures


def rollout(kubectl, view) -> dict:
    return cluster_status(kubectl, view.namespace).get("rollout") or {}


def restarts_of(kubectl, view) -> dict[str, tuple[str, int]]:
    """Each database pod's uid and its postgres container's restart count."""
    found = {}
    for instance in INSTANCES:
        pod = kubectl.json("-n", view.namespace, "get", "pod", f"{instance}-0")
        status = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "postgres")
        found[instance] = (pod["metadata"]["uid"], status["restartCount"])
    return found


def longest_gap(writer) -> float:
    """The longest time between two acknowledged writes."""
    times = [t for _, t in writer.acked]
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def rolled(kubectl, view, check) -> bool:
    state = rollout(kubectl, view)
    return not state.get("pending") and not state.get("current") and all(check(i) for i in INSTANCES)


def wait_rolled(kubectl, view, check, what: str) -> None:
    """Until the rolling update is over and `check` holds everywhere; on a timeout, what the
    rollout recorded and the operator's last lines."""
    try:
        wait_for(lambda: rolled(kubectl, view, check), ROLLOUT_TIMEOUT, what, interval=2)
    except AssertionError as err:
        logs = kubectl("-n", OPERATOR_NAMESPACE, "logs", "deployment/shopdb-operator", "--tail=60", check=False).stdout
        raise AssertionError(f"{err}\nstatus.rollout: {rollout(kubectl, view)}\n"
                             f"status.configuration: {cluster_status(kubectl, view.namespace).get('configuration')}\n"
                             f"operator:\n{logs}") from None


def test_a_restart_only_parameter_rolls_replicas_first_then_switches_over_with_the_operator_killed_midway(
        kubectl, view):
    old_primary, before = view.primary(), started(view)
    history = view.history()
    writer = view.writer("rolling").start()
    try:
        wait_for(lambda: len(writer.acked) >= 20, 60, "writes through PgBouncer", interval=0.2)
        begun = time.monotonic()
        set_parameters(kubectl, view, {"max_locks_per_transaction": "128"})
        # the first replica restarts: kill the operator right then (the rollout resumes)
        wait_for(lambda: rollout(kubectl, view).get("current"), RELOAD_TIMEOUT, "the first restart recorded",
                 interval=0.5)
        first = rollout(kubectl, view)["current"]["instance"]
        for pod in operator_pods(kubectl):
            kubectl("-n", OPERATOR_NAMESPACE, "delete", "pod", pod["metadata"]["name"], "--grace-period=0",
                    "--force", check=False)
        wait_rolled(kubectl, view, lambda i: show(view, i, "max_locks_per_transaction") == "128",
                    "every instance restarted with max_locks_per_transaction 128")
        took = time.monotonic() - begun
    finally:
        writer.stop()
    print(f"\nrolling update (4 instances, switchover): {took:.0f} s; writes acked {len(writer.acked)}, "
          f"failed {len(writer.failures)}, lost {len(writer.lost())}; longest write gap {longest_gap(writer):.1f} s")
    assert writer.lost() == []
    state = rollout(kubectl, view)
    # replicas one at a time, never-promoted first, the old primary last (after the switchover)
    assert first == ANALYTICS and state["done"][0] == ANALYTICS, state
    assert state["done"][-1] == old_primary and sorted(state["done"]) == sorted(INSTANCES), state
    new_primary = view.primary()
    assert new_primary not in (old_primary, ANALYTICS)
    entry = view.history()[-1]
    assert entry["kind"] == "switchover" and entry["to"] == new_primary and entry["reason"].startswith("rolling update")
    assert len(view.history()) == len(history) + 1 or len(history) >= 10, "more than one switchover"
    assert all(started(view)[i] != before[i] for i in INSTANCES), "an instance was not restarted"
    # the promoted replica has the primary's resources, in place (not restarted again)
    pod = kubectl.json("-n", view.namespace, "get", "pod", f"{new_primary}-0")
    wait_for(lambda: postgres_container(kubectl.json("-n", view.namespace, "get", "pod", f"{new_primary}-0")["spec"])
             ["resources"]["limits"]["cpu"] == PRIMARY_CPU, 60, "the new primary resized in place")
    assert kubectl.json("-n", view.namespace, "get", "pod", f"{new_primary}-0")["metadata"]["uid"] == pod["metadata"]["uid"]
    old_pod = kubectl.json("-n", view.namespace, "get", "pod", f"{old_primary}-0")
    assert postgres_container(old_pod["spec"])["resources"]["limits"]["cpu"] == REPLICA_CPU
    assert all(not e.get("pendingRestart") for e in
               (cluster_status(kubectl, view.namespace).get("configuration") or {}).get("instances", {}).values())


def tag_second_postgres_image(images) -> str:
    """A second tag of the local PostgreSQL image, as a minor version upgrade would bring."""
    tag = images.postgres.rsplit(":", 1)[0] + ":15-rollout"
    subprocess.run(["ctr", "--address", CONTAINERD, "-n", "k8s.io", "images", "tag", "--force", images.postgres, tag],
                   check=True, capture_output=True, timeout=60)
    return tag


def test_a_new_image_rolls_and_a_supervised_primary_waits_for_its_promote(kubectl, view, images):
    tag = tag_second_postgres_image(images)
    old_primary = view.primary()
    history = len(view.history())
    writer = view.writer("supervised").start()
    try:
        wait_for(lambda: len(writer.acked) >= 20, 60, "writes through PgBouncer", interval=0.2)
        begun = time.monotonic()
        kubectl("-n", view.namespace, "patch", "sdc", "shop", "--type=merge", "-p", json.dumps(
            {"spec": {"postgres": {"image": tag}, "updates": {"primaryUpdateStrategy": "supervised"}}}))
        state = wait_for(lambda: "promote" in (rollout(kubectl, view).get("waiting") or "") and rollout(kubectl, view),
                         ROLLOUT_TIMEOUT, "the rollout waiting for the primary's promote", interval=2)
        assert list(state["pending"]) == [old_primary], state
        waited_at = time.monotonic()
        time.sleep(6)  # a few checks: it keeps waiting
        assert view.primary() == old_primary and len(view.history()) == history
        target = state["waiting"].split("--to ")[1].split("`")[0]
        env = {**os.environ, "KUBECONFIG": kubectl.kubeconfig, "PYTHONPATH": str(REPO / "operator")}
        subprocess.run([sys.executable, "-m", "shopdb_operator.cli", "promote", "shop", "--to", target,
                        "-n", view.namespace], check=True, env=env, timeout=60)
        wait_rolled(kubectl, view, lambda i: postgres_container(
            kubectl.json("-n", view.namespace, "get", "pod", f"{i}-0")["spec"])["image"] == tag,
            "every pod on the new image")
        took = time.monotonic() - begun
    finally:
        writer.stop()
    print(f"\nimage rollout, supervised: replicas in {waited_at - begun:.0f} s, {took:.0f} s in all; writes acked "
          f"{len(writer.acked)}, failed {len(writer.failures)}, lost {len(writer.lost())}; longest write gap "
          f"{longest_gap(writer):.1f} s")
    assert writer.lost() == []
    assert view.primary() == target and len(view.history()) == history + 1


def test_a_resources_change_is_made_in_place_without_a_restart(kubectl, view):
    before = restarts_of(kubectl, view)
    kubectl("-n", view.namespace, "patch", "sdc", "shop", "--type=merge", "-p", json.dumps(
        {"spec": {"postgres": {"resources": {"replica": {"cpu": "300m", "memory": "256Mi"}}}}}))
    replicas = [i for i in INSTANCES if i != view.primary()]
    wait_for(lambda: all(postgres_container(kubectl.json("-n", view.namespace, "get", "pod", f"{i}-0")["spec"])
                         ["resources"]["limits"]["cpu"] == "300m" for i in replicas), 120, "replicas resized")
    # the kubelet applied it: the container reports the new resources
    wait_for(lambda: all(next(c for c in kubectl.json("-n", view.namespace, "get", "pod", f"{i}-0")["status"]
                              ["containerStatuses"] if c["name"] == "postgres").get("resources", {})
                         .get("limits", {}).get("cpu") == "300m" for i in replicas), 120, "the resize applied")
    assert restarts_of(kubectl, view) == before
    assert not rollout(kubectl, view).get("pending")
