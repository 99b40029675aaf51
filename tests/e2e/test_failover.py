"""Automated failover on the real cluster, under continuous writes through PgBouncer's
primary route (load.Writer), with every instance sampled for writability several times a
second (load.Sampler).

Two clusters, built side by side at the start of the module: `async` (the small example)
and `sync` (the same with synchronous replication, ANY 1). Faults are real: a deleted pod,
a PostgreSQL killed in its container (SIGQUIT: immediate shutdown, no checkpoint, like a
crash), walreceivers frozen with SIGSTOP, a cordoned node, an operator pod force-deleted.
One fault is injected: the operator is held right after recording a step (env
SHOPDB_TEST_HOLD_AFTER_STEP) so that it is killed for real at an exact point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import pytest
import yaml

from load import ClusterView, FailoverRun, Writer, fail_over_under_load
from support import (OPERATOR_NAMESPACE, apply_schema_config_map, example_cluster, is_local_cluster,
                     wait_for)

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 600
FAILOVER_TIMEOUT = 180
REJOIN_TIMEOUT = 300
ANALYTICS = "shop-analytics"
INSTANCES = ["shop-1", "shop-2", "shop-3", ANALYTICS]


def sized(cluster: dict) -> dict:
    """Enough CPU that a primary under the test's writes, rewinds and clones answers its
    health checks in time (requests are limits: 100m starved it into a false failover)."""
    spec = cluster["spec"]
    spec["postgres"]["resources"] = {"primary": {"cpu": "500m", "memory": "512Mi"},
                                     "replica": {"cpu": "250m", "memory": "256Mi"}}
    spec["pgbouncer"]["resources"] = {"cpu": "50m", "memory": "64Mi"}
    spec["redis"]["resources"] = {"cpu": "50m", "memory": "64Mi"}
    return cluster


class Clusters:
    """The module's database clusters, one at a time (two would not fit two cores): asking
    for `sync` deletes `async` first."""

    def __init__(self, kubectl, images):
        self.kubectl, self.images = kubectl, images
        self.views: dict[str, ClusterView] = {}

    def __getitem__(self, kind: str) -> ClusterView:
        if kind not in self.views:
            for other in list(self.views):
                self.delete(other)
            self.views[kind] = self.create(kind)
        return self.views[kind]

    def create(self, kind: str) -> ClusterView:
        kubectl = self.kubectl
        namespace = f"e2e-failover-{kind}-{int(time.time()) % 100000}"
        kubectl("create", "namespace", namespace)
        apply_schema_config_map(kubectl, namespace)
        cluster = sized(example_cluster(self.images, namespace))
        if kind == "sync":
            cluster["spec"]["postgres"]["synchronous"] = {"enabled": True, "number": 1}
        kubectl.apply(yaml.safe_dump(cluster))
        wait_for(lambda: (kubectl.json("-n", namespace, "get", "sdc", "shop").get("status") or {}).get("phase")
                 == "Ready", READY_TIMEOUT, f"the {kind} cluster to become Ready", interval=3)
        view = ClusterView(kubectl.kubeconfig, namespace)
        wait_for(lambda: view.all_replicas_stream(INSTANCES), 180, f"every {kind} replica to stream")
        return view

    def delete(self, kind: str) -> None:
        view = self.views.pop(kind)
        self.kubectl("delete", "namespace", view.namespace, "--wait=true", "--ignore-not-found", timeout=300,
                     check=False)


@pytest.fixture(scope="module")
def clusters(kubectl, images, operator):
    """clusters["async"] / clusters["sync"]: a ClusterView, Ready with every replica streaming."""
    if not is_local_cluster(kubectl):
        pytest.skip("the failover tests reach pods and Services by their cluster addresses, which only the "
                    "local cluster (tests/cluster/localkube) routes to the test host")
    made = Clusters(kubectl, images)
    yield made
    for kind in list(made.views):
        made.delete(kind)


@dataclass
class Outcome:
    run: FailoverRun
    lost: list[int]

    @property
    def entry(self) -> dict:
        return self.run.entry

    @property
    def old(self) -> str:
        return self.run.old

    @property
    def new(self) -> str:
        return self.run.new

    @property
    def writer(self) -> Writer:
        return self.run.writer

    def report(self, what: str) -> str:
        sampler = self.run.sampler
        return (f"{what}: {self.old} -> {self.new} in {self.entry['durationSeconds']} s "
                f"(steps {self.entry['stepSeconds']}); longest write gap {self.run.longest_gap():.1f} s; "
                f"acked {len(self.writer.acked)}, failed {len(self.writer.failures)}, lost {len(self.lost)}; "
                f"{sampler.samples} writability samples, {len(sampler.overlaps)} with two writable")


def under_load(view: ClusterView, run: str, fault: Callable[[str], None], kind: str = "failover",
               after_fault: Callable[[], None] | None = None) -> Outcome:
    """load.fail_over_under_load, then what every failover must show."""
    result = fail_over_under_load(view, run, fault, INSTANCES, after_fault, FAILOVER_TIMEOUT, REJOIN_TIMEOUT)
    outcome = Outcome(result, result.writer.lost())
    print("\n" + outcome.report(run))
    entry, old = outcome.entry, outcome.old
    assert entry["kind"] == kind and entry["from"] == old
    recorded = view.status()["failover"]
    assert all(at >= recorded["startedAt"] for at in recorded["steps"].values()), f"stale steps: {recorded}"
    assert outcome.new != old and outcome.new != ANALYTICS and view.primary() == outcome.new
    assert view.sql(old, "SELECT pg_is_in_recovery()") == [(True,)], f"{old} did not rejoin read-only"
    assert result.sampler.overlaps == [], f"two writable instances at once: {result.sampler.overlaps}"
    # sampled from before the fault until the failover was over
    assert result.sampler.first_at < result.fault_at < result.fault_at + 1 < result.sampler.last_at
    return outcome


def assert_lost_writes_are_the_newest(outcome: Outcome) -> None:
    """Without synchronous replication acknowledged writes may be lost, but only the last
    ones before the fault (WAL is one stream): never a hole."""
    if outcome.lost:
        acked = [i for i, _ in outcome.writer.acked]
        first = acked.index(outcome.lost[0])
        assert outcome.lost == acked[first:first + len(outcome.lost)], "lost writes are not one run"
        assert all(i not in outcome.lost for i in acked[first + len(outcome.lost):] if i > outcome.lost[-1])


def delete_pod(kubectl, namespace: str) -> Callable[[str], None]:
    return lambda instance: kubectl("-n", namespace, "delete", "pod", f"{instance}-0", "--wait=false")


def kill_postgres(kubectl, namespace: str) -> Callable[[str], None]:
    """SIGQUIT to the postmaster (PID 1): immediate shutdown, the container exits."""
    return lambda instance: kubectl("-n", namespace, "exec", f"{instance}-0", "-c", "postgres", "--",
                                    "bash", "-c", "kill -QUIT 1")


# --- asynchronous replication ---------------------------------------------------------------

def test_deleted_primary_pod_fails_over_and_rejoins(kubectl, clusters):
    view = clusters["async"]
    outcome = under_load(view, "pod-delete", delete_pod(kubectl, view.namespace))
    assert outcome.lost == []  # a deleted pod shuts down fast, sending all WAL to the standbys first
    assert outcome.entry["reason"].endswith("being deleted") or "is down" in outcome.entry["reason"]


def test_killed_primary_container_fails_over_and_rejoins(kubectl, clusters):
    view = clusters["async"]
    outcome = under_load(view, "container-kill", kill_postgres(kubectl, view.namespace))
    assert "is down" in outcome.entry["reason"]
    assert_lost_writes_are_the_newest(outcome)
    status = view.status()
    assert status["failover"]["lagBytes"] <= 16 * 1024 * 1024  # the lag bound the choice enforced


def test_three_failovers_in_a_row(kubectl, clusters):
    view = clusters["async"]
    seen = []
    for round_ in range(3):
        outcome = under_load(view, f"row-{round_}", delete_pod(kubectl, view.namespace))
        assert outcome.lost == []
        seen.append((outcome.old, outcome.new))
        # the replica routes leave the new primary for a streaming pool replica
        wait_for(lambda: (t := view.status()["topology"])["currentPrimary"] not in t["routes"].values(),
                 120, "replica routes off the primary")
    assert all(new != ANALYTICS for _, new in seen)
    assert [old for old, _ in seen[1:]] == [new for _, new in seen[:-1]]


def _freeze_walreceivers(kubectl, view: ClusterView, instances: list[str], signal: str) -> None:
    for instance in instances:
        kubectl("-n", view.namespace, "exec", f"{instance}-0", "-c", "postgres", "--", "bash", "-c",
                f"kill -{signal} $(ps -eo pid,args | awk '/postgres: walreceiver/ && !/awk/ {{print $1}}')")


def test_analytics_is_never_promoted_even_when_most_up_to_date(kubectl, clusters):
    """The promotable replicas' walreceivers are frozen while writes go on, so the analytics
    replica alone holds the newest WAL; then the primary's pod is deleted on a cordoned node
    (it cannot come back). With maxLagBytes 0 no promotable replica qualifies: the failover
    is refused, visibly, and analytics stays a replica. Lifting the limit (as the refusal
    says) lets a promotable replica take over; analytics, past the fork, is rewound."""
    view = clusters["async"]
    namespace = view.namespace
    old = view.primary()
    pool = [i for i in INSTANCES if i not in (old, ANALYTICS)]
    nodes = [n["metadata"]["name"] for n in kubectl.json("get", "nodes")["items"]]
    kubectl("-n", namespace, "patch", "sdc", "shop", "--type", "merge", "-p",
            json.dumps({"spec": {"failover": {"maxLagBytes": 0}}}))
    writer = view.writer("analytics-ahead").start()
    try:
        wait_for(lambda: len(writer.acked) >= 20, 60, "writes before freezing", interval=0.2)
        _freeze_walreceivers(kubectl, view, pool, "STOP")
        frozen_at = time.monotonic()
        wait_for(lambda: writer.acked_after(frozen_at) >= 50, 60, "writes the frozen replicas miss", interval=0.2)

        def positions():
            return {i: view.sql(i, "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')")[0][0]
                    for i in [*pool, ANALYTICS]}
        ahead = wait_for(lambda: (p := positions())[ANALYTICS] > max(p[i] for i in pool) and p, 30,
                         "analytics ahead of the promotable replicas")
        print(f"\nreceived positions before the fault: {ahead}")
        for node in nodes:
            kubectl("cordon", node)
        delete_pod(kubectl, namespace)(old)
        refused = wait_for(lambda: ((s := view.status()).get("failover") or {}).get("phase") == "Refused" and s,
                           FAILOVER_TIMEOUT, "the failover to be refused")
    finally:
        writer.stop()
    try:
        assert refused["failover"]["refusal"]["reason"] == "CandidateTooFarBehind"
        blocked = next(c for c in refused["conditions"] if c["type"] == "FailoverBlocked")
        assert blocked["status"] == "True" and blocked["reason"] == "CandidateTooFarBehind"
        events = kubectl.json("-n", namespace, "get", "events", "--field-selector", "type=Warning")["items"]
        assert any(e["reason"] == "CandidateTooFarBehind" for e in events)
        time.sleep(6)  # three more checks: still refused, and nobody writable
        assert view.status()["failover"]["phase"] == "Refused"
        assert view.sql(ANALYTICS, "SELECT pg_is_in_recovery()") == [(True,)]
        for instance in pool:
            assert view.sql(instance, "SELECT pg_is_in_recovery()") == [(True,)]
    finally:
        _freeze_walreceivers(kubectl, view, pool, "CONT")
        kubectl("-n", namespace, "patch", "sdc", "shop", "--type", "merge", "-p",
                json.dumps({"spec": {"failover": {"maxLagBytes": None}}}))
    try:
        done = wait_for(lambda: ((s := view.status()).get("failover") or {}).get("phase") == "Completed" and s,
                        FAILOVER_TIMEOUT, "the failover once the limit is lifted")
    finally:
        for node in nodes:
            kubectl("uncordon", node)
    assert done["currentPrimary"] in pool and done["failover"]["from"] == old
    blocked = next(c for c in done["conditions"] if c["type"] == "FailoverBlocked")
    assert blocked["status"] == "False"
    lost = writer.lost(view.pgbouncer)
    print(f"async failover with analytics ahead: {done['failover']['from']} -> {done['currentPrimary']}, "
          f"candidate lag {done['failover'].get('lagBytes')} bytes, {len(lost)} acknowledged writes lost "
          f"(they reached only analytics), rewound: {done['failover'].get('rewound')}")
    wait_for(lambda: view.all_replicas_stream(INSTANCES), REJOIN_TIMEOUT,
             "the old primary and analytics streaming from the new primary")
    assert view.sql(ANALYTICS, "SELECT pg_is_in_recovery()") == [(True,)]


# --- synchronous replication ----------------------------------------------------------------

def test_synchronous_failover_loses_no_acknowledged_write(kubectl, clusters):
    view = clusters["sync"]
    outcome = under_load(view, "sync-kill", kill_postgres(kubectl, view.namespace))
    assert outcome.lost == [], f"acknowledged writes lost with synchronous replication: {outcome.lost[:20]}"


def test_switchover_by_annotation_and_by_the_cli_loses_nothing(kubectl, clusters):
    view = clusters["sync"]

    def annotate(old: str) -> None:
        target = next(i for i in INSTANCES if i not in (old, ANALYTICS))
        kubectl("-n", view.namespace, "annotate", "sdc", "shop", f"shopdb.io/switchover-to={target}")

    outcome = under_load(view, "switchover-annotation", annotate, kind="switchover")
    assert outcome.lost == [] and outcome.writer.failures == []

    def cli(old: str) -> None:
        target = next(i for i in INSTANCES if i not in (old, ANALYTICS))
        proc = subprocess.run([sys.executable, "-m", "shopdb_operator.cli", "switchover", "shop", "--to", target,
                               "-n", view.namespace], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "KUBECONFIG": kubectl.kubeconfig})
        assert proc.returncode == 0, proc.stderr
        assert "requested" in proc.stdout

    outcome = under_load(view, "switchover-cli", cli, kind="switchover")
    assert outcome.lost == [] and outcome.writer.failures == []
    refused = subprocess.run([sys.executable, "-m", "shopdb_operator.cli", "switchover", "shop", "--to", ANALYTICS,
                              "-n", view.namespace], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "KUBECONFIG": kubectl.kubeconfig})
    assert refused.returncode != 0 and "not a promotable instance" in refused.stderr


def _operator_pods(kubectl) -> list[dict]:
    pods = kubectl.json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=shopdb-operator")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _lease_holder(kubectl) -> str:
    lease = kubectl.json("-n", OPERATOR_NAMESPACE, "get", "lease", "shopdb-operator")
    return lease["spec"].get("holderIdentity", "")


def test_failover_completes_after_the_operator_is_killed_halfway(kubectl, clusters):
    view = clusters["sync"]
    deployment = "deployment/shopdb-operator"

    def settle():
        kubectl("-n", OPERATOR_NAMESPACE, "rollout", "status", deployment, "--timeout=300s", timeout=330)
        wait_for(lambda: len(pods := _operator_pods(kubectl)) == 1 and _lease_holder(kubectl)
                 == pods[0]["metadata"]["name"], 120, "the new operator pod to hold the Lease")

    kubectl("-n", OPERATOR_NAMESPACE, "set", "env", deployment, "SHOPDB_TEST_HOLD_AFTER_STEP=fence")
    try:
        settle()
        killed = []

        def kill_operator_after_fence() -> None:
            held = wait_for(lambda: "fence" in (((view.status().get("failover") or {}).get("steps")) or {})
                            and view.status()["failover"], FAILOVER_TIMEOUT, "the fence step recorded", interval=0.3)
            time.sleep(5)
            still = view.status()["failover"]
            assert still["phase"] == "Running" and "promote" not in still["steps"], "the hold did not hold"
            pod = _operator_pods(kubectl)[0]["metadata"]["name"]
            kubectl("-n", OPERATOR_NAMESPACE, "delete", "pod", pod, "--grace-period=0", "--force")
            killed.append((pod, held["to"]))

        outcome = under_load(view, "operator-killed", delete_pod(kubectl, view.namespace),
                             after_fault=kill_operator_after_fence)
        # resumed at the promote step, which may pick a replica further ahead than the one
        # chosen before the fence (a pool replica all the same: checked by under_load)
        assert killed and killed[0][1] != ANALYTICS
        assert outcome.lost == []
        assert _lease_holder(kubectl) != killed[0][0]
    finally:
        kubectl("-n", OPERATOR_NAMESPACE, "set", "env", deployment, "SHOPDB_TEST_HOLD_AFTER_STEP-")
        settle()
