"""When the operator must not fail over, and who acts when it does, on the real cluster.

- A primary that hangs (every process of its container stopped with SIGSTOP from the node:
  TCP handshakes still complete, nothing answers) is failed over only after
  `failureThreshold` failed checks; a shorter hang is a blip and changes nothing.
- A refused failover (every promotable replica too far behind) fences nothing, and ends
  when the primary answers again.
- With `failover.enabled: false` a failing primary gets one Warning Event, nothing more.
- An operator cut off from the databases (its own pod's network rejects every connection
  to PostgreSQL, with TCP resets, which look like a dead server) promotes nobody.
- A failover whose fence the API server refuses (the operator's ClusterRole loses `delete`
  on pods) stays at its recorded step, fenced, and completes once the API allows it.
- Two operator replicas, both running every daemon (the default `--standalone`): only the
  Lease holder acts, one failover per fault; when it dies, the other takes over.
- The primary lease (a primary writes only while its instance-agent renews it): a primary
  whose node is cut off from the control plane (kubelet frozen, the operator's traffic and
  its own to the API server dropped, clients and replicas still reaching it) fences itself
  before a replica is promoted, and no acknowledged write is lost; one cut off from the API
  server alone fences itself, and is failed over, or (failover off) resumes when the cut heals.

All faults are real; none is injected into the operator.
"""

from __future__ import annotations

import datetime
import json
import time

import pytest

from failovers import (ANALYTICS, FAILOVER_TIMEOUT, INSTANCES, REJOIN_TIMEOUT, Freezer, FrozenKubelet,
                       assert_lost_writes_are_the_newest, control_plane_cut, failover_since, freeze_walreceivers,
                       in_pod_network, kill_postgres, lease_holder, node_log_lines, operator_pods, under_load, wall)
from load import PROBE_TABLE, Writer, query
from support import OPERATOR_NAMESPACE, REPO, wait_for

pytestmark = pytest.mark.e2e

INTERVAL, THRESHOLD = 2, 3  # the spec's defaults, which the example cluster keeps
DEPLOYMENT = "deployment/shopdb-operator"
SERVICE_ACCOUNT = f"system:serviceaccount:{OPERATOR_NAMESPACE}:shopdb-operator"


def patch_failover(kubectl, namespace: str, **fields) -> None:
    kubectl("-n", namespace, "patch", "sdc", "shop", "--type", "merge", "-p",
            json.dumps({"spec": {"failover": fields}}))


def pod_uid(kubectl, namespace: str, instance: str) -> str:
    return kubectl.json("-n", namespace, "get", "pod", f"{instance}-0")["metadata"]["uid"]


def events(kubectl, namespace: str, reason: str) -> list[dict]:
    items = kubectl.json("-n", namespace, "get", "events", "--field-selector", f"reason={reason}")["items"]
    return [e for e in items if e["involvedObject"].get("kind") == "ShopDatabaseCluster"]


def failures(view) -> int:
    return (view.status().get("health") or {}).get("consecutiveFailures") or 0


def watch(view, seconds: float, seen: dict) -> None:
    """Poll status for `seconds`, keeping the highest failure count and every failover phase."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = view.status()
        seen["failures"] = max(seen.get("failures", 0), (status.get("health") or {}).get("consecutiveFailures") or 0)
        phase = (status.get("failover") or {}).get("phase")
        if phase:
            seen.setdefault("phases", set()).add(phase)
        time.sleep(0.3)


def test_a_brief_hang_is_a_blip_a_longer_one_a_failover(kubectl, clusters):
    view = clusters["async"]
    namespace, old = view.namespace, view.primary()
    uid, history = pod_uid(kubectl, namespace, old), view.history()
    failover_before = view.status().get("failover")

    # Frozen for 5 s: checks fail after their 2 s connect timeout and come 2 s apart, so at
    # most two fail in a row (the threshold is three).
    freezer = Freezer(kubectl, namespace, f"{old}-0")
    seen: dict = {}
    freezer.freeze()
    try:
        watch(view, 5, seen)
    finally:
        freezer.thaw()
    watch(view, 2 * INTERVAL + 2, seen)
    print(f"\nfrozen 5 s: at most {seen['failures']} consecutive failed checks; phases seen: {seen.get('phases')}")
    assert 1 <= seen["failures"] < THRESHOLD, f"the hang was not seen, or counted as more: {seen}"
    assert view.history() == history and view.status().get("failover") == failover_before
    assert view.primary() == old and pod_uid(kubectl, namespace, old) == uid
    wait_for(lambda: failures(view) == 0, 30, "the failure count back to 0", interval=0.5)

    # Frozen until the operator acts: only after the threshold.
    frozen: list[Freezer] = []

    def hang(instance: str) -> None:
        frozen.append(Freezer(kubectl, namespace, f"{instance}-0"))
        frozen[0].freeze()

    try:
        outcome = under_load(view, "hang", hang)
    finally:
        for freezer in frozen:
            freezer.thaw()  # the fence killed them (SIGKILL ends stopped processes): a no-op then
    started = outcome.entry["startedAt"]
    waited = datetime.datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp() - outcome.fault_wall
    print(f"hang: failover started {waited:.1f} s after the freeze; reason: {outcome.entry['reason']}")
    assert f"failed {THRESHOLD} consecutive checks" in outcome.entry["reason"]
    assert waited >= (THRESHOLD - 1) * INTERVAL
    assert pod_uid(kubectl, namespace, old) != uid  # fenced: deleted and recreated
    assert_lost_writes_are_the_newest(outcome)


def test_a_refused_failover_fences_nothing_and_ends_when_the_primary_answers(kubectl, clusters):
    view = clusters["async"]
    namespace, old = view.namespace, view.primary()
    pool = [i for i in INSTANCES if i not in (old, ANALYTICS)]
    uid = pod_uid(kubectl, namespace, old)
    cancelled_before = len(events(kubectl, namespace, "FailoverCancelled"))
    patch_failover(kubectl, namespace, maxLagBytes=0)
    writer = view.writer("refused").start()
    freezer = Freezer(kubectl, namespace, f"{old}-0")
    try:
        wait_for(lambda: len(writer.acked) >= 20, 60, "writes before freezing", interval=0.2)
        freeze_walreceivers(kubectl, view, pool, "STOP")
        frozen_at = time.monotonic()
        wait_for(lambda: writer.acked_after(frozen_at) >= 30, 60, "writes the pool replicas miss", interval=0.2)
        time.sleep(INTERVAL + 1)  # a healthy check records the primary's position past theirs
        freezer.freeze()
        refused = wait_for(lambda: ((s := view.status()).get("failover") or {}).get("phase") == "Refused" and s,
                           FAILOVER_TIMEOUT, "the failover to be refused", interval=0.5)
        assert refused["failover"]["refusal"]["reason"] == "CandidateTooFarBehind"
        assert "fence" not in refused["failover"]["steps"]
        blocked = next(c for c in refused["conditions"] if c["type"] == "FailoverBlocked")
        assert blocked["status"] == "True" and blocked["reason"] == "CandidateTooFarBehind"
        freezer.thaw()
        thawed = time.monotonic()
        cancelled = wait_for(lambda: ((s := view.status()).get("failover") or {}).get("phase") == "Cancelled" and s,
                             60, "the refused failover to be cancelled", interval=0.5)
        wait_for(lambda: writer.acked_after(thawed) >= 20, 60, "writes after the primary answers", interval=0.2)
    finally:
        freezer.thaw()
        writer.stop()
        freeze_walreceivers(kubectl, view, pool, "CONT")
        patch_failover(kubectl, namespace, maxLagBytes=None)
    blocked = next(c for c in cancelled["conditions"] if c["type"] == "FailoverBlocked")
    assert blocked["status"] == "False"
    assert cancelled["currentPrimary"] == old and pod_uid(kubectl, namespace, old) == uid  # never fenced
    assert view.sql(old, "SELECT pg_is_in_recovery()") == [(False,)]
    for instance in [*pool, ANALYTICS]:
        assert view.sql(instance, "SELECT pg_is_in_recovery()") == [(True,)]
    assert len(events(kubectl, namespace, "FailoverCancelled")) == cancelled_before + 1
    assert writer.lost(view.pgbouncer) == []  # the primary never went away
    wait_for(lambda: view.all_replicas_stream(INSTANCES), REJOIN_TIMEOUT, "the pool replicas streaming again")


def test_disabled_failover_warns_once_and_does_nothing(kubectl, clusters):
    view = clusters["async"]
    namespace, old = view.namespace, view.primary()
    uid, history = pod_uid(kubectl, namespace, old), view.history()
    warned_before = len(events(kubectl, namespace, "PrimaryUnhealthy"))
    patch_failover(kubectl, namespace, enabled=False)
    freezer = Freezer(kubectl, namespace, f"{old}-0")
    seen: dict = {}
    try:
        time.sleep(INTERVAL + 1)  # the daemon reads the spec at each check
        freezer.freeze()
        wait_for(lambda: len(events(kubectl, namespace, "PrimaryUnhealthy")) > warned_before, 60,
                 "the PrimaryUnhealthy Warning", interval=0.5)
        watch(view, 3 * INTERVAL * 2, seen)  # three more failed checks
    finally:
        freezer.thaw()
        patch_failover(kubectl, namespace, enabled=None)
    warnings = events(kubectl, namespace, "PrimaryUnhealthy")
    assert len(warnings) == warned_before + 1, [e["message"] for e in warnings]
    assert "failover.enabled is false" in warnings[-1]["message"]
    assert seen["failures"] > THRESHOLD and "Running" not in seen.get("phases", set())
    assert view.history() == history and view.primary() == old and pod_uid(kubectl, namespace, old) == uid
    wait_for(lambda: failures(view) == 0, 30, "the primary healthy again", interval=0.5)


def test_an_operator_cut_off_from_the_databases_promotes_nobody(kubectl, clusters):
    view = clusters["async"]
    namespace, old = view.namespace, view.primary()
    uid, history = pod_uid(kubectl, namespace, old), view.history()
    failover_before = view.status().get("failover")
    pod = operator_pods(kubectl)[0]["metadata"]["name"]
    rule = ["OUTPUT", "-p", "tcp", "--dport", "5432", "-j", "REJECT", "--reject-with", "tcp-reset"]
    in_pod_network(kubectl, OPERATOR_NAMESPACE, pod, "operator", "iptables", "-I", *rule)
    try:
        def unreachable():
            status = view.status()
            return all(not i["reachable"] for i in status["health"]["instances"].values()) and status

        cut = wait_for(unreachable, 60, "every instance unreachable from the operator", interval=0.5)
        assert all(i["error"] == "ConnectionRefused" for i in cut["health"]["instances"].values()), cut["health"]
        seen: dict = {}
        watch(view, 4 * INTERVAL * 2, seen)
    finally:
        in_pod_network(kubectl, OPERATOR_NAMESPACE, pod, "operator", "iptables", "-D", *rule)
    assert seen.get("failures", 0) == 0, "an operator that reaches nothing counted failures"
    assert view.status().get("failover") == failover_before and "Running" not in seen.get("phases", set())
    assert view.history() == history and view.primary() == old and pod_uid(kubectl, namespace, old) == uid
    assert view.sql(old, "SELECT pg_is_in_recovery()") == [(False,)]  # it was fine all along
    wait_for(lambda: all(i["reachable"] for i in view.status()["health"]["instances"].values()), 60,
             "every instance reachable again", interval=0.5)


def can_delete_pods(kubectl, namespace: str) -> bool:
    proc = kubectl("auth", "can-i", "delete", "pods", "-n", namespace, "--as", SERVICE_ACCOUNT, check=False)
    return proc.stdout.strip() == "yes"


def test_a_fence_the_api_refuses_is_retried_until_it_is_allowed(kubectl, clusters):
    view = clusters["async"]
    namespace = view.namespace
    role = kubectl.json("get", "clusterrole", "shopdb-operator")
    for rule in role["rules"]:
        if rule.get("resources") == ["pods"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "delete"]
    role["metadata"] = {"name": "shopdb-operator", "labels": role["metadata"].get("labels") or {}}
    kubectl("replace", "-f", "-", input=json.dumps(role))
    stuck: list[dict] = []
    previous = (view.status().get("failover") or {}).get("startedAt")

    def while_forbidden() -> None:
        state = wait_for(lambda: failover_since(view, previous, "choose"), FAILOVER_TIMEOUT, "the failover to start",
                         interval=0.3)
        time.sleep(4 * INTERVAL)  # several checks, each refused at the fence
        now = view.status()
        stuck.append(now["failover"])
        assert now["failover"]["phase"] == "Running" and "fence" not in now["failover"]["steps"], now["failover"]
        assert now["currentPrimary"] == state["to"]  # recorded before the delete: no pod starts as primary
        assert all(view.sql(i, "SELECT pg_is_in_recovery()") == [(True,)] for i in INSTANCES
                   if i != state["from"]), "promoted before the old primary was fenced"
        kubectl("apply", "-f", str(REPO / "manifests" / "20-rbac.yaml"))

    try:
        wait_for(lambda: not can_delete_pods(kubectl, namespace), 30, "delete on pods denied")
        outcome = under_load(view, "fence-forbidden", kill_postgres(kubectl, namespace), after_fault=while_forbidden)
    finally:
        kubectl("apply", "-f", str(REPO / "manifests" / "20-rbac.yaml"))
        wait_for(lambda: can_delete_pods(kubectl, namespace), 30, "delete on pods allowed again")
    assert stuck and outcome.entry["startedAt"] == stuck[0]["startedAt"]  # the same failover, resumed
    logs = kubectl("-n", OPERATOR_NAMESPACE, "logs", DEPLOYMENT, "--since=10m").stdout
    assert "the API server refused" in logs and "forbidden" in logs.lower()
    assert_lost_writes_are_the_newest(outcome)


def test_of_two_operator_replicas_only_the_lease_holder_acts(kubectl, clusters):
    view = clusters["async"]
    namespace = view.namespace

    def started() -> int:
        return len(events(kubectl, namespace, "FailoverStarted"))

    def promoted() -> int:
        return len(events(kubectl, namespace, "Promoted"))

    kubectl("-n", OPERATOR_NAMESPACE, "scale", DEPLOYMENT, "--replicas=2")
    try:
        kubectl("-n", OPERATOR_NAMESPACE, "rollout", "status", DEPLOYMENT, "--timeout=300s", timeout=330)
        pods = wait_for(lambda: len(p := operator_pods(kubectl)) == 2 and p, 120, "two operator pods")
        names = {p["metadata"]["name"] for p in pods}
        holder = wait_for(lambda: (h := lease_holder(kubectl)) in names and h, 60, "a Lease holder among them")
        time.sleep(2 * INTERVAL)  # both daemons check the cluster now
        before = (started(), promoted())
        outcome = under_load(view, "two-operators", kill_postgres(kubectl, namespace))
        time.sleep(2 * INTERVAL)  # a second actor would have started by now
        assert (started(), promoted()) == (before[0] + 1, before[1] + 1), "more than one replica acted"
        assert lease_holder(kubectl) == holder

        # The holder dies (force-deleted: no goodbye); the other takes over after the Lease expires.
        kubectl("-n", OPERATOR_NAMESPACE, "delete", "pod", holder, "--grace-period=0", "--force")
        successor = wait_for(lambda: (h := lease_holder(kubectl)) and h != holder and h, 120,
                             "another replica to take the Lease")
        assert successor in names or successor in {p["metadata"]["name"] for p in operator_pods(kubectl)}
        before = (started(), promoted())
        second = under_load(view, "two-operators-after-takeover", kill_postgres(kubectl, namespace))
        time.sleep(2 * INTERVAL)
        assert (started(), promoted()) == (before[0] + 1, before[1] + 1)
        assert second.old == outcome.new
    finally:
        kubectl("-n", OPERATOR_NAMESPACE, "scale", DEPLOYMENT, "--replicas=1")
        wait_for(lambda: len(operator_pods(kubectl)) == 1, 120, "one operator pod again")


# --- the primary lease ---------------------------------------------------------------------------

LEASE_DURATION, FENCE_MARGIN, CLOCK_SKEW = 8, 2, 1  # the spec's defaults
FENCED = "fencing this primary"


def probe_rows(view, statement: str, params=()) -> list[tuple]:
    """The failover probe table, through PgBouncer (the current primary)."""
    return query(view.pgbouncer, view.app, statement, params, dbname="shop", user="shop", timeout=10)


def fence_lines(namespace: str, pod: dict) -> list[tuple[float, str]]:
    """The fence's log lines (fence.sh's and the agent's), read from the node's log files."""
    meta = pod["metadata"]
    return sorted(line for container in ("postgres", "instance-agent")
                  for line in node_log_lines(namespace, meta["name"], meta["uid"], container, FENCED))


def test_a_primary_cut_off_from_the_control_plane_fences_itself_before_a_replica_is_promoted(kubectl, clusters):
    """The primary's node loses the control plane: its kubelet is frozen, and its pod drops
    the operator's traffic and its own to the API server. Replicas still stream from it, and
    a client writes straight to its pod address while another writes through PgBouncer. Its
    instance-agent cannot renew the primary lease, so the primary stops itself; the operator
    cannot see the pod go (nothing carries out its deletion) and promotes a replica only once
    the lease has expired. No write is acknowledged by the old primary after the promotion,
    and none acknowledged by either primary is lost when the kubelet returns."""
    view = clusters["async"]
    namespace, old = view.namespace, view.primary()
    pod = kubectl.json("-n", namespace, "get", "pod", f"{old}-0")
    history = view.history()
    before = history[-1]["startedAt"] if history else None
    direct = Writer(pod["status"]["podIP"], view.app, "node-cut-direct")
    direct.prepare()
    cut = control_plane_cut(kubectl, namespace, f"{old}-0", from_operator=True)
    kubelet = FrozenKubelet()
    seen: dict = {}

    def fault(instance: str) -> None:
        direct.start()
        wait_for(lambda: len(direct.acked) >= 20, 60, "writes straight to the primary's pod", interval=0.2)
        kubelet.freeze()
        cut.cut()
        seen["cut"] = time.time()

    def while_cut_off() -> None:
        try:
            wait_for(lambda: (h := view.history()) and h[-1]["startedAt"] != before, FAILOVER_TIMEOUT,
                     "the failover, the old primary's kubelet frozen", interval=0.3)
            time.sleep(3)  # the old primary stays cut off past the promotion: it must not take writes
            seen["record"], seen["fence"] = view.status()["failover"], fence_lines(namespace, pod)
        finally:
            direct.stop()
            cut.heal()
            kubelet.thaw()

    try:
        outcome = under_load(view, "node-cut", fault, after_fault=while_cut_off)
    finally:
        direct.stop()
        cut.heal()
        kubelet.thaw()
    record, cut_at = seen["record"], seen["cut"]
    assert record["oldPrimaryStopped"]["by"] == "LeaseExpired", record  # the pod's deletion never confirmed
    promoted = wall(record["oldPrimaryStopped"]["at"])  # decided here, promoted right after
    assert seen["fence"], "neither fence.sh nor the instance-agent logged the fence"
    fenced = seen["fence"][0][0]
    # the old primary's writes, by its own clock (the same node's)
    last_old = probe_rows(view, f"SELECT extract(epoch FROM max(at)) FROM {PROBE_TABLE} WHERE run = %s",
                          ("node-cut-direct",))[0][0]
    first_new = probe_rows(view, f"SELECT extract(epoch FROM min(at)) FROM {PROBE_TABLE} WHERE run = %s AND at > "
                                 "to_timestamp(%s)", ("node-cut", promoted))[0][0]
    lost_direct = direct.lost(view.pgbouncer)
    handed = wall(record["lease"]["handedOverAt"])
    print(f"node cut off ({old} -> {outcome.new}), seconds from the cut: fenced +{fenced - cut_at:.1f} "
          f"({seen['fence'][0][1][:80]!r}), failover started +{wall(outcome.entry['startedAt']) - cut_at:.1f}, "
          f"lease handed over +{handed - cut_at:.1f}, lease expired and promotion +{promoted - cut_at:.1f}, "
          f"first write on {outcome.new} +{float(first_new) - cut_at:.1f}; last write on {old} "
          f"+{float(last_old) - cut_at:.1f}; PgBouncer write gap {outcome.longest_gap():.1f} s; direct writes "
          f"acked {len(direct.acked)}, lost {len(lost_direct)}; PgBouncer writes lost {len(outcome.lost)}")
    assert fenced - cut_at <= LEASE_DURATION - FENCE_MARGIN + 1  # the last renewal came before the cut
    assert float(last_old) < fenced + 0.5 < promoted  # nothing committed on the old primary after its fence
    assert lost_direct == [] and outcome.lost == []  # replicas had every write the old primary acknowledged
    assert direct.failures, "the old primary never refused a direct write"


def test_a_primary_cut_off_from_the_api_server_alone_is_failed_over(kubectl, clusters):
    """The operator still reaches the primary, which cannot renew the primary lease: it
    stops itself within the lease's writable time, the operator sees it down and fails over
    at once, and its pod, fenced, comes back as a replica (its new network is not cut)."""
    view = clusters["async"]
    namespace, old = view.namespace, view.primary()
    pod = kubectl.json("-n", namespace, "get", "pod", f"{old}-0")
    cut = control_plane_cut(kubectl, namespace, f"{old}-0", from_operator=False)
    seen: dict = {}

    def fault(instance: str) -> None:
        cut.cut()
        seen["cut"] = time.time()

    def until_fenced() -> None:  # read before the fenced pod and its logs are deleted
        seen["fence"] = wait_for(lambda: fence_lines(namespace, pod), LEASE_DURATION + 10,
                                 "the primary's fence in its log", interval=0.2)

    try:
        outcome = under_load(view, "api-cut", fault, after_fault=until_fenced)
    finally:
        cut.heal()
    fenced = seen["fence"]
    record = view.status()["failover"]
    started = wall(outcome.entry["startedAt"])
    print(f"API server cut off from {old}: fenced +{fenced[0][0] - seen['cut']:.1f} s, failover started "
          f"+{started - seen['cut']:.1f} s ({outcome.entry['reason']}), old primary stopped: "
          f"{record['oldPrimaryStopped']['by']}, write gap {outcome.longest_gap():.1f} s, lost {len(outcome.lost)}")
    assert fenced[0][0] - seen["cut"] <= LEASE_DURATION - FENCE_MARGIN + 1
    assert fenced[0][0] < started and "is down" in outcome.entry["reason"]
    # whichever came first: the kubelet confirming the fenced pod's deletion, or the lease running out
    assert record["oldPrimaryStopped"]["by"] in ("PodGone", "LeaseExpired")
    assert outcome.lost == []  # a fast shutdown sends every WAL record to the replicas first


def test_with_failover_off_a_fenced_primary_says_so_and_resumes_when_the_cut_heals(kubectl, clusters):
    """Failover off, so that nothing but the lease decides: the primary cut off from the API
    server stops taking writes, and says why in its probes (the pod is not Ready), the
    PrimaryFenced condition and a Warning Event; once the cut heals, its agent renews the lease and it is writable
    again, as the same primary, with every acknowledged write."""
    view = clusters["async"]
    namespace, old = view.namespace, view.primary()
    pod = kubectl.json("-n", namespace, "get", "pod", f"{old}-0")
    patch_failover(kubectl, namespace, enabled=False)
    cut = control_plane_cut(kubectl, namespace, f"{old}-0", from_operator=False)
    writer = Writer(pod["status"]["podIP"], view.app, "api-cut-no-failover")
    writer.prepare()
    writer.start()
    try:
        time.sleep(INTERVAL + 1)  # the daemon reads the spec at each check
        wait_for(lambda: len(writer.acked) >= 20, 60, "writes straight to the primary", interval=0.2)
        cut.cut()
        cut_at = time.monotonic()
        wait_for(lambda: any(t > cut_at for t, _ in writer.failures), LEASE_DURATION + 5, "writes refused",
                 interval=0.1)
        refused_after = next(t for t, _ in writer.failures if t > cut_at) - cut_at

        def fenced_condition():
            status = view.status()
            cond = next((c for c in status.get("conditions") or [] if c["type"] == "PrimaryFenced"), None)
            return cond if cond and cond["status"] == "True" else None

        condition = wait_for(fenced_condition, 60, "the PrimaryFenced condition", interval=0.5)
        wait_for(lambda: events(kubectl, namespace, "PrimaryFenced"), 30, "the PrimaryFenced Warning Event")
        # the readiness probe, and the startup probe of the container waiting to start again
        unready = wait_for(lambda: [e["message"] for e in kubectl.json(
            "-n", namespace, "get", "events", "--field-selector", f"involvedObject.name={old}-0,reason=Unhealthy")
            ["items"] if "fenced" in e["message"]], 60, "the probes saying fenced", interval=1)
        ready = next(c for c in kubectl.json("-n", namespace, "get", "pod", f"{old}-0")["status"]["conditions"]
                     if c["type"] == "Ready")
        assert ready["status"] == "False"
        assert writer.acked_after(cut_at + refused_after + 0.5) == 0
        cut.heal()
        healed_at = time.monotonic()
        wait_for(lambda: writer.acked_after(healed_at) >= 10, 120, "writes accepted again", interval=0.2)
        resumed_after = writer.first_ack_after(healed_at)
        wait_for(lambda: not fenced_condition(), 60, "PrimaryFenced False again", interval=0.5)
    finally:
        cut.heal()
        writer.stop()
        patch_failover(kubectl, namespace, enabled=None)
    print(f"API server cut off from {old}, failover off: writes refused {refused_after:.1f} s after the cut; "
          f"condition: {condition['message'][:120]!r}; probe: {unready[0][:100]!r}; writable again "
          f"{resumed_after:.1f} s after the cut healed")
    assert refused_after <= LEASE_DURATION - FENCE_MARGIN + 1
    assert condition["reason"] == "LeaseExpired" and old in condition["message"]
    assert view.primary() == old and writer.lost(view.pgbouncer) == []
