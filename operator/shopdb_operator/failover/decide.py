"""Failover decisions: pure functions over observations and recorded status.

No I/O and no clock: callers pass observations and `now`. Everything here is what the unit
tests pin down: when the primary counts as failed, who may be promoted and why not, the
step order of a failover recorded in status, and where replica routes go afterwards.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from typing import Mapping

from ..api.spec import ClusterSpec
from ..fencing import lease as primary_lease
from ..topology import Topology

# The recorded steps, in order; a restarted operator resumes at the first one not recorded.
# `choose` comes before `fence`: a refusal (lag bound, sync rule, no candidate) then leaves
# a primary that may still recover untouched; the promote step chooses again on final LSNs.
CHOOSE, FENCE, PROMOTE, RELABEL, REPOINT, PGBOUNCER = (
    "choose", "fence", "promote", "relabel", "repoint", "pgbouncer")
STEPS = (CHOOSE, FENCE, PROMOTE, RELABEL, REPOINT, PGBOUNCER)

RUNNING, COMPLETED, REFUSED, CANCELLED = "Running", "Completed", "Refused", "Cancelled"
FAILOVER, SWITCHOVER = "failover", "switchover"

# Refusal reasons (condition reasons and Event reasons).
NO_CANDIDATE = "NoPromotableReplica"
TOO_FAR_BEHIND = "CandidateTooFarBehind"
SYNC_UNPROVEN = "SynchronousCommitsNotProven"
TARGET_NOT_ELIGIBLE = "SwitchoverTargetNotEligible"

HISTORY_LENGTH = 10
CONNECTION_REFUSED = "ConnectionRefused"  # Observation.error when the TCP handshake was refused
SHUTTING_DOWN = "ShuttingDown"  # Observation.error when the server refused the login: it is shutting down


@dataclass(frozen=True)
class Observation:
    """One instance as one check saw it. LSNs are integers (postgres.lsn_to_int)."""

    name: str
    pod_exists: bool = False
    pod_deleting: bool = False
    container_running: bool = False
    pod_ready: bool = False
    reachable: bool = False  # a superuser connection and query succeeded
    in_recovery: bool | None = None
    current_lsn: int | None = None  # a primary's write position
    received_lsn: int | None = None  # a standby's received and flushed position
    replayed_lsn: int | None = None
    streaming: bool = False  # a standby's walreceiver is streaming now
    error: str = ""  # the failure's class name, never its text (it may quote a DSN)
    incarnation: str = ""  # pod uid and container restarts: changes when the server restarted
    pod_uid: str = ""
    agent: bool = False  # the pod runs an instance-agent (renews the primary lease when it holds it)

    @property
    def down(self) -> str:
        """Why the instance is certainly down right now (not merely slow to answer), or ""."""
        if not self.pod_exists:
            return "its pod is gone"
        if self.pod_deleting:
            return "its pod is being deleted"
        if not self.container_running:
            return "its container is not running"
        if self.error == CONNECTION_REFUSED:
            return "nothing listens on its PostgreSQL port"
        if self.error == SHUTTING_DOWN:
            # killed (immediate shutdown), stopped, or fenced by its agent: it is going away
            return "it is shutting down"
        return ""

    @property
    def is_writable_primary(self) -> bool:
        return self.reachable and self.in_recovery is False and not self.pod_deleting

    @property
    def is_standby(self) -> bool:
        return self.reachable and self.in_recovery is True and not self.pod_deleting

    @property
    def wal_position(self) -> int | None:
        """What a standby holds: received, or replayed when its receiver never ran since start."""
        known = [lsn for lsn in (self.received_lsn, self.replayed_lsn) if lsn is not None]
        return max(known) if known else None


@dataclass(frozen=True)
class HealthTracker:
    """Failed checks of the recorded primary, and whether it is certainly down.

    Two kinds of failure:
    - The primary does not answer as a writable primary while its container runs (refused
      connection, timeout, in recovery): a network blip or a busy server looks the same for
      one check, so failover waits for `threshold` consecutive failures (3 x 2 s by default).
    - The primary seen healthy before is certainly down: its pod is gone or being deleted,
      its container stopped or restarted since, or nothing listens on its port (the
      postmaster is gone: the kubelet reports the container's exit only a second or two
      later). Waiting cannot help, and a standby is ready
      to take over in a second: failover starts at once (CloudNativePG's rule, with its
      default failoverDelay 0). Only after a healthy check by this tracker, so that a
      starting operator or a cluster being created never fails over on it.
    """

    primary: str = ""
    failures: int = 0
    last_lsn: int | None = None  # the primary's last reported write position
    healthy_incarnation: str | None = None  # the primary's incarnation at its last healthy check
    down: str = ""  # why the primary is certainly down, "" when it may be a blip

    def record(self, primary: str, observation: Observation | None) -> "HealthTracker":
        tracker = self if primary == self.primary else HealthTracker(primary=primary)
        if observation is not None and observation.is_writable_primary:
            lsn = observation.current_lsn if observation.current_lsn is not None else tracker.last_lsn
            return replace(tracker, failures=0, last_lsn=lsn, healthy_incarnation=observation.incarnation, down="")
        down = ""
        if observation is not None and tracker.healthy_incarnation is not None:
            down = observation.down
            if not down and observation.incarnation and observation.incarnation != tracker.healthy_incarnation:
                down = "it restarted"
        return replace(tracker, failures=tracker.failures + 1, down=down)

    def should_fail_over(self, threshold: int) -> bool:
        return bool(self.down) or self.failures >= threshold


def nothing_reachable(observations: Mapping[str, Observation]) -> bool:
    """No instance answers at all: more likely the operator's own network (or an operator
    run outside the cluster) than every pod at once; such a check does not count against
    the primary, and a failover could not promote anyone anyway."""
    return not any(o.reachable for o in observations.values())


@dataclass(frozen=True)
class Candidate:
    name: str
    wal_position: int
    replayed_lsn: int | None
    lag_bytes: int  # behind the best known position (old primary or any standby)


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


def eligible(name: str, topology: Topology, failed_primary: str) -> bool:
    """Promotable, not analytics (even when marked promotable), not the failed primary."""
    try:
        instance = topology.instance(name)
    except KeyError:
        return False
    return name != failed_primary and instance.promotable and not instance.analytics


def choose_candidate(observations: Mapping[str, Observation], topology: Topology, spec: ClusterSpec,
                     failed_primary: str, primary_lsn: int | None = None,
                     target: str | None = None) -> Candidate | Refusal:
    """The replica to promote, or why none may be.

    Among reachable standbys that are eligible (see eligible()), the highest received LSN
    wins; ties go to the higher replayed LSN (less to replay before accepting writes), then
    to the name (deterministic across operator restarts). `target` (a switchover) narrows
    the choice to one instance, which must pass the same rules but the synchronous one.
    """
    standbys = [o for o in observations.values() if o.is_standby and o.wal_position is not None]
    candidates = [o for o in standbys if eligible(o.name, topology, failed_primary)]
    if target is not None:
        if not eligible(target, topology, failed_primary):
            return Refusal(TARGET_NOT_ELIGIBLE, f"{target} is not a promotable replica of this cluster "
                                                f"(analytics and non-promotable replicas never are)")
        candidates = [o for o in candidates if o.name == target]
        if not candidates:
            return Refusal(TARGET_NOT_ELIGIBLE, f"{target} is not reachable as a standby")
    if not candidates:
        return Refusal(NO_CANDIDATE, "no promotable replica is reachable as a standby")
    best = sorted(candidates, key=lambda o: (-o.wal_position, -(o.replayed_lsn or 0), o.name))[0]

    known = [o.wal_position for o in standbys] + ([primary_lsn] if primary_lsn is not None else [])
    lag = max(known) - best.wal_position
    if lag > spec.failover.max_lag_bytes:
        return Refusal(TOO_FAR_BEHIND, f"the best candidate {best.name} is {lag} bytes behind, more than "
                                       f"failover.maxLagBytes ({spec.failover.max_lag_bytes}); raise it to "
                                       f"accept losing those writes")
    # The synchronous rule proves a candidate complete without the primary. A switchover
    # does not need it: the primary is alive, and the promote step waits until the target
    # holds all the WAL the primary wrote (fenceLSN), which is zero loss in any mode.
    if spec.postgres.synchronous.enabled and target is None:
        problem = synchronous_rule(best, observations, topology, spec, failed_primary)
        if problem:
            return Refusal(SYNC_UNPROVEN, problem)
    return Candidate(best.name, best.wal_position, best.replayed_lsn, lag)


def synchronous_rule(candidate: Observation, observations: Mapping[str, Observation], topology: Topology,
                     spec: ClusterSpec, failed_primary: str) -> str | None:
    """Why promoting `candidate` could lose a synchronously acknowledged commit, or None.

    The argument (the primary is gone, so it cannot be asked what it acknowledged):
    - The primary's synchronous_standby_names is `ANY n (S)`, S = its promotable peers
      (builders.postgres.synchronous_standbys), and a commit is acknowledged only after n
      members of S flushed it; a standby's pg_last_wal_receive_lsn() is exactly what it
      flushed.
    - So every acknowledged commit is flushed on at least n members of S. If fewer than n
      members are unobserved (u < n), every acknowledged commit is on at least one observed
      member, hence at or below the highest received LSN among observed members.
    - A candidate whose received LSN is at least that maximum holds every acknowledged
      commit (WAL is a single stream: holding a position means holding all before it).
    - If u >= n, an acknowledged commit may live only on the unobserved members: no
      candidate can be proven complete, so none is promoted until enough of S is back.
    Note that an analytics instance marked promotable is in S but is never promoted; when it
    alone holds the newest acknowledged commit, this rule refuses rather than lose it.
    Transactions that lowered synchronous_commit themselves opted out of this guarantee.
    """
    members = [i.name for i in topology.instances if i.promotable and i.name != failed_primary]
    needed = spec.postgres.synchronous.number
    observed = {m: observations[m].wal_position for m in members
                if m in observations and observations[m].is_standby and observations[m].wal_position is not None}
    unobserved = sorted(set(members) - set(observed))
    if len(unobserved) >= needed:
        return (f"synchronous replication (ANY {needed}): {', '.join(unobserved)} cannot be checked, and an "
                f"acknowledged commit may exist only there; waiting for them")
    newest = max(observed.values())
    if candidate.wal_position < newest:
        holder = max(observed, key=lambda m: observed[m])
        return (f"synchronous replication: {holder} holds WAL up to {newest - candidate.wal_position} bytes past "
                f"the best promotable candidate {candidate.name} and may not be promoted")
    return None


# --- the recorded failover (status.failover) -------------------------------------------

def timestamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def parse_timestamp(value: str) -> datetime.datetime:
    return datetime.datetime.strptime(value.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")


def start(kind: str, old_primary: str, reason: str, now: datetime.datetime, target: str | None = None) -> dict:
    return {"phase": RUNNING, "kind": kind, "from": old_primary, "to": target, "reason": reason,
            "startedAt": timestamp(now), "steps": {}}


def is_running(state: dict | None) -> bool:
    """Resumed at the next check: running, or refused (retried until the reason goes
    away) — except a refused switchover that fenced nothing yet, which simply ends."""
    if not state or state.get("phase") not in (RUNNING, REFUSED) or next_step(state) is None:
        return False
    return not (state.get("kind") == SWITCHOVER and state.get("phase") == REFUSED
                and FENCE not in (state.get("steps") or {}))


def should_cancel(state: dict, primary_healthy: bool) -> bool:
    """A failover that fenced nothing yet ends when the primary answers again (a refused
    one would otherwise promote a replica of a healthy primary once the refusal lifts)."""
    return (state.get("kind") == FAILOVER and primary_healthy
            and FENCE not in (state.get("steps") or {}))


def blocking(state: dict | None) -> Refusal | None:
    """What the FailoverBlocked condition says for a failover record: its refusal while it
    is refused; nothing once it runs again, completes or is cancelled."""
    if not state or state.get("phase") != REFUSED:
        return None
    refusal = state.get("refusal") or {}
    return Refusal(refusal.get("reason") or "Refused", refusal.get("message") or "")


def cancel(state: dict, now: datetime.datetime) -> dict:
    return {**state, "phase": CANCELLED, "finishedAt": timestamp(now)}


def next_step(state: dict) -> str | None:
    """The first step not yet recorded; None once all are (the failover is complete)."""
    done = state.get("steps") or {}
    return next((step for step in STEPS if step not in done), None)


def mark_step(state: dict, step: str, now: datetime.datetime, **fields) -> dict:
    """`state` with `step` recorded as done at `now` (and `fields` set); phase stays Running."""
    return {**state, **fields, "phase": RUNNING, "refusal": None,
            "steps": {**(state.get("steps") or {}), step: timestamp(now)}}


def refuse(state: dict, refusal: Refusal) -> dict:
    return {**state, "phase": REFUSED, "refusal": {"reason": refusal.reason, "message": refusal.message}}


def complete(state: dict, now: datetime.datetime) -> dict:
    started = parse_timestamp(state["startedAt"])
    return {**state, "phase": COMPLETED, "finishedAt": timestamp(now),
            "durationSeconds": round((now - started).total_seconds(), 3)}


def step_durations(state: dict) -> dict[str, float]:
    """Seconds each recorded step took (from the previous step, or the start)."""
    previous = parse_timestamp(state["startedAt"])
    result = {}
    for step in STEPS:
        at = (state.get("steps") or {}).get(step)
        if at is None:
            break
        moment = parse_timestamp(at)
        result[step] = round((moment - previous).total_seconds(), 3)
        previous = moment
    return result


def history_entry(state: dict) -> dict:
    return {key: state.get(key) for key in ("kind", "from", "to", "reason", "startedAt", "finishedAt",
                                            "durationSeconds")} | {
        "stepSeconds": step_durations(state), "oldPrimaryStopped": (state.get("oldPrimaryStopped") or {}).get("by")}


def with_history(history: list[dict] | None, state: dict) -> list[dict]:
    return ([*(history or []), history_entry(state)])[-HISTORY_LENGTH:]


def drain_pending(state: dict, observations: Mapping[str, Observation], topology: Topology,
                  spec: ClusterSpec) -> list[str]:
    """With synchronous replication: eligible replicas still streaming from the fenced
    primary, which must let go before a promotion.

    While a synchronous standby still streams from the old primary (cut off from the
    operator, not from its peers), the old primary can still get commits acknowledged; once
    none streams, it cannot, and received LSNs are final (CloudNativePG's rule). A receiver
    of a vanished node lets go after wal_receiver_timeout; one that keeps streaming means
    the old primary is alive, and promoting then could lose acknowledged commits, so there
    is no deadline. Without synchronous replication nothing is promised for such commits,
    and the promote step re-chooses on fresh LSNs instead of waiting.
    """
    if not spec.postgres.synchronous.enabled:
        return []
    return sorted(o.name for o in observations.values()
                  if o.streaming and eligible(o.name, topology, state.get("from", "")))


# --- the primary lease: nobody is promoted while the old primary may still write ----------

LEASE_EXPIRED, POD_GONE = "LeaseExpired", "PodGone"


def lease_record(previous: dict | None, to: str, handover_renew_time: str, now: datetime.datetime,
                 earlier: dict | None = None) -> dict:
    """What the fence step records of its lease handover (status.failover.lease).

    `previous` is the lease as read by the handover that succeeded: its renewTime is the old
    holder's last, since a later renewal would have made the handover fail. None when the
    lease already named `to` (the fence step resumed after a crash): the old holder's last
    renewal then lies before the handover's own acquireTime, which stands in for it. A second
    handover (the promote step chose a replica further ahead) keeps the first record's old
    holder."""
    if earlier:
        base = {k: earlier.get(k) for k in ("from", "renewTime", "durationSeconds")}
    elif previous is not None and primary_lease.holder(previous) != to:
        base = {"from": primary_lease.holder(previous) or None, "renewTime": primary_lease.renew_time(previous) or None,
                "durationSeconds": primary_lease.renewed_duration(previous, 0) or None}
    else:
        spec = (previous or {}).get("spec") or {}
        base = {"from": None, "renewTime": spec.get("acquireTime") or timestamp(now),
                "durationSeconds": primary_lease.renewed_duration(previous, 0) or None}
    return {**base, "to": to, "handoverRenewTime": handover_renew_time, "handedOverAt": timestamp(now)}


def old_primary_stopped(state: dict, observations: Mapping[str, Observation], skew: int, default_duration: int,
                        now: datetime.datetime) -> tuple[str, str]:
    """(how, why) the old primary can no longer be writing, or ("", why not yet).

    - PodGone: the pod fenced at the fence step no longer exists. The API server removes a
      pod only once its kubelet confirmed every container stopped (the rule a StatefulSet
      relies on to never run two pods of one name); a force deletion skips the kubelet and
      is its user's word for it, and the lease below still fences such a pod by itself.
    - LeaseExpired: its last renewal plus the duration it promised plus the clock-skew
      allowance lies in the past: its instance-agent and fence.sh stopped it `margin`
      seconds before the lease ended.
    """
    old = observations.get(state["from"])
    fenced_uid = state.get("fencedPod")
    if old is None or not old.pod_exists or (fenced_uid and old.pod_uid and old.pod_uid != fenced_uid):
        return POD_GONE, f"{state['from']}'s pod is gone: the kubelet confirmed its containers stopped"
    record = state.get("lease") or {}
    renewed = record.get("renewTime") or ""
    duration = int(record.get("durationSeconds") or default_duration)
    if primary_lease.expired(renewed, duration, skew, now):
        return LEASE_EXPIRED, (f"{state['from']}'s primary lease expired: last renewed {renewed or 'never'}, "
                               f"{duration} s lease + {skew} s clock-skew allowance")
    until = primary_lease.expires_at(renewed, duration, skew)
    return "", (f"{state['from']} may still be writing: its pod is not gone and its primary lease runs until "
                f"{timestamp(until)}")


def lease_taken_up(state: dict, lease: dict | None, target: Observation | None) -> bool:
    """The promoted instance's agent renewed the lease since the handover, so its fence.sh
    lets it write. A pod without an instance-agent (made before it existed) is not waited for:
    nothing there fences it either."""
    if target is not None and target.pod_exists and not target.agent:
        return True
    record = state.get("lease") or {}
    return (primary_lease.holder(lease) == state["to"]
            and primary_lease.renew_time(lease) not in ("", record.get("handoverRenewTime")))


def lease_status(lease: dict | None, skew: int, now: datetime.datetime) -> dict:
    """status.primaryLease: who holds it, when it was renewed, and whether its holder is
    fenced (it renewed the lease before, and that renewal has expired: its agent and
    fence.sh stopped it). A lease never renewed since it was created or handed over is not
    a fence: its holder's agent may not be running yet."""
    if lease is None:
        return {"holder": None, "renewTime": None, "expiresAt": None, "fenced": False}
    spec = lease.get("spec") or {}
    renewed = primary_lease.renew_time(lease)
    duration = primary_lease.renewed_duration(lease, 0)
    until = primary_lease.expires_at(renewed, duration, skew)
    ever_renewed = bool(renewed) and renewed != spec.get("acquireTime")
    return {"holder": primary_lease.holder(lease) or None, "renewTime": renewed or None,
            "expiresAt": timestamp(until) if until else None,
            "fenced": ever_renewed and primary_lease.expired(renewed, duration, skew, now)}


# --- routes after a failover -------------------------------------------------------------

def route_handoff(topology: Topology, observations: Mapping[str, Observation],
                  preferred: str | None = None) -> dict[str, str]:
    """Routes that still point at the primary (the promoted replica kept its route), moved
    to a streaming pool replica that serves no route, the former primary first.

    Returns route -> new instance; empty while no such replica streams (rejoin pending).
    """
    stranded = sorted(route for route, inst in topology.routes.items() if inst == topology.primary)
    taken = set(topology.routes.values())
    free = [i.name for i in topology.instances
            if i.promotable and not i.analytics and i.name != topology.primary and i.name not in taken
            and i.name in observations and observations[i.name].streaming]
    free.sort(key=lambda n: (n != preferred, n))
    return dict(zip(stranded, free))
