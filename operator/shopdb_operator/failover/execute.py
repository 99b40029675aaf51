"""Perform the next recorded failover step, once, through narrow interfaces.

Each call runs at most one step and records it in status before returning, so an operator
that restarts anywhere resumes at the first unrecorded step. Every step is idempotent: it
may run again after a crash between acting and recording.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Mapping, Protocol

from ..api.spec import ClusterSpec
from ..builders.common import LABEL_ROLE, route_label
from ..topology import PRIMARY, REPLICA, Topology
from . import decide
from .decide import Observation, Refusal


FENCE_GRACE_SECONDS = 1


class Cluster(Protocol):
    """The Kubernetes side of one ShopDatabaseCluster."""

    def record(self, status: dict) -> None:
        """Merge `status` into the cluster's status (raises when it could not)."""

    def set_pod_labels(self, instance: str, labels: dict[str, str | None]) -> None:
        """Set (None: remove) labels on the instance's pod; a missing pod is no error."""

    def apply_templates(self, topology: dict) -> None:
        """Make every instance's StatefulSet (and ConfigMap) what this topology record asks
        for: role and route labels, and the resources and settings of each role. A pod
        (re)created from then on starts as what it now is (the drift timer would do it
        within 15 s; the old primary's pod is recreated within a second of the fence)."""

    def fence_pod(self, instance: str, grace_seconds: int | None, created_before: datetime.datetime) -> bool:
        """Delete the instance's pod if it was created before `created_before` (a pod
        recreated since the fence is already fenced); True when deleted."""

    def hand_over_lease(self, to: str, now: datetime.datetime) -> tuple[dict | None, str]:
        """Name `to` in the primary lease (created if missing), written with the
        resourceVersion read and read again on a conflict. Returns the lease as read by the
        write that succeeded (None: there was none) and the renewTime the handover wrote."""

    def primary_lease(self) -> dict | None:
        """The primary lease as the API server has it now."""

    def event(self, type_: str, reason: str, message: str) -> None: ...


class Databases(Protocol):
    """The PostgreSQL side: instances by name."""

    def promote(self, instance: str) -> bool:
        """Promote if still a standby; True when it promoted now. Raises if it failed."""

    def prepare_primary(self, instance: str, slots: list[str]) -> list[str]:
        """CHECKPOINT (pg_rewind needs the new timeline in pg_control) and create the
        replication slots the other instances stream with; returns slots created."""

    def current_lsn(self, instance: str) -> int | None:
        """A primary's write position; None when unreachable."""


class Poolers(Protocol):
    """Every PgBouncer of the cluster, through its admin console."""

    def hold(self, database: str, graceful: bool) -> list[str]:
        """Stop traffic to the old primary, holding new transactions in PgBouncer: PAUSE,
        waiting for running transactions when graceful; else without waiting, and the
        clients in a transaction on the dead or cut-off primary are disconnected (idle
        clients keep their connections). Returns the PgBouncers done."""

    def release(self, database: str, graceful: bool) -> list[str]:
        """Let held clients through to the new primary (RESUME)."""


@dataclass(frozen=True)
class Plan:
    """What the executor needs to know about the cluster (all from spec and status)."""

    topology: Topology  # as recorded before the failover started
    spec: ClusterSpec
    database: str  # PgBouncer's virtual database of the primary route
    history: tuple = ()  # status.failoverHistory so far


@dataclass
class StepResult:
    state: dict
    step: str | None = None  # the step performed (None: nothing done)
    waiting: str = ""  # why the next step cannot run yet
    refusal: Refusal | None = None

    @property
    def completed(self) -> bool:
        return self.state.get("phase") == decide.COMPLETED


def run_step(state: dict, plan: Plan, observations: Mapping[str, Observation], cluster: Cluster,
             databases: Databases, poolers: Poolers, now: datetime.datetime) -> StepResult:
    step = decide.next_step(state)
    if step is None:
        return StepResult(state)
    return _STEPS[step](state, plan, observations, cluster, databases, poolers, now)


def _record(cluster: Cluster, state: dict, **extra) -> None:
    cluster.record({"failover": state, **extra})


def _refused(state: dict, refusal: Refusal, cluster: Cluster) -> StepResult:
    already = (state.get("refusal") or {}).get("reason") == refusal.reason and state.get("phase") == decide.REFUSED
    state = decide.refuse(state, refusal)
    if not already:  # one Event per refusal reason, not one per check
        _record(cluster, state)
        cluster.event("Warning", refusal.reason, f"no promotion: {refusal.message}")
    return StepResult(state, refusal=refusal)


def _primary_lsn(state: dict, observations: Mapping[str, Observation]) -> int | None:
    old = observations.get(state["from"])
    known = [lsn for lsn in (state.get("primaryLSN"), old.current_lsn if old else None) if lsn is not None]
    return max(known) if known else None


def _choose(state, plan, observations, cluster, databases, poolers, now) -> StepResult:
    target = state.get("to") if state.get("kind") == decide.SWITCHOVER else None
    choice = decide.choose_candidate(observations, plan.topology, plan.spec, state["from"],
                                     _primary_lsn(state, observations), target)
    if isinstance(choice, Refusal):
        return _refused(state, choice, cluster)
    state = decide.mark_step(state, decide.CHOOSE, now, to=choice.name, lagBytes=choice.lag_bytes)
    _record(cluster, state)
    cluster.event("Normal", "FailoverCandidate",
                  f"{state['kind']} {state['from']} -> {choice.name} ({state['reason']}); "
                  f"candidate lag {choice.lag_bytes} bytes")
    return StepResult(state, decide.CHOOSE)


def _move_primary(state: dict, plan: Plan, cluster: Cluster) -> None:
    """Record `to` as primary, so that every pod (re)created from now on starts with the
    right role: instance.sh never starts the old primary writable once this is recorded."""
    topology = {**plan.topology.to_status(), "currentPrimary": state["to"]}
    _record(cluster, state, topology=topology, currentPrimary=state["to"])
    # A replica's template must not keep primary resources: a recreated pod would request
    # them, and after a few failovers the pods no longer fit the node (one stays Pending).
    cluster.apply_templates(topology)


def _fence(state, plan, observations, cluster, databases, poolers, now) -> StepResult:
    old = state["from"]
    switchover = state.get("kind") == decide.SWITCHOVER
    # Clients wait in PgBouncer from now until the pgbouncer step (query_wait_timeout 30 s),
    # and none keeps a server connection to the old primary.
    extra: dict = {"heldPoolers": poolers.hold(plan.database, graceful=switchover)}
    if switchover:
        lsn = databases.current_lsn(old)
        if lsn is not None:
            extra["fenceLSN"] = lsn
    _move_primary({**state, **extra}, plan, cluster)
    # From here the old primary's agent cannot renew: it fences its primary when its last
    # renewal runs out, if not sooner (it sees the lease name another instance).
    previous, written = cluster.hand_over_lease(state["to"], now)
    extra["lease"] = decide.lease_record(previous, state["to"], written, now)
    fenced = observations.get(old)
    if fenced is not None and fenced.pod_uid:
        extra["fencedPod"] = fenced.pod_uid
    # A pod created before the templates changed may have started with role=primary (its
    # role is read at container start): it goes, whenever it was created. Creation times
    # have whole seconds, so one created just after the change may go too (harmless).
    templates_changed = datetime.datetime.now(datetime.timezone.utc)
    cluster.set_pod_labels(old, {LABEL_ROLE: REPLICA})  # leaves -rw now
    # Failover: killed after 1 s (0 would be a force delete, skipping the kubelet, and let
    # the StatefulSet start a second pod beside one still running on a cut-off node).
    # Switchover: the pod's own fast shutdown, which sends all WAL to the standbys first.
    deleted = cluster.fence_pod(old, None if switchover else FENCE_GRACE_SECONDS, templates_changed)
    state = decide.mark_step(state, decide.FENCE, now, **extra)
    _record(cluster, state)
    cluster.event("Warning" if not switchover else "Normal", "PrimaryFenced",
                  f"{old} removed from the -rw Service and {'deleted' if deleted else 'already gone'}; "
                  f"it restarts read-only and rejoins as a replica")
    return StepResult(state, decide.FENCE)


def _promote(state, plan, observations, cluster, databases, poolers, now) -> StepResult:
    target = state["to"]
    already = observations.get(target)
    if already is None or not already.is_writable_primary:
        pending = decide.drain_pending(state, observations, plan.topology, plan.spec)
        if pending:
            return StepResult(state, waiting=f"{', '.join(pending)} still stream from the fenced primary")
        if state.get("kind") == decide.SWITCHOVER:
            # Zero loss and no overlap: the old primary is down (its shutdown streamed all WAL
            # to the connected standbys), the target's receiver let go, and it holds the LSN
            # the old primary reported at the fence.
            old = observations.get(state["from"])
            if old is not None and old.reachable:
                return StepResult(state, waiting=f"{state['from']} is still shutting down")
            caught_up = already is not None and not already.streaming and already.wal_position is not None \
                and already.wal_position >= state.get("fenceLSN", 0)
            if not caught_up:
                return StepResult(state, waiting=f"{target} has not received all WAL of {state['from']} yet")
        else:
            # No overlap: the fenced primary (killed within FENCE_GRACE_SECONDS) must stop
            # answering as writable first. One the operator cannot reach is not waited for.
            old = observations.get(state["from"])
            if old is not None and old.reachable and old.in_recovery is False:
                return StepResult(state, waiting=f"{state['from']} still answers as a writable primary")
            # Received LSNs are final now: choose again, the fence may have moved them.
            choice = decide.choose_candidate(observations, plan.topology, plan.spec, state["from"],
                                             _primary_lsn(state, observations))
            if isinstance(choice, Refusal):
                return _refused(state, choice, cluster)
            if choice.name != target and choice.wal_position > (already.wal_position if already else -1):
                previous, written = cluster.hand_over_lease(choice.name, now)
                state = {**state, "to": choice.name, "lagBytes": choice.lag_bytes,
                         "lease": decide.lease_record(previous, choice.name, written, now, earlier=state.get("lease"))}
                _move_primary(state, plan, cluster)
                cluster.event("Normal", "FailoverCandidate", f"{choice.name} is further ahead than {target}; "
                                                             f"promoting it instead")
                target = choice.name
                already = observations.get(target)
        # Never two writable primaries: the old one is positively gone or its lease ran out,
        # and the new one's agent renewed the lease (else its fence.sh would stop it at once).
        lease = plan.spec.failover.lease
        how, why = decide.old_primary_stopped(state, observations, lease.clock_skew_seconds,
                                              lease.duration_seconds, now)
        if not how:
            return StepResult(state, waiting=why)
        if not decide.lease_taken_up(state, cluster.primary_lease(), observations.get(target)):
            return StepResult(state, waiting=f"{target}'s instance-agent has not renewed the primary lease yet")
        state = {**state, "oldPrimaryStopped": {"by": how, "message": why, "at": decide.timestamp(now)}}
        cluster.event("Normal", "OldPrimaryStopped", f"{why}; promoting {target}")
        if already is not None and already.wal_position is not None:
            # Where the new timeline forks: the end of the WAL the standby holds.
            state = {**state, "forkLSN": already.wal_position}
        databases.promote(target)
    slots = [i.slot for i in plan.topology.instances if i.name != target]
    created = databases.prepare_primary(target, slots)
    state = decide.mark_step(state, decide.PROMOTE, now)
    _record(cluster, state)
    cluster.event("Normal", "Promoted", f"{target} promoted" + (f"; created slots {', '.join(created)}" if created else ""))
    return StepResult(state, decide.PROMOTE)


def _relabel(state, plan, observations, cluster, databases, poolers, now) -> StepResult:
    cluster.set_pod_labels(state["from"], {LABEL_ROLE: REPLICA})
    cluster.set_pod_labels(state["to"], {LABEL_ROLE: PRIMARY})  # -rw selects it from now on
    state = decide.mark_step(state, decide.RELABEL, now)
    _record(cluster, state)
    cluster.event("Normal", "PrimaryMoved", f"{state['to']} is the primary; the -rw Service follows it")
    return StepResult(state, decide.RELABEL)


def _repoint(state, plan, observations, cluster, databases, poolers, now) -> StepResult:
    """Standbys reach the primary through the -rw Service by name (primary_conninfo), so they
    follow the relabel by themselves at their next reconnect: nothing to rewrite. A receiver
    stuck on a dead connection cannot be restarted over SQL (pg_terminate_backend refuses
    the walreceiver, and primary_conninfo is a command-line setting that a reload cannot
    change), so it reconnects after wal_receiver_timeout.

    A standby that holds WAL past the fork (the analytics replica, or one excluded from the
    choice, further ahead than the promoted one) can never follow the new timeline: its pod
    is restarted, and instance.sh rewinds it to the fork at start."""
    others = {name: o for name, o in observations.items() if name not in (state["from"], state["to"])}
    fork = state.get("forkLSN")
    diverged = sorted(n for n, o in others.items()
                      if fork is not None and not o.streaming and o.wal_position is not None and o.wal_position > fork)
    for name in diverged:
        cluster.fence_pod(name, None, now)
    state = decide.mark_step(state, decide.REPOINT, now,
                             streaming=sorted(n for n, o in others.items() if o.streaming),
                             notStreaming=sorted(n for n, o in others.items() if not o.streaming),
                             rewound=diverged)
    _record(cluster, state)
    if diverged:
        cluster.event("Normal", "ReplicaRewinding", f"{', '.join(diverged)} received WAL past the fork of the new "
                                                     f"timeline: restarted to rewind")
    return StepResult(state, decide.REPOINT)


def _pgbouncer(state, plan, observations, cluster, databases, poolers, now) -> StepResult:
    switchover = state.get("kind") == decide.SWITCHOVER
    done = poolers.release(plan.database, graceful=switchover)
    state = decide.complete(decide.mark_step(state, decide.PGBOUNCER, now, releasedPoolers=done), now)
    cluster.record({"failover": state, "failoverHistory": decide.with_history(list(plan.history), state)})
    cluster.event("Normal", "FailoverCompleted",
                  f"{state['kind']} {state['from']} -> {state['to']} in {state['durationSeconds']} s "
                  f"(steps: {decide.step_durations(state)}); PgBouncers released: {len(done)}")
    return StepResult(state, decide.PGBOUNCER)


_STEPS = {
    decide.CHOOSE: _choose,
    decide.FENCE: _fence,
    decide.PROMOTE: _promote,
    decide.RELABEL: _relabel,
    decide.REPOINT: _repoint,
    decide.PGBOUNCER: _pgbouncer,
}


def hand_off_routes(topology: Topology, moves: dict[str, str], cluster: Cluster) -> None:
    """Move replica routes off the primary (decide.route_handoff): record, then relabel."""
    if not moves:
        return
    routes = {**topology.routes, **moves}
    record = {**topology.to_status(), "routes": dict(sorted(routes.items()))}
    cluster.record({"topology": record})
    cluster.apply_templates(record)
    for route, instance in sorted(moves.items()):
        cluster.set_pod_labels(instance, {route_label(route): "true"})
        cluster.set_pod_labels(topology.primary, {route_label(route): None})
        cluster.event("Normal", "RouteMoved", f"route {route} moved from the primary {topology.primary} to {instance}")
