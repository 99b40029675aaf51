"""Failover decisions: detection threshold, candidate choice, lag bound, synchronous rule,
analytics exclusion, the recorded step order and the route hand-off."""

from __future__ import annotations

import dataclasses
import datetime

import pytest

from shopdb_operator.api.spec import ClusterSpec
from shopdb_operator.failover import decide
from shopdb_operator.failover.decide import Candidate, HealthTracker, Observation, Refusal
from shopdb_operator.topology import plan_topology

MiB = 1024 * 1024
T0 = datetime.datetime(2026, 11, 24, 22, 0, 0, tzinfo=datetime.timezone.utc)


def spec(**failover) -> ClusterSpec:
    sync = failover.pop("synchronous", None)
    raw = {"failover": failover}
    if sync is not None:
        raw["postgres"] = {"synchronous": {"enabled": True, "number": sync}}
    return ClusterSpec.model_validate(raw)


def topology(s: ClusterSpec | None = None, primary: str = "shop-1"):
    """Default spec: shop-1 primary, shop-2 (search), shop-3 (orders), shop-analytics."""
    return plan_topology("shop", s or spec(), {"currentPrimary": primary, "pool": ["shop-1", "shop-2", "shop-3"],
                                               "routes": {"search": "shop-2", "orders": "shop-3"}})


def standby(name: str, received: int | None, replayed: int | None = None, streaming: bool = False) -> Observation:
    return Observation(name, pod_exists=True, container_running=True, pod_ready=True, reachable=True,
                       in_recovery=True, received_lsn=received,
                       replayed_lsn=received if replayed is None else replayed, streaming=streaming)


def dead(name: str) -> Observation:
    return Observation(name, pod_exists=True, error="OperationalError")


def obs(*items: Observation) -> dict[str, Observation]:
    return {o.name: o for o in items}


# --- detection ---------------------------------------------------------------------------

def healthy_primary(lsn: int = 100) -> Observation:
    return Observation("shop-1", pod_exists=True, reachable=True, in_recovery=False, current_lsn=lsn)


def test_failover_starts_only_after_threshold_consecutive_failures():
    tracker = HealthTracker()
    for _ in range(2):
        tracker = tracker.record("shop-1", dead("shop-1"))
        assert not tracker.should_fail_over(3)
    tracker = tracker.record("shop-1", dead("shop-1"))
    assert tracker.should_fail_over(3)


def test_a_blip_resets_the_count_and_keeps_the_last_lsn():
    tracker = HealthTracker().record("shop-1", healthy_primary(500))
    tracker = tracker.record("shop-1", dead("shop-1")).record("shop-1", dead("shop-1"))
    tracker = tracker.record("shop-1", healthy_primary(600))
    assert tracker.failures == 0 and tracker.last_lsn == 600
    tracker = tracker.record("shop-1", None)
    assert tracker.failures == 1 and tracker.last_lsn == 600


@pytest.mark.parametrize("observation", [
    Observation("shop-1", pod_exists=True, reachable=True, in_recovery=True),  # demoted / restarted read-only
    Observation("shop-1", pod_exists=True, pod_deleting=True, reachable=True, in_recovery=False),
    Observation("shop-1", pod_exists=False, error="NoAddress"),
    None,
])
def test_every_kind_of_failure_counts(observation):
    assert HealthTracker().record("shop-1", observation).failures == 1


def seen(observation: Observation, incarnation: str = "uid-1/0", **changes) -> Observation:
    return dataclasses.replace(observation, incarnation=incarnation, container_running=True, **changes)


@pytest.mark.parametrize("failure, why", [
    (Observation("shop-1", pod_exists=False, error="NoAddress"), "its pod is gone"),
    (Observation("shop-1", pod_exists=True, pod_deleting=True, container_running=True, incarnation="uid-1/0",
                 reachable=True, in_recovery=False), "its pod is being deleted"),
    (Observation("shop-1", pod_exists=True, container_running=False, incarnation="uid-1/0",
                 error="OperationalError"), "its container is not running"),
    (Observation("shop-1", pod_exists=True, container_running=True, incarnation="uid-1/1",
                 error="OperationalError"), "it restarted"),
    (Observation("shop-1", pod_exists=True, container_running=True, incarnation="uid-2/0",
                 error="OperationalError"), "it restarted"),
    (Observation("shop-1", pod_exists=True, container_running=True, incarnation="uid-1/0",
                 error=decide.CONNECTION_REFUSED), "nothing listens on its PostgreSQL port"),
    (Observation("shop-1", pod_exists=True, container_running=True, incarnation="uid-1/0",
                 error=decide.SHUTTING_DOWN), "it is shutting down"),
])
def test_a_primary_that_is_certainly_down_fails_over_at_once(failure, why):
    tracker = HealthTracker().record("shop-1", seen(healthy_primary()))
    tracker = tracker.record("shop-1", failure)
    assert tracker.down == why and tracker.should_fail_over(3)


def test_an_unanswering_primary_whose_container_runs_on_waits_for_the_threshold():
    tracker = HealthTracker().record("shop-1", seen(healthy_primary()))
    tracker = tracker.record("shop-1", seen(dead("shop-1")))
    assert not tracker.down and not tracker.should_fail_over(3)
    tracker = tracker.record("shop-1", seen(dead("shop-1"))).record("shop-1", seen(dead("shop-1")))
    assert not tracker.down and tracker.should_fail_over(3)


def test_a_primary_never_seen_healthy_is_never_down_at_once():
    """A starting operator or a cluster being created: only the threshold applies."""
    tracker = HealthTracker().record("shop-1", Observation("shop-1", pod_exists=False))
    assert not tracker.down and not tracker.should_fail_over(3)


def test_a_restart_that_is_healthy_again_by_the_next_check_is_no_failure():
    tracker = HealthTracker().record("shop-1", seen(healthy_primary()))
    tracker = tracker.record("shop-1", seen(healthy_primary(), incarnation="uid-1/1"))
    assert tracker.failures == 0 and not tracker.down
    assert tracker.healthy_incarnation == "uid-1/1"


def test_a_check_that_reaches_no_instance_says_nothing_about_the_primary():
    assert decide.nothing_reachable(obs(dead("shop-1"), dead("shop-2")))
    assert not decide.nothing_reachable(obs(dead("shop-1"), standby("shop-2", 1)))


def test_a_new_primary_starts_a_new_count():
    tracker = HealthTracker().record("shop-1", dead("shop-1")).record("shop-1", dead("shop-1"))
    assert tracker.record("shop-2", dead("shop-2")).failures == 1


# --- candidate choice ----------------------------------------------------------------------

def test_highest_received_lsn_wins():
    choice = decide.choose_candidate(obs(dead("shop-1"), standby("shop-2", 900), standby("shop-3", 1000)),
                                     topology(), spec(), "shop-1")
    assert choice == Candidate("shop-3", 1000, 1000, 0)


def test_ties_go_to_replayed_lsn_then_name():
    s, t = spec(), topology()
    choice = decide.choose_candidate(obs(standby("shop-2", 1000, 500), standby("shop-3", 1000, 900)), t, s, "shop-1")
    assert choice.name == "shop-3"
    choice = decide.choose_candidate(obs(standby("shop-3", 1000), standby("shop-2", 1000)), t, s, "shop-1")
    assert choice.name == "shop-2"


def test_analytics_is_never_chosen_even_when_most_up_to_date():
    choice = decide.choose_candidate(obs(standby("shop-2", 900), standby("shop-analytics", 5000)),
                                     topology(), spec(max_lag_bytes=10_000), "shop-1")
    assert choice.name == "shop-2"
    assert choice.lag_bytes == 4100  # measured against the analytics replica's position


def test_promotable_analytics_pool_instance_is_excluded_too():
    s = ClusterSpec.model_validate({"replicas": [{"name": "search"}, {"name": "bi", "analytics": True}]})
    t = plan_topology("shop", s)
    bi = t.routes["bi"]
    assert t.instance(bi).promotable and t.instance(bi).analytics
    choice = decide.choose_candidate(obs(standby(t.routes["search"], 100), standby(bi, 200)), t, s, "shop-1")
    assert choice.name == t.routes["search"]


def test_only_analytics_left_is_refused():
    choice = decide.choose_candidate(obs(dead("shop-2"), dead("shop-3"), standby("shop-analytics", 100)),
                                     topology(), spec(), "shop-1")
    assert isinstance(choice, Refusal) and choice.reason == decide.NO_CANDIDATE


def test_unreachable_deleting_or_writable_instances_are_not_candidates():
    deleting = Observation("shop-2", pod_deleting=True, reachable=True, in_recovery=True, received_lsn=5000)
    writable = Observation("shop-3", reachable=True, in_recovery=False, current_lsn=9000)
    choice = decide.choose_candidate(obs(deleting, writable), topology(), spec(), "shop-1")
    assert isinstance(choice, Refusal) and choice.reason == decide.NO_CANDIDATE


def test_a_standby_that_never_streamed_since_start_counts_its_replayed_position():
    choice = decide.choose_candidate(obs(standby("shop-2", None, 700), standby("shop-3", 600)),
                                     topology(), spec(), "shop-1")
    assert choice.name == "shop-2" and choice.wal_position == 700


# --- lag bound ---------------------------------------------------------------------------

def test_candidate_further_behind_than_max_lag_is_refused():
    choice = decide.choose_candidate(obs(standby("shop-2", 0), standby("shop-3", 0)),
                                     topology(), spec(), "shop-1", primary_lsn=17 * MiB)
    assert isinstance(choice, Refusal) and choice.reason == decide.TOO_FAR_BEHIND
    assert "maxLagBytes" in choice.message


def test_lifting_the_limit_allows_the_promotion():
    choice = decide.choose_candidate(obs(standby("shop-2", 0)), topology(), spec(max_lag_bytes=32 * MiB),
                                     "shop-1", primary_lsn=17 * MiB)
    assert isinstance(choice, Candidate) and choice.lag_bytes == 17 * MiB


def test_lag_exactly_at_the_bound_is_accepted():
    choice = decide.choose_candidate(obs(standby("shop-2", 0)), topology(), spec(max_lag_bytes=100),
                                     "shop-1", primary_lsn=100)
    assert isinstance(choice, Candidate)


# --- synchronous replication -------------------------------------------------------------

def test_sync_candidate_holding_the_newest_flushed_wal_is_promoted():
    s = spec(synchronous=1)
    choice = decide.choose_candidate(obs(standby("shop-2", 900), standby("shop-3", 1000)), topology(s), s, "shop-1")
    assert choice.name == "shop-3"


def test_sync_refuses_when_as_many_members_as_acks_are_unobserved():
    # ANY 1 (shop-2, shop-3): shop-3 alone may hold the last acknowledged commit.
    s = spec(synchronous=1)
    choice = decide.choose_candidate(obs(standby("shop-2", 1000), dead("shop-3")), topology(s), s, "shop-1")
    assert isinstance(choice, Refusal) and choice.reason == decide.SYNC_UNPROVEN
    assert "shop-3" in choice.message


def test_sync_any_two_of_two_tolerates_one_unobserved_member():
    s = ClusterSpec.model_validate({"postgres": {"synchronous": {"enabled": True, "number": 2}},
                                    "replicas": [{"name": "search"}, {"name": "orders"}, {"name": "extra"}]})
    t = plan_topology("shop", s)  # shop-1 primary, shop-2..4 promotable
    members = [i.name for i in t.instances if i.name != "shop-1"]
    choice = decide.choose_candidate(obs(standby(members[0], 1000), standby(members[1], 990), dead(members[2])),
                                     t, s, "shop-1")
    assert choice.name == members[0]


def test_sync_refuses_when_an_excluded_member_holds_newer_wal():
    s = ClusterSpec.model_validate({"postgres": {"synchronous": {"enabled": True, "number": 1}},
                                    "replicas": [{"name": "search"}, {"name": "bi", "analytics": True}]})
    t = plan_topology("shop", s)
    choice = decide.choose_candidate(obs(standby(t.routes["search"], 900), standby(t.routes["bi"], 1000)),
                                     t, s, "shop-1")
    assert isinstance(choice, Refusal) and choice.reason == decide.SYNC_UNPROVEN


def test_without_sync_an_unobserved_replica_does_not_block():
    choice = decide.choose_candidate(obs(standby("shop-2", 1000), dead("shop-3")), topology(), spec(), "shop-1")
    assert choice.name == "shop-2"


# --- switchover target -----------------------------------------------------------------

@pytest.mark.parametrize("target", ["shop-analytics", "shop-9", "shop-1"])
def test_switchover_to_an_ineligible_target_is_refused(target):
    choice = decide.choose_candidate(obs(standby("shop-2", 10), standby("shop-analytics", 10)),
                                     topology(), spec(), "shop-1", target=target)
    assert isinstance(choice, Refusal) and choice.reason == decide.TARGET_NOT_ELIGIBLE


def test_switchover_takes_the_named_target_even_if_another_is_ahead():
    choice = decide.choose_candidate(obs(standby("shop-2", 10), standby("shop-3", 20)),
                                     topology(), spec(), "shop-1", primary_lsn=20, target="shop-2")
    assert choice.name == "shop-2" and choice.lag_bytes == 10



def test_a_sync_switchover_is_not_refused_when_another_member_is_a_few_bytes_ahead():
    """Seen on the real cluster: under writes, shop-3 had received 224 bytes more than the
    target. A switchover needs no proof without the primary: promote waits for fenceLSN."""
    s = spec(synchronous=1)
    choice = decide.choose_candidate(obs(standby("shop-2", 1000), standby("shop-3", 1224)), topology(s), s,
                                     "shop-1", primary_lsn=1224, target="shop-2")
    assert isinstance(choice, Candidate) and choice.name == "shop-2"
    failover = decide.choose_candidate(obs(standby("shop-2", 1000), dead("shop-3")), topology(s), s, "shop-1")
    assert isinstance(failover, Refusal) and failover.reason == decide.SYNC_UNPROVEN  # a failover still needs it


# --- the recorded state machine ------------------------------------------------------------

def test_steps_run_in_order_and_resume_at_the_first_unrecorded():
    state = decide.start(decide.FAILOVER, "shop-1", "primary down", T0)
    seen = []
    for i, step in enumerate(decide.STEPS):
        assert decide.next_step(state) == step
        assert decide.is_running(state)
        seen.append(step)
        state = decide.mark_step(state, step, T0 + datetime.timedelta(seconds=i + 1))
    assert seen == list(decide.STEPS)
    assert decide.next_step(state) is None and not decide.is_running(state)
    done = decide.complete(state, T0 + datetime.timedelta(seconds=6.5))
    assert done["phase"] == decide.COMPLETED and done["durationSeconds"] == 6.5
    assert decide.step_durations(done) == {step: 1.0 for step in decide.STEPS}


def test_timestamps_round_trip_with_milliseconds():
    moment = T0 + datetime.timedelta(milliseconds=1234)
    assert decide.timestamp(moment) == "2026-11-24T22:00:01.234Z"
    assert decide.parse_timestamp(decide.timestamp(moment)) == moment


def test_a_refused_failover_is_retried_but_a_refused_switchover_ends():
    refusal = Refusal(decide.NO_CANDIDATE, "none")
    failover = decide.refuse(decide.start(decide.FAILOVER, "shop-1", "down", T0), refusal)
    assert decide.is_running(failover) and decide.next_step(failover) == decide.CHOOSE
    switchover = decide.refuse(decide.start(decide.SWITCHOVER, "shop-1", "asked", T0, "shop-9"), refusal)
    assert not decide.is_running(switchover)


def test_the_blocked_condition_follows_the_record_phase():
    refusal = Refusal(decide.TOO_FAR_BEHIND, "shop-2 lags 4096 bytes")
    refused = decide.refuse(decide.start(decide.FAILOVER, "shop-1", "down", T0), refusal)
    assert decide.blocking(refused) == refusal
    assert decide.blocking(decide.mark_step(refused, decide.CHOOSE, T0, to="shop-2")) is None
    assert decide.blocking(decide.cancel(refused, T0)) is None  # cancelled keeps the old refusal text
    assert decide.blocking(None) is None


def test_a_failover_before_the_fence_is_cancelled_when_the_primary_is_back():
    state = decide.start(decide.FAILOVER, "shop-1", "down", T0)
    assert decide.should_cancel(state, primary_healthy=True)
    assert not decide.should_cancel(state, primary_healthy=False)
    fenced = decide.mark_step(decide.mark_step(state, decide.CHOOSE, T0), decide.FENCE, T0)
    assert not decide.should_cancel(fenced, primary_healthy=True)  # past the fence: finish it
    switchover = decide.start(decide.SWITCHOVER, "shop-1", "asked", T0, "shop-2")
    assert not decide.should_cancel(switchover, primary_healthy=True)


def test_history_keeps_the_last_ten_with_step_timings():
    state = decide.start(decide.FAILOVER, "shop-1", "down", T0)
    for i, step in enumerate(decide.STEPS):
        state = decide.mark_step(state, step, T0 + datetime.timedelta(seconds=i + 1), to="shop-2")
    state = decide.complete(state, T0 + datetime.timedelta(seconds=6))
    history = decide.with_history([{"n": i} for i in range(10)], state)
    assert len(history) == 10 and history[-1]["to"] == "shop-2" and history[-1]["stepSeconds"]["fence"] == 1.0


def test_sync_promotion_waits_while_a_candidate_streams_from_the_old_primary():
    state = decide.mark_step(decide.start(decide.FAILOVER, "shop-1", "down", T0), decide.FENCE, T0)
    observations = obs(standby("shop-2", 10, streaming=True), standby("shop-analytics", 10, streaming=True))
    assert decide.drain_pending(state, observations, topology(), spec(synchronous=1)) == ["shop-2"]
    assert decide.drain_pending(state, observations, topology(), spec()) == []  # async: no wait


# --- routes after a failover ---------------------------------------------------------------

def test_route_moves_from_the_promoted_instance_to_the_streaming_former_primary():
    t = plan_topology("shop", spec(), {"currentPrimary": "shop-2", "pool": ["shop-1", "shop-2", "shop-3"],
                                       "routes": {"search": "shop-2", "orders": "shop-3"}})
    assert t.routes["search"] == "shop-2"  # the promoted replica kept its route
    assert decide.route_handoff(t, obs(standby("shop-1", 10)), preferred="shop-1") == {}
    moves = decide.route_handoff(t, obs(standby("shop-1", 10, streaming=True)), preferred="shop-1")
    assert moves == {"search": "shop-1"}


def test_no_route_moves_when_none_is_on_the_primary():
    assert decide.route_handoff(topology(), obs(standby("shop-2", 1, streaming=True))) == {}


def test_phases_are_the_documented_strings():
    assert (decide.RUNNING, decide.COMPLETED, decide.REFUSED, decide.CANCELLED) == (
        "Running", "Completed", "Refused", "Cancelled")
