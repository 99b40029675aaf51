"""The step executor against fakes: one step per call, recorded before returning, resumable
from every recorded step, fencing before promotion, waits and refusals."""

from __future__ import annotations

import datetime

import pytest

from shopdb_operator.failover import decide, execute
from shopdb_operator.failover.decide import Observation
from test_failover_decide import T0, dead, obs, spec, standby, topology


class FakeCluster:
    def __init__(self):
        self.status: dict = {}
        self.pod_labels: dict[str, dict] = {}
        self.template_labels: dict[str, dict] = {}
        self.deleted: list[tuple[str, int | None]] = []
        self.events: list[tuple[str, str, str]] = []
        self.log: list[str] = []

    def record(self, status):
        self.status.update(status)
        self.log.append("record:" + ",".join(sorted(status)))

    def set_pod_labels(self, instance, labels):
        self.pod_labels.setdefault(instance, {}).update(labels)
        self.log.append(f"pod-labels:{instance}:{labels}")

    def set_template_labels(self, instance, labels):
        self.template_labels.setdefault(instance, {}).update(labels)

    def fence_pod(self, instance, grace_seconds, created_before):
        self.deleted.append((instance, grace_seconds))
        self.log.append(f"delete:{instance}")
        return True

    def event(self, type_, reason, message):
        self.events.append((type_, reason, message))


class FakeDatabases:
    def __init__(self):
        self.promoted: list[str] = []
        self.prepared: list[tuple[str, list[str]]] = []

    def promote(self, instance):
        self.promoted.append(instance)
        return True

    def prepare_primary(self, instance, slots):
        self.prepared.append((instance, slots))
        return slots

    def current_lsn(self, instance):
        return 5000


class FakePoolers:
    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def hold(self, database, graceful):
        self.calls.append(("pause" if graceful else "kill", database))
        return ["pgb-0"]

    def release(self, database, graceful):
        self.calls.append(("reconnect-resume" if graceful else "resume", database))
        return ["pgb-0", "pgb-1"]


def plan(s=None):
    s = s or spec()
    return execute.Plan(topology(s), s, "shop")


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def after_crash():
    """shop-1 dead, shop-3 the most up to date, nobody streaming any more."""
    return obs(dead("shop-1"), standby("shop-2", 900), standby("shop-3", 1000), standby("shop-analytics", 1200))


def run_all(state, observations, fakes, p=None, start=1):
    cluster, databases, poolers = fakes
    steps = []
    for i in range(start, start + len(decide.STEPS) + 1):
        result = execute.run_step(state, p or plan(), observations, cluster, databases, poolers, at(i))
        if result.step is None:
            break
        steps.append(result.step)
        state = result.state
        assert cluster.status["failover"] == state  # recorded before returning
        if result.step == decide.PROMOTE:
            observations = {**observations, state["to"]: Observation(state["to"], reachable=True, in_recovery=False)}
    return state, steps


@pytest.fixture
def fakes():
    return FakeCluster(), FakeDatabases(), FakePoolers()


def test_a_whole_failover_one_step_per_call(fakes):
    cluster, databases, poolers = fakes
    state, steps = run_all(decide.start(decide.FAILOVER, "shop-1", "down", T0), after_crash(), fakes)
    assert steps == list(decide.STEPS)
    assert state["phase"] == decide.COMPLETED and state["to"] == "shop-3"
    # killed, not a graceful stop; analytics (ahead of shop-3) restarts to rewind
    assert cluster.deleted == [("shop-1", execute.FENCE_GRACE_SECONDS), ("shop-analytics", None)]
    assert databases.promoted == ["shop-3"]
    assert databases.prepared == [("shop-3", ["shop_1", "shop_2", "shop_analytics"])]
    assert cluster.pod_labels["shop-1"]["shopdb.io/role"] == "replica"
    assert cluster.pod_labels["shop-3"]["shopdb.io/role"] == "primary"
    assert cluster.status["currentPrimary"] == "shop-3"
    assert cluster.status["topology"]["currentPrimary"] == "shop-3"
    assert {k: v["shopdb.io/role"] for k, v in cluster.template_labels.items()} == {
        "shop-1": "replica", "shop-2": "replica", "shop-3": "primary", "shop-analytics": "replica"}
    assert poolers.calls == [("kill", "shop"), ("resume", "shop")]
    assert cluster.status["failoverHistory"][-1]["to"] == "shop-3"
    assert [e[1] for e in cluster.events] == ["FailoverCandidate", "PrimaryFenced", "Promoted", "PrimaryMoved",
                                              "ReplicaRewinding", "FailoverCompleted"]


def test_the_new_primary_is_recorded_and_the_old_one_relabeled_before_its_pod_is_deleted(fakes):
    cluster = fakes[0]
    run_all(decide.start(decide.FAILOVER, "shop-1", "down", T0), after_crash(), fakes)
    recorded = cluster.log.index("record:currentPrimary,failover,topology")
    relabeled = cluster.log.index("pod-labels:shop-1:{'shopdb.io/role': 'replica'}")
    deleted = cluster.log.index("delete:shop-1")
    assert recorded < relabeled < deleted


@pytest.mark.parametrize("done", range(1, len(decide.STEPS)))
def test_resumes_at_each_recorded_step(fakes, done):
    """A restarted operator finds the state recorded after `done` steps and finishes the
    rest without repeating any step's action."""
    state = decide.start(decide.FAILOVER, "shop-1", "down", T0)
    for i, step in enumerate(decide.STEPS[:done]):
        state = decide.mark_step(state, step, at(i + 1), to="shop-3")
    observations = after_crash()
    if done > decide.STEPS.index(decide.PROMOTE):
        observations["shop-3"] = Observation("shop-3", reachable=True, in_recovery=False)
    final, steps = run_all(state, observations, fakes, start=done + 1)
    assert steps == list(decide.STEPS[done:])
    assert final["phase"] == decide.COMPLETED
    cluster, databases, poolers = fakes
    fenced = [d for d in cluster.deleted if d[0] == "shop-1"]
    assert (fenced != []) == (done <= decide.STEPS.index(decide.FENCE))
    assert (databases.promoted != []) == (done <= decide.STEPS.index(decide.PROMOTE))
    held = [("kill", "shop")] if done <= decide.STEPS.index(decide.FENCE) else []
    assert poolers.calls == held + [("resume", "shop")]


def test_a_promotion_that_happened_before_a_crash_is_not_repeated(fakes):
    state = decide.start(decide.FAILOVER, "shop-1", "down", T0)
    for step in (decide.CHOOSE, decide.FENCE):
        state = decide.mark_step(state, step, T0, to="shop-3")
    observations = {**after_crash(), "shop-3": Observation("shop-3", reachable=True, in_recovery=False)}
    result = execute.run_step(state, plan(), observations, *fakes, at(1))
    assert result.step == decide.PROMOTE
    assert fakes[1].promoted == [] and fakes[1].prepared[0][0] == "shop-3"  # slots still ensured


def test_sync_promotion_waits_while_a_candidate_still_streams_from_the_old_primary(fakes):
    s = spec(synchronous=1)
    state = decide.start(decide.FAILOVER, "shop-1", "down", T0)
    for step in (decide.CHOOSE, decide.FENCE):
        state = decide.mark_step(state, step, T0, to="shop-3")
    streaming = {**after_crash(), "shop-2": standby("shop-2", 900, streaming=True)}
    result = execute.run_step(state, plan(s), streaming, *fakes, at(1))
    assert result.step is None and "shop-2" in result.waiting and fakes[1].promoted == []
    let_go = {**streaming, "shop-2": standby("shop-2", 900)}
    assert execute.run_step(state, plan(s), let_go, *fakes, at(2)).step == decide.PROMOTE


def test_a_replica_that_got_further_after_the_fence_is_promoted_instead(fakes):
    cluster, databases, _ = fakes
    state = decide.start(decide.FAILOVER, "shop-1", "down", T0)
    for step in (decide.CHOOSE, decide.FENCE):
        state = decide.mark_step(state, step, T0, to="shop-3")
    observations = {**after_crash(), "shop-2": standby("shop-2", 1100)}
    result = execute.run_step(state, plan(), observations, *fakes, at(1))
    assert result.state["to"] == "shop-2" and databases.promoted == ["shop-2"]
    assert cluster.status["currentPrimary"] == "shop-2"
    assert cluster.template_labels["shop-3"]["shopdb.io/role"] == "replica"


def test_refusal_touches_nothing_and_warns_once(fakes):
    cluster, databases, poolers = fakes
    lagging = obs(dead("shop-1"), standby("shop-2", 0), standby("shop-3", 0))
    state = decide.start(decide.FAILOVER, "shop-1", "down", T0)
    state["primaryLSN"] = 64 * 1024 * 1024
    first = execute.run_step(state, plan(), lagging, *fakes, at(1))
    again = execute.run_step(first.state, plan(), lagging, *fakes, at(2))
    assert first.refusal.reason == decide.TOO_FAR_BEHIND and again.refusal.reason == decide.TOO_FAR_BEHIND
    assert first.state["phase"] == decide.REFUSED and decide.next_step(first.state) == decide.CHOOSE
    assert [e[:2] for e in cluster.events] == [("Warning", decide.TOO_FAR_BEHIND)]
    assert cluster.deleted == [] and databases.promoted == [] and poolers.calls == []
    lifted = execute.run_step(again.state, plan(spec(max_lag_bytes=128 * 1024 * 1024)), lagging, *fakes, at(3))
    assert lifted.step == decide.CHOOSE and lifted.state["phase"] == decide.RUNNING


def test_switchover_pauses_pgbouncer_shuts_down_gracefully_and_waits_for_the_last_wal(fakes):
    cluster, databases, poolers = fakes
    alive = obs(Observation("shop-1", reachable=True, in_recovery=False, current_lsn=5000),
                standby("shop-2", 4000), standby("shop-3", 5000))
    state = decide.start(decide.SWITCHOVER, "shop-1", "asked", T0, "shop-2")
    state = execute.run_step(state, plan(), alive, *fakes, at(1)).state
    assert state["to"] == "shop-2"
    state = execute.run_step(state, plan(), alive, *fakes, at(2)).state
    assert poolers.calls == [("pause", "shop")] and cluster.deleted == [("shop-1", None)]
    assert state["fenceLSN"] == 5000
    stopped = {**alive, "shop-1": dead("shop-1")}
    waiting = execute.run_step(state, plan(), stopped, *fakes, at(3))
    assert waiting.step is None and "has not received" in waiting.waiting
    caught_up = {**stopped, "shop-2": standby("shop-2", 5100)}
    state, steps = run_all(state, caught_up, fakes, start=4)
    assert steps == [decide.PROMOTE, decide.RELABEL, decide.REPOINT, decide.PGBOUNCER]
    assert databases.promoted == ["shop-2"] and poolers.calls[-1] == ("reconnect-resume", "shop")


def test_repoint_records_who_streams_and_rewrites_nothing(fakes):
    state = decide.start(decide.FAILOVER, "shop-1", "down", T0)
    for step in decide.STEPS[:4]:
        state = decide.mark_step(state, step, T0, to="shop-3")
    observations = obs(dead("shop-1"), Observation("shop-3", reachable=True, in_recovery=False),
                       standby("shop-2", 10, streaming=False), standby("shop-analytics", 10, streaming=True))
    result = execute.run_step(state, plan(), observations, *fakes, at(1))
    assert result.state["streaming"] == ["shop-analytics"] and result.state["notStreaming"] == ["shop-2"]
    assert fakes[1].promoted == [] and fakes[0].deleted == []


def test_route_handoff_records_then_moves_the_labels(fakes):
    cluster = fakes[0]
    from shopdb_operator.topology import plan_topology
    t = plan_topology("shop", spec(), {"currentPrimary": "shop-2", "pool": ["shop-1", "shop-2", "shop-3"],
                                       "routes": {"search": "shop-2", "orders": "shop-3"}})
    execute.hand_off_routes(t, {"search": "shop-1"}, cluster)
    assert cluster.status["topology"]["routes"] == {"analytics": "shop-analytics", "orders": "shop-3", "search": "shop-1"}
    assert cluster.pod_labels["shop-1"] == {"shopdb.io/route-search": "true"}
    assert cluster.pod_labels["shop-2"] == {"shopdb.io/route-search": None}
    assert cluster.template_labels["shop-2"] == {"shopdb.io/route-search": None}
    assert cluster.log[0].startswith("record:")


def test_a_fenced_primary_that_still_answers_writable_is_waited_for(fakes):
    """No two writable instances: the promotion waits until the fence took effect."""
    cluster, databases, poolers = fakes
    state = decide.start(decide.FAILOVER, "shop-1", "down", T0)
    observations = after_crash()
    for i, step in enumerate((decide.CHOOSE, decide.FENCE), start=1):
        state = execute.run_step(state, plan(), observations, cluster, databases, poolers, at(i)).state
    still_up = {**observations, "shop-1": Observation("shop-1", pod_exists=True, pod_deleting=True, reachable=True,
                                                      in_recovery=False)}
    result = execute.run_step(state, plan(), still_up, cluster, databases, poolers, at(3))
    assert result.waiting == "shop-1 still answers as a writable primary" and databases.promoted == []
    result = execute.run_step(state, plan(), observations, cluster, databases, poolers, at(4))
    assert result.step == decide.PROMOTE and databases.promoted == ["shop-3"]


def test_a_standby_past_the_fork_is_restarted_to_rewind(fakes):
    """after_crash(): analytics (1200) is ahead of the promoted shop-3 (1000), shop-2 behind."""
    cluster = fakes[0]
    state, _ = run_all(decide.start(decide.FAILOVER, "shop-1", "down", T0), after_crash(), fakes)
    assert state["forkLSN"] == 1000 and state["rewound"] == ["shop-analytics"]
    assert cluster.deleted == [("shop-1", execute.FENCE_GRACE_SECONDS), ("shop-analytics", None)]
    assert "ReplicaRewinding" in [e[1] for e in cluster.events]
