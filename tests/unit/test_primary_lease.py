"""The primary lease's arithmetic (fencing/lease.py), the instance-agent's state machine
(fencing/agent.py) and the failover's lease rules (failover/decide.py): expiry, skew,
renewal timing, handover records, and when a promotion may go ahead."""

from __future__ import annotations

import datetime

import pytest

from shopdb_operator.failover import decide
from shopdb_operator.failover.decide import Observation
from shopdb_operator.fencing import agent
from shopdb_operator.fencing.lease import (ANNOTATION_DURATION, ANNOTATION_MARGIN, ANNOTATION_SKEW, Timing,
                                           expired, expires_at, handover_patch, micro_time, new_lease, parse_time,
                                           renewal_patch, wanted_timing)

T0 = datetime.datetime(2026, 12, 3, 8, 0, 0, tzinfo=datetime.timezone.utc)
DEFAULT = Timing(duration=8, margin=2, skew=1)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


# --- arithmetic -------------------------------------------------------------------------

def test_the_holder_stops_writing_margin_plus_skew_before_anyone_counts_it_expired():
    renewed = micro_time(at(0))
    assert DEFAULT.writable_for == 6  # the agent's deadline: sent + 6 s
    assert expires_at(renewed, 8, 1) == at(9)  # the operator's: renewTime + 8 + 1
    assert not expired(renewed, 8, 1, at(8.999))
    assert expired(renewed, 8, 1, at(9))


def test_a_lease_never_renewed_is_expired():
    assert expires_at("", 8, 1) is None and expired("", 8, 1, at(0))


@pytest.mark.parametrize("skew", [0, 1, 5])
def test_skew_only_delays_the_operator(skew):
    renewed = micro_time(at(100))
    assert expires_at(renewed, 8, skew) - at(100) == datetime.timedelta(seconds=8 + skew)


def test_renewal_interval_is_a_third_of_the_writable_time_within_one_and_two_seconds():
    assert Timing(8, 2, 1).renew_interval == 2.0  # 6 s writable: three attempts before a fence
    assert Timing(5, 2, 1).renew_interval == 1.0
    assert Timing(4, 1, 0).renew_interval == 1.0
    assert Timing(60, 5, 1).renew_interval == 2.0  # more attempts, never fewer


def test_micro_times_round_trip_and_plain_times_parse():
    assert parse_time(micro_time(at(1.25))) == at(1.25)
    assert parse_time("2026-12-03T08:00:00Z") == T0


def test_timing_travels_in_annotations_and_a_bad_one_falls_back():
    lease = new_lease("shop-primary", "ns", "shop-1", Timing(20, 4, 3), T0)
    annotations = lease["metadata"]["annotations"]
    assert annotations == {ANNOTATION_DURATION: "20", ANNOTATION_MARGIN: "4", ANNOTATION_SKEW: "3"}
    assert wanted_timing(lease, DEFAULT) == Timing(20, 4, 3)
    for bad in ({ANNOTATION_DURATION: "4", ANNOTATION_MARGIN: "2"},  # 2 s writable: too short
                {ANNOTATION_MARGIN: "0"}, {ANNOTATION_DURATION: "soon"}):
        broken = {**lease, "metadata": {**lease["metadata"], "annotations": {**annotations, **bad}}}
        timing = wanted_timing(broken, DEFAULT)
        assert timing.writable_for >= 3 and timing.margin >= 1


def test_handover_and_renewal_carry_the_resource_version_they_read():
    lease = new_lease("shop-primary", "ns", "shop-1", DEFAULT, T0)
    lease["metadata"]["resourceVersion"] = "41"
    moved = handover_patch(lease, "shop-2", DEFAULT, at(5))
    assert moved["metadata"]["resourceVersion"] == "41"
    assert moved["spec"]["holderIdentity"] == "shop-2" and moved["spec"]["leaseTransitions"] == 1
    assert moved["spec"]["acquireTime"] == moved["spec"]["renewTime"] == micro_time(at(5))
    renewed = renewal_patch(lease, Timing(12, 2, 1), at(6))
    assert renewed == {"metadata": {"resourceVersion": "41"},
                       "spec": {"renewTime": micro_time(at(6)), "leaseDurationSeconds": 12}}


# --- the agent's state machine ---------------------------------------------------------------

def stored(sent: float, timing: Timing = DEFAULT) -> agent.Attempt:
    return agent.Attempt(sent, agent.STORED, timing=timing, holder="shop-1")


def test_a_stored_renewal_lets_the_primary_write_until_sent_plus_duration_minus_margin():
    state = agent.after(agent.AgentState("shop-1"), stored(100.0))
    assert state.writable_until == 106.0 and agent.may_write(state, 105.99) and not agent.may_write(state, 106.0)
    assert agent.lease_file_line(state) == "10000 10600\n"


def test_no_answer_changes_nothing_and_the_deadline_runs_out():
    state = agent.after(agent.AgentState("shop-1"), stored(100.0))
    for sent in (102.0, 104.0):
        state = agent.after(state, agent.Attempt(sent, agent.NO_ANSWER, error="TimeoutError"))
    assert state.writable_until == 106.0 and state.error == "TimeoutError"
    state, action, line = agent.verdict(state, 105.9, primary_running=True)
    assert action == ""
    state, action, line = agent.verdict(state, 106.0, primary_running=True)
    assert action == "fence" and "last renewed 6.0 s ago" in line and "TimeoutError" in line


def test_another_holder_ends_the_writable_time_at_once():
    state = agent.after(agent.AgentState("shop-1"), stored(100.0))
    state = agent.after(state, agent.Attempt(101.0, agent.OTHER_HOLDER, holder="shop-2"))
    assert state.writable_until == 101.0
    state, action, line = agent.verdict(state, 101.5, primary_running=True)
    assert action == "fence" and "names shop-2" in line


def test_a_fence_is_logged_once_repeated_while_the_postmaster_runs_and_lifted_by_a_new_renewal():
    state = agent.after(agent.AgentState("shop-1"), stored(100.0))
    state, action, line = agent.verdict(state, 107.0, primary_running=True)
    assert action == "fence" and line
    state, action, line = agent.verdict(state, 107.5, primary_running=True)
    assert action == "fence" and line == ""  # signalled again, not logged again
    state, action, line = agent.verdict(state, 108.0, primary_running=False)
    assert action == "" and state.fenced  # stopped: nothing to do
    state = agent.after(state, stored(110.0))
    state, action, line = agent.verdict(state, 110.1, primary_running=False)
    assert action == "lift" and not state.fenced and "again" in line


def test_a_standby_or_a_stopped_server_is_never_fenced():
    state = agent.AgentState("shop-2")
    state = agent.after(state, agent.Attempt(100.0, agent.OTHER_HOLDER, holder="shop-1"))
    assert agent.verdict(state, 200.0, primary_running=False)[1] == ""


def test_a_fresh_agent_without_a_renewal_fences_a_running_primary():
    state = agent.after(agent.AgentState("shop-1"), agent.Attempt(5.0, agent.NO_ANSWER, error="ConnectionRefusedError"))
    state, action, line = agent.verdict(state, 5.1, primary_running=True)
    assert action == "fence" and "not renewed the primary lease since it started" in line
    assert agent.lease_file_line(state) == "0 0\n"


def test_a_standby_polls_fast_only_while_the_holder_is_silent():
    def other(silent):
        return agent.Attempt(1.0, agent.OTHER_HOLDER, holder="shop-1", holder_silent_for=silent)

    assert agent.next_attempt_in(other(1.5), 2.0) == 2.0  # renewed moments ago
    assert agent.next_attempt_in(other(4.5), 2.0) == 0.5  # two renewals missed: a handover may come
    assert agent.next_attempt_in(other(None), 2.0) == 2.0
    assert agent.next_attempt_in(stored(1.0), 2.0) == 2.0
    assert agent.next_attempt_in(agent.Attempt(1.0, agent.NO_ANSWER), 2.0) == 2.0


# --- the failover's rules ----------------------------------------------------------------------

def lease_obj(holder: str, renewed: datetime.datetime, acquired: datetime.datetime | None = None,
              duration: int = 8) -> dict:
    return {"metadata": {"resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                     "renewTime": micro_time(renewed), "acquireTime": micro_time(acquired or T0)}}


def state_after_fence(previous: dict | None, uid: str = "uid-old") -> dict:
    state = decide.start(decide.FAILOVER, "shop-1", "test", at(10))
    state["to"] = "shop-2"
    state["lease"] = decide.lease_record(previous, "shop-2", micro_time(at(10)), at(10))
    state["fencedPod"] = uid
    return state


def old(**fields) -> Observation:
    return Observation("shop-1", **{"pod_exists": True, "pod_uid": "uid-old", "container_running": True, **fields})


def test_the_handover_records_the_old_holders_last_renewal():
    record = decide.lease_record(lease_obj("shop-1", at(3), duration=12), "shop-2", micro_time(at(10)), at(10))
    assert record["from"] == "shop-1" and record["renewTime"] == micro_time(at(3))
    assert record["durationSeconds"] == 12 and record["handoverRenewTime"] == micro_time(at(10))


def test_a_resumed_handover_counts_from_the_handover_itself():
    """The lease already names the target (the fence step ran before a crash): the old
    holder's last renewal lies before the handover's acquireTime."""
    record = decide.lease_record(lease_obj("shop-2", at(10), acquired=at(10)), "shop-2", micro_time(at(10)), at(11))
    assert record["from"] is None and record["renewTime"] == micro_time(at(10))


def test_a_second_handover_keeps_the_old_primarys_record():
    first = decide.lease_record(lease_obj("shop-1", at(3)), "shop-2", micro_time(at(10)), at(10))
    second = decide.lease_record(lease_obj("shop-2", at(10)), "shop-3", micro_time(at(12)), at(12), earlier=first)
    assert (second["from"], second["renewTime"], second["to"]) == ("shop-1", micro_time(at(3)), "shop-3")


def test_promotion_waits_for_the_old_lease_to_expire_while_the_old_pod_is_there():
    state = state_after_fence(lease_obj("shop-1", at(3)))
    observations = {"shop-1": old(pod_deleting=True)}  # a frozen kubelet never confirms the deletion
    how, why = decide.old_primary_stopped(state, observations, 1, 8, at(11.9))
    assert how == "" and "may still be writing" in why
    how, why = decide.old_primary_stopped(state, observations, 1, 8, at(12))  # 3 + 8 + 1
    assert how == decide.LEASE_EXPIRED and "8 s lease + 1 s clock-skew" in why


@pytest.mark.parametrize("observation", [None, Observation("shop-1"), old(pod_uid="uid-new")])
def test_a_pod_that_is_gone_or_replaced_needs_no_wait(observation):
    state = state_after_fence(lease_obj("shop-1", at(9)))
    observations = {} if observation is None else {"shop-1": observation}
    assert decide.old_primary_stopped(state, observations, 1, 8, at(10))[0] == decide.POD_GONE


def test_promotion_waits_for_the_new_holders_first_renewal():
    state = state_after_fence(lease_obj("shop-1", at(3)))
    target = Observation("shop-2", pod_exists=True, agent=True)
    handed = lease_obj("shop-2", at(10), acquired=at(10))
    assert not decide.lease_taken_up(state, handed, target)
    assert decide.lease_taken_up(state, lease_obj("shop-2", at(11), acquired=at(10)), target)
    assert not decide.lease_taken_up(state, lease_obj("shop-3", at(11)), target)
    # a pod made before the instance-agent existed renews nothing, and nothing fences it
    assert decide.lease_taken_up(state, handed, Observation("shop-2", pod_exists=True, agent=False))


def test_lease_status_reports_a_holder_fenced_only_after_it_renewed_and_stopped():
    created = lease_obj("shop-1", T0, acquired=T0)
    assert decide.lease_status(created, 1, at(60))["fenced"] is False  # its agent may not run yet
    renewed = lease_obj("shop-1", at(20), acquired=T0)
    assert decide.lease_status(renewed, 1, at(28))["fenced"] is False
    status = decide.lease_status(renewed, 1, at(29))
    assert status["fenced"] is True and status["holder"] == "shop-1" and status["expiresAt"] == decide.timestamp(at(29))
    assert decide.lease_status(None, 1, at(0)) == {"holder": None, "renewTime": None, "expiresAt": None,
                                                   "fenced": False}
