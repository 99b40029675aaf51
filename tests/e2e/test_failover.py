"""Automated failover on the real cluster, under continuous writes through PgBouncer's
primary route (load.Writer), with every instance sampled for writability several times a
second (load.Sampler).

Two clusters, one at a time (conftest's `clusters`): `async` (the small example)
and `sync` (the same with synchronous replication, ANY 1). Faults are real: a deleted pod,
a PostgreSQL killed in its container (SIGQUIT: immediate shutdown, no checkpoint, like a
crash), walreceivers frozen with SIGSTOP, a cordoned node, an operator pod force-deleted.
One fault is injected: the operator is held right after recording a step (env
SHOPDB_TEST_HOLD_AFTER_STEP) so that it is killed for real at an exact point.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time

import pytest

from failovers import (ANALYTICS, FAILOVER_TIMEOUT, INSTANCES, REJOIN_TIMEOUT, STEPS, Freezer,
                       assert_lost_writes_are_the_newest, delete_pod, failover_since, freeze_walreceivers, kill_postgres, lease_holder, operator_pods, under_load)
from load import pgbouncer_pods
from support import OPERATOR_NAMESPACE, metric_values, operator_metrics, wait_for

pytestmark = pytest.mark.e2e

# --- asynchronous replication ---------------------------------------------------------------

def test_deleted_primary_pod_fails_over_and_rejoins(kubectl, clusters):
    view = clusters["async"]
    outcome = under_load(view, "pod-delete", delete_pod(kubectl, view.namespace))
    assert outcome.lost == []  # a deleted pod shuts down fast, sending all WAL to the standbys first
    assert outcome.entry["reason"].endswith("being deleted") or "is down" in outcome.entry["reason"]
    counted = wait_for(lambda: sum(metric_values(operator_metrics(kubectl), "shopdb_failovers_total",
                                                 namespace=view.namespace, kind="failover")), 30,
                       "the failover in the operator's metrics")
    assert counted >= 1


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
        freeze_walreceivers(kubectl, view, pool, "STOP")
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
        wait_for(lambda: any(e["reason"] == "CandidateTooFarBehind" for e in kubectl.json(
            "-n", namespace, "get", "events", "--field-selector", "type=Warning")["items"]), 30,
            "the CandidateTooFarBehind Warning Event (posted after the record)")
        time.sleep(6)  # three more checks: still refused, and nobody writable
        assert view.status()["failover"]["phase"] == "Refused"
        assert view.sql(ANALYTICS, "SELECT pg_is_in_recovery()") == [(True,)]
        for instance in pool:
            assert view.sql(instance, "SELECT pg_is_in_recovery()") == [(True,)]
    finally:
        freeze_walreceivers(kubectl, view, pool, "CONT")
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

def test_synchronous_failover_under_load_loses_nothing_and_keeps_pgbouncer_and_idle_clients(kubectl, clusters):
    """250 clients writing through PgBouncer and 50 idle ones, the primary's PostgreSQL
    killed: no acknowledged write lost, no PgBouncer restarted (no `KILL` of a database,
    pgbouncer/pgbouncer#1401), and every idle client's same connection works afterwards."""
    view = clusters["sync"]
    bouncers = pgbouncer_pods(view.kubeconfig, view.namespace, view.name)
    outcome = under_load(view, "sync-kill", kill_postgres(kubectl, view.namespace), clients=250, idle=50)
    writers = outcome.writer
    kept, broken = writers.check_idle()
    errors = collections.Counter(message for _, message in writers.failures)
    print(f"250 writers: {len(writers.failures)} failed transactions, {writers.reconnects} reconnects; "
          f"idle clients kept {kept}, broken {broken}; errors: {errors.most_common(5)}")
    assert outcome.lost == [], f"acknowledged writes lost with synchronous replication: {outcome.lost[:20]}"
    assert pgbouncer_pods(view.kubeconfig, view.namespace, view.name) == bouncers, "a PgBouncer restarted"
    assert (kept, broken) == (50, 0)
    # Writers caught mid-transaction by the kill reconnect, as do those that asked PgBouncer
    # for a server in the moment between the kill and the hold (it refuses them: "server
    # login has been failing"); held clients are not dropped. With `KILL` of the database,
    # and before the checks woke on the killed sessions, every writer reconnected three
    # times on average.
    assert writers.reconnects <= 2 * 250, f"{writers.reconnects} reconnects: clients were dropped, not held"


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
    current = view.primary()
    same = subprocess.run([sys.executable, "-m", "shopdb_operator.cli", "switchover", "shop", "--to", current,
                           "-n", view.namespace], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KUBECONFIG": kubectl.kubeconfig})
    assert same.returncode != 0 and "already the primary" in same.stderr
    annotations = kubectl.json("-n", view.namespace, "get", "sdc", "shop")["metadata"].get("annotations") or {}
    assert "shopdb.io/switchover-to" not in annotations  # neither refusal asked the operator for anything


@pytest.mark.parametrize("step", STEPS[:-1])
def test_failover_resumes_after_the_operator_is_killed_at_each_step(kubectl, clusters, step):
    """The operator is held right after recording `step` (SHOPDB_TEST_HOLD_AFTER_STEP: the
    one injected fault, since a whole failover takes about a second), then its pod is
    force-deleted for real; the next pod resumes at the following step and completes.

    Held after `choose`, nothing is fenced yet: a deleted primary whose pod comes back
    meanwhile is still the primary, and the failover is rightly cancelled. So for that step
    the primary hangs instead (its processes stopped), and stays down until the fence."""
    view = clusters["sync"]
    deployment = "deployment/shopdb-operator"
    following = STEPS[STEPS.index(step) + 1]
    previous = (view.status().get("failover") or {}).get("startedAt")
    frozen: list[Freezer] = []

    def settle():
        kubectl("-n", OPERATOR_NAMESPACE, "rollout", "status", deployment, "--timeout=300s", timeout=330)
        wait_for(lambda: len(pods := operator_pods(kubectl)) == 1 and lease_holder(kubectl)
                 == pods[0]["metadata"]["name"], 120, "the new operator pod to hold the Lease")

    def fault(instance: str) -> None:
        if step == "choose":
            frozen.append(Freezer(kubectl, view.namespace, f"{instance}-0"))
            frozen[0].freeze()
        else:
            delete_pod(kubectl, view.namespace)(instance)

    kubectl("-n", OPERATOR_NAMESPACE, "set", "env", deployment, f"SHOPDB_TEST_HOLD_AFTER_STEP={step}")
    try:
        settle()
        killed = []

        def kill_operator_after_the_step() -> None:
            held = wait_for(lambda: failover_since(view, previous, step), FAILOVER_TIMEOUT, f"the {step} step recorded",
                            interval=0.3)
            time.sleep(5)
            still = failover_since(view, previous, step)
            assert still["phase"] == "Running" and following not in still["steps"], f"the hold did not hold: {still}"
            pod = operator_pods(kubectl)[0]["metadata"]["name"]
            kubectl("-n", OPERATOR_NAMESPACE, "delete", "pod", pod, "--grace-period=0", "--force")
            killed.append((pod, held))

        outcome = under_load(view, f"operator-killed-after-{step}", fault, after_fault=kill_operator_after_the_step)
        assert killed, "the operator was not killed"
        pod, held = killed[0]
        # the same failover, resumed: its steps up to the held one kept their recorded times
        assert outcome.entry["startedAt"] == held["startedAt"]
        recorded = view.status()["failover"]
        assert all(recorded["steps"][s] == held["steps"][s] for s in STEPS[:STEPS.index(step) + 1])
        if STEPS.index(step) >= STEPS.index("promote"):
            assert outcome.new == held["to"]  # promoted once, never again
        assert outcome.lost == []
        assert lease_holder(kubectl) != pod
    finally:
        for freezer in frozen:
            freezer.thaw()  # fenced: already killed
        kubectl("-n", OPERATOR_NAMESPACE, "set", "env", deployment, "SHOPDB_TEST_HOLD_AFTER_STEP-")
        settle()
