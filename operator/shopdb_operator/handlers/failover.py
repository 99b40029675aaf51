"""kopf wiring of failover: one daemon per ShopDatabaseCluster checks its instances every
`failover.checkIntervalSeconds` and, while this operator replica holds the Lease, starts,
resumes or refuses a failover or a requested switchover, one recorded step at a time.

A daemon's `patch` is applied only when it returns, so status is written directly to the
status subresource (adapters.KubeCluster.record). Each check reads the cluster from the API
server, not from kopf's view of it: that view stands still while kopf runs a handler for the
same object (a reconcile after a spec change), and a failover resumed from it would replay
steps already recorded. The daemon only waits on its stopper; each check runs in a worker
thread (psycopg and the Kubernetes client block).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import os
import time
from dataclasses import dataclass, field

import kopf

from .. import GROUP, KIND, PLURAL, VERSION, metrics, postgres
from ..status import PRIMARY_FENCED, set_condition
from ..api.spec import ClusterSpec
from ..api.validate import InvalidSpec, parse_cluster_spec
from ..builders.common import LABEL_CLUSTER, POSTGRES_PORT
from ..builders.agent import lease_timing, primary_lease
from ..builders.secrets import PGBOUNCER_CREDENTIAL, SUPERUSER_CREDENTIAL
from ..fencing import lease as primary_lease_api
from ..failover import decide, execute, monitor
from ..failover.connections import InstanceConnections
from ..failover.adapters import (SWITCHOVER_ANNOTATION, KubeCluster, PgBouncerPoolers, SqlDatabases, database_pods,
                                 pgbouncer_addresses, pod_address, secret_password)
from ..kube.client import Kube, KubeError
from ..kube.lease import Lease
from ..topology import Topology, plan_topology
from .clients import kube
from . import partitions, rollout
from .locks import cluster_lock
from .reconcile import cluster_context, instance_templates  # (the package's `reconcile` is the kopf handler)

RESOURCE = (GROUP, VERSION, PLURAL)
ANNOTATION_SWITCHOVER = SWITCHOVER_ANNOTATION
HOLD_AFTER_STEP_ENV = "SHOPDB_TEST_HOLD_AFTER_STEP"  # tests only: see _hold_for_a_test
# A failover step that waits is re-tried within one check this long: long enough to cover a
# lease running out (duration + skew, 9 s by default) without the gap of another check.
WAIT_IN_CHECK_SECONDS = 12
WAIT_POLL_SECONDS = 0.25
# Steps after which the next one can use the observations taken after the promotion: the
# relabel reads none, the repoint reads the standbys as promoted, and the PgBouncer release
# none. Observing costs up to PORT_CHECK_SECONDS when the old primary's address is dead.
OBSERVED_ENOUGH_AFTER = (decide.RELABEL, decide.REPOINT)
STOP_SLICE_SECONDS = 5  # a longer wait between checks looks this often whether the daemon is to stop
HEALTH_REFRESH_SECONDS = 30  # status.health is rewritten at least this often (the lags), or on a change
# A check does all its work at least this often; the checks between are light (see Settled)
# while nothing moved. Not a bound on noticing a failure: any check that finds one is full.
FULL_CHECK_SECONDS = 10
PASSWORD_KEPT_SECONDS = 300  # the superuser password is read again after this, or after a failed check

log = logging.getLogger(__name__)
_lease: Lease | None = None


def lease(kube: Kube) -> Lease:
    global _lease
    if _lease is None:
        _lease = Lease(kube)
    return _lease


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass
class Memory:
    """What one daemon keeps between checks (lost on restart, by design: only the recorded
    failover must survive; the failure count starts over)."""

    tracker: decide.HealthTracker = field(default_factory=decide.HealthTracker)
    health_summary: object = None
    health_written: datetime.datetime | None = None
    fenced: tuple | None = None  # the PrimaryFenced condition last written: (fenced, holder)
    warned_unhealthy: bool = False
    partitions_checked: datetime.datetime | None = None
    # The superuser password, while every check with it succeeds: (password, when read).
    password: tuple[str, float] | None = None
    # The checks' connections, kept open between checks; closed when the daemon ends.
    connections: InstanceConnections = field(default_factory=InstanceConnections)
    # The resourceVersion whose status the metrics were last fed (report_status).
    reported_version: str | None = None
    # What the last full check left behind with nothing to do (None: the next check is full).
    settled: "Settled | None" = None


@dataclass(frozen=True)
class Settled:
    """A full check that found every instance answering, the primary healthy, no failover,
    rolling restart or due chore, and acted on nothing it saw. Until the cluster or one of
    its pods changes (`fingerprint`, read before that check wrote anything), the next checks
    only need to find each instance as it did: a light check, on the event loop, no thread,
    through the kept connections (the same bounds), reading nothing from the API server.
    Whatever differs makes the check full, given what the light one observed."""

    fingerprint: tuple
    targets: tuple  # monitor.observe_all's: (instance, address, port, pod fields)
    observed: tuple  # _observed() of that check
    primary: str
    lease_name: str
    clock_skew: int
    at: float  # time.monotonic() of that check


@dataclass
class Check:
    """One cluster at one moment: parsed spec, recorded topology, observations."""

    name: str
    namespace: str
    spec: ClusterSpec
    status: dict
    annotations: dict
    topology: Topology
    observations: dict[str, decide.Observation]
    pods: dict[str, dict]
    targets: tuple = ()


def observe(kube: Kube, name: str, namespace: str, spec: ClusterSpec, status: dict, annotations: dict,
            password: str, connections: InstanceConnections | None = None,
            observed: dict[str, decide.Observation] | None = None) -> Check:
    topology = plan_topology(name, spec, status.get("topology"))
    pods = database_pods(kube, namespace, name)
    targets = []
    for instance in topology.instances:
        pod = pods.get(instance.name)
        address = pod_address(pod)
        targets.append((instance.name, address[0] if address else None, POSTGRES_PORT, monitor.pod_state(pod)))
    return Check(name, namespace, spec, status, annotations, topology,
                 monitor.observe_all(targets, password, connections, observed), pods, tuple(targets))


def fingerprint(kube: Kube, name: str, namespace: str, current: dict) -> tuple | None:
    """The cluster's and its pods' resourceVersions, from the operator's watches only (None
    when they are not synced): whatever a check reads from the API server moves one of them."""
    cache = kube.cache
    pods = cache.list("v1", "Pod", namespace, {LABEL_CLUSTER: name}) if cache is not None else None
    if pods is None:
        return None
    return (current["metadata"].get("resourceVersion"),
            tuple(sorted((p["metadata"]["name"], p["metadata"].get("resourceVersion")) for p in pods)))


def _observed(observations: dict[str, decide.Observation]) -> tuple:
    """What a light check must find as the full check did (the LSNs move all the time)."""
    return tuple((n, o.reachable, o.error, o.in_recovery, o.streaming) for n, o in sorted(observations.items()))


def health_status(check: Check, tracker: decide.HealthTracker) -> dict:
    primary = check.topology.primary
    reference = tracker.last_lsn
    instances = {}
    for name, observation in sorted(check.observations.items()):
        entry = monitor.observation_status(observation, primary)
        entry["lagBytes"] = None
        if reference is not None and name != primary and observation.wal_position is not None:
            entry["lagBytes"] = max(0, reference - observation.wal_position)
        instances[name] = entry
    return {"primary": primary, "consecutiveFailures": tracker.failures, "instances": instances}


def _summary(health: dict) -> tuple:
    """What makes a health record worth writing now (LSNs move all the time)."""
    lease = health.get("primaryLease") or {}
    return (health["primary"], health["consecutiveFailures"], lease.get("holder"), lease.get("fenced"),
            tuple((n, i["reachable"], i["ready"], i["inRecovery"], i["streaming"]) for n, i in health["instances"].items()))


class Actor:
    """Everything that acts on one cluster during one check."""

    def __init__(self, kube: Kube, check: Check, password: str, post_event, body: dict,
                 connections: InstanceConnections | None = None):
        self.kube, self.check, self.connections = kube, check, connections

        def templates(topology: dict) -> list[dict] | None:
            return instance_templates(check.name, check.namespace, body["metadata"]["uid"], body.get("spec"),
                                      check.status, topology)

        def new_lease(holder: str, now: datetime.datetime) -> dict:
            ctx = cluster_context(check.name, check.namespace, body["metadata"]["uid"], body.get("spec"),
                                  check.status)
            return primary_lease(ctx, holder, now)

        self.cluster = KubeCluster(kube, check.namespace, check.name, post_event, templates, new_lease,
                                   lease_timing(check.spec))
        self.databases = SqlDatabases(lambda inst: self._address(kube, inst), password)
        # Set by the rollout when a change is under way that the next check carries on with
        # (a file the kubelet has not swapped yet, a reload to confirm): no light checks then.
        self.in_flight = False

    @functools.cached_property
    def poolers(self) -> PgBouncerPoolers:
        """Read only when a failover runs: the admin password is not needed for checks."""
        namespace, name = self.check.namespace, self.check.name
        password = secret_password(self.kube, namespace, f"{name}-{PGBOUNCER_CREDENTIAL.suffix}") or ""
        return PgBouncerPoolers(lambda: pgbouncer_addresses(self.kube, namespace, name), password)

    def _address(self, kube: Kube, instance: str):
        return pod_address(kube.get("v1", "Pod", self.check.namespace, f"{instance}-0"))

    def plan(self) -> execute.Plan:
        return execute.Plan(self.check.topology, self.check.spec, self.check.spec.postgres.database,
                            tuple(self.check.status.get("failoverHistory") or ()))

def run_failover(kube: Kube, actor: Actor, state: dict, name: str, namespace: str, password: str,
                 logger) -> dict:
    """Run steps while they make progress (a whole failover usually fits in one check).

    A step that waits (the fenced primary still shutting down, a standby still streaming
    from it) is looked at again every WAIT_POLL_SECONDS for up to WAIT_IN_CHECK_SECONDS,
    rather than at the next check: those waits usually last well under a second.
    """
    check = actor.check
    deadline = time.monotonic() + WAIT_IN_CHECK_SECONDS
    for _ in range(len(decide.STEPS) + int(WAIT_IN_CHECK_SECONDS / WAIT_POLL_SECONDS)):
        result = execute.run_step(state, actor.plan(), check.observations, actor.cluster, actor.databases,
                                  actor.poolers, _now())
        state = result.state
        if result.refusal is not None:
            return state  # recorded, with the FailoverBlocked condition (a refused switchover simply ends)
        if result.step and result.step == os.environ.get(HOLD_AFTER_STEP_ENV):
            _hold_for_a_test(result.step, logger)
        if result.waiting:
            if time.monotonic() >= deadline:
                logger.info("failover of %s/%s waits: %s", namespace, name, result.waiting)
                return state
            time.sleep(WAIT_POLL_SECONDS)
        elif result.step is None or result.completed:
            if result.completed:
                metrics.failover_completed(namespace, name, state)
            break
        elif result.step in OBSERVED_ENOUGH_AFTER:
            continue
        check = observe(kube, name, namespace, check.spec, check.status, check.annotations, password,
                        actor.connections)
        actor.check = check
    return state


def begin(actor: Actor) -> None:
    """Clear the previous failover's record before a new one is recorded: status is written
    with merge patches, which would otherwise merge the new steps into the old ones (and a
    resumed failover would skip steps it never ran)."""
    actor.cluster.record({"failover": None})


def _hold_for_a_test(step: str, logger) -> None:
    """Fault injection for the e2e test of an operator killed halfway through a failover:
    the test kills this replica for real while it holds here, with that step recorded
    (an exact moment cannot be hit from outside: a whole failover takes about a second)."""
    logger.warning("%s=%s: holding after the recorded step until this process is killed", HOLD_AFTER_STEP_ENV, step)
    while True:
        time.sleep(3600)


def check_cluster(kube: Kube, memory: Memory, name: str, namespace: str, body: dict, post_event, logger,
                  observed: dict[str, decide.Observation] | None = None) -> None:
    """One check: observe, record health, and (holding the Lease) start or resume a failover.
    `body` is the cluster as the API server has it now; `observed`: a light check's findings
    of a moment ago, taken as they are."""
    memory.settled = None
    mark = fingerprint(kube, name, namespace, body)  # before this check writes anything
    status = dict(body.get("status") or {})
    if "applied" not in status:
        return  # not created yet
    try:
        spec = parse_cluster_spec(body)
    except InvalidSpec:
        return
    if memory.password and time.monotonic() - memory.password[1] < PASSWORD_KEPT_SECONDS:
        password = memory.password[0]
    else:
        password = secret_password(kube, namespace, f"{name}-{SUPERUSER_CREDENTIAL.suffix}")
        if not password:
            raise kopf.TemporaryError("the superuser Secret is not there yet", delay=5)
        memory.password = (password, time.monotonic())
    annotations = dict((body.get("metadata") or {}).get("annotations") or {})
    check = observe(kube, name, namespace, spec, status, annotations, password, memory.connections, observed)
    if any(o.error for o in check.observations.values()):
        memory.password = None  # read again at the next check (it may have changed)
    primary = check.topology.primary
    if not decide.nothing_reachable(check.observations):
        memory.tracker = memory.tracker.record(primary, check.observations.get(primary))
    if not lease(kube).held():
        return  # another operator replica acts (and records) for this cluster
    actor = Actor(kube, check, password, post_event, body, memory.connections)

    now = _now()
    health = health_status(check, memory.tracker)
    health["primaryLease"] = decide.lease_status(actor.cluster.primary_lease(cached=True), spec.failover.lease.clock_skew_seconds,
                                                 now)
    report_fence(kube, memory, name, namespace, health["primaryLease"], post_event, now)
    if (_summary(health) != memory.health_summary or memory.health_written is None
            or (now - memory.health_written).total_seconds() >= HEALTH_REFRESH_SECONDS):
        health["checkedAt"] = decide.timestamp(now)
        actor.cluster.record({"health": health})
        memory.health_summary, memory.health_written = _summary(health), now

    state = status.get("failover")
    if decide.is_running(state) and decide.should_cancel(state, memory.tracker.failures == 0):
        actor.cluster.record({"failover": decide.cancel(state, now)})
        post_event("Normal", "FailoverCancelled", f"{primary} answers as a writable primary again")
        return
    if decide.is_running(state):
        run_failover(kube, actor, state, name, namespace, password, logger)
        return

    target = annotations.get(ANNOTATION_SWITCHOVER)
    if target:
        # Consumed once recorded: a refused or finished request is not repeated.
        kube.merge_patch(f"{GROUP}/{VERSION}", "ShopDatabaseCluster", namespace, name,
                         {"metadata": {"annotations": {ANNOTATION_SWITCHOVER: None}}})
        if target != primary:
            state = decide.start(decide.SWITCHOVER, primary, f"switchover to {target} requested", now, target)
            begin(actor)
            run_failover(kube, actor, state, name, namespace, password, logger)
        return

    if memory.tracker.should_fail_over(spec.failover.failure_threshold) and rollout.primary_restarting(status, now):
        logger.info("%s/%s: the primary restarts in place for the rolling update; no failover", namespace, name)
    elif memory.tracker.should_fail_over(spec.failover.failure_threshold):
        old = check.observations.get(primary)
        if memory.tracker.down:
            why = f"primary {primary} is down: {memory.tracker.down}"
        else:
            why = (f"primary {primary} failed {memory.tracker.failures} consecutive checks "
                   f"({old.error if old and old.error else 'not a writable primary'})")
        if not spec.failover.enabled:
            if not memory.warned_unhealthy:
                post_event("Warning", "PrimaryUnhealthy", f"{why}; failover.enabled is false, nothing is done")
                memory.warned_unhealthy = True
            return
        state = decide.start(decide.FAILOVER, primary, why, now)
        if memory.tracker.last_lsn is not None:
            state["primaryLSN"] = memory.tracker.last_lsn
        post_event("Warning", "FailoverStarted", why)
        begin(actor)
        run_failover(kube, actor, state, name, namespace, password, logger)
        memory.tracker = decide.HealthTracker()
        return
    memory.warned_unhealthy = False

    moves = decide.route_handoff(check.topology, check.observations, preferred=(state or {}).get("from"))
    execute.hand_off_routes(check.topology, moves, actor.cluster)
    if partitions.due(memory.partitions_checked, now) and check.observations.get(primary) and \
            check.observations[primary].is_writable_primary:
        memory.partitions_checked = now
        try:
            partitions.observe(actor, spec, status, post_event)
        except postgres.Error as err:
            logger.warning("DEFAULT partitions of %s/%s not read: %s", namespace, name, type(err).__name__)
    try:
        decision = rollout.step(actor, body, post_event, now)
    except (postgres.Error, RuntimeError) as err:  # tried again at the next check
        logger.warning("rollout of %s/%s: %s", namespace, name, type(err).__name__)
        return
    if decision is not None:  # the rolling update's switchover: the primary's turn
        state = decide.start(decide.SWITCHOVER, primary, f"rolling update: {decision.reason}", now, decision.instance)
        begin(actor)
        run_failover(kube, actor, state, name, namespace, password, logger)
    else:
        settle(memory, check, actor, mark)


def report_fence(kube: Kube, memory: Memory, name: str, namespace: str, lease: dict, post_event,
                 now: datetime.datetime) -> None:
    """The PrimaryFenced condition, written when it changes, and a Warning Event when the
    holder of the primary lease is fenced (its renewal ran out: it refuses writes)."""
    holder = lease.get("holder") or "nobody"
    state = (bool(lease.get("fenced")), holder)
    if state == memory.fenced:
        return
    if state[0]:
        reason = "LeaseExpired"
        message = (f"{holder} has not renewed the primary lease since {lease.get('renewTime')} (expired "
                   f"{lease.get('expiresAt')}): it refuses writes until it renews it, or a failover hands the "
                   f"lease to another instance")
        post_event("Warning", "PrimaryFenced", message)
    elif lease.get("holder"):
        reason, message = "LeaseHeld", f"{holder} holds the primary lease"
    else:
        reason, message = "NoLease", "the primary lease does not exist yet"
    stamp = decide.timestamp(now)
    kube.update_status(f"{GROUP}/{VERSION}", KIND, namespace, name, {},
                       lambda live, gen: set_condition(live, PRIMARY_FENCED, state[0], reason, message, gen, stamp))
    memory.fenced = state


def locked_check(memory: Memory, name: str, namespace: str, post_event, logger,
                 observed: dict[str, decide.Observation] | None = None) -> None:
    client = kube()
    with cluster_lock(namespace, name):
        # From the operator's watch: this replica's own writes are in it as soon as they are
        # answered, and what others write arrives within milliseconds.
        current = client.cached_get(f"{GROUP}/{VERSION}", KIND, namespace, name)
        if current is not None and not current["metadata"].get("deletionTimestamp"):
            try:
                check_cluster(client, memory, name, namespace, current, post_event, logger, observed)
            finally:  # the gauges follow what this check recorded (failover, rollout, phase)
                report_status(client, name, namespace, memory)


def report_status(client: Kube, name: str, namespace: str, memory: Memory | None = None) -> None:
    """Feed the metrics the cluster's status as the check left it; never fails the check.
    With the daemon's `memory`, only when the cluster moved since (the gauges are a function
    of its status and spec alone)."""
    try:
        after = client.cached_get(f"{GROUP}/{VERSION}", KIND, namespace, name)
    except KubeError:
        return
    if after is None or after["metadata"].get("deletionTimestamp"):
        return
    version = after["metadata"].get("resourceVersion")
    if memory is not None and version and version == memory.reported_version:
        return
    metrics.set_cluster_status(namespace, name, after.get("status"), after.get("spec"))
    if memory is not None:
        memory.reported_version = version


async def light_check(memory: Memory, name: str, namespace: str) -> tuple[bool, dict[str, decide.Observation] | None]:
    """(True, None) when this check found everything as the settled full check did (its
    failure count stays 0); else (False, what it observed, for the full check to use)."""
    settled = memory.settled
    if settled is None or memory.tracker.failures or memory.password is None:
        return False, None
    client = kube()
    cache = client.cache
    if cache is None:
        return False, None
    clock, now = time.monotonic(), _now()
    if (clock - settled.at >= FULL_CHECK_SECONDS or clock - memory.password[1] >= PASSWORD_KEPT_SECONDS
            or not lease(client).fresh(now) or partitions.due(memory.partitions_checked, now)
            or memory.health_written is None
            or (now - memory.health_written).total_seconds() >= HEALTH_REFRESH_SECONDS):
        return False, None
    known, current = cache.get(f"{GROUP}/{VERSION}", KIND, namespace, name)
    if not known or current is None or current["metadata"].get("deletionTimestamp") \
            or fingerprint(client, name, namespace, current) != settled.fingerprint:
        return False, None
    known, primary_lease_now = cache.get(primary_lease_api.API_VERSION, "Lease", namespace, settled.lease_name)
    fence = decide.lease_status(primary_lease_now, settled.clock_skew, now)
    if not known or (bool(fence["fenced"]), fence["holder"] or "nobody") != memory.fenced:
        return False, None
    observed = await monitor.observe_kept(settled.targets, memory.password[0], memory.connections)
    if _observed(observed) != settled.observed:
        return False, observed
    memory.tracker = memory.tracker.record(settled.primary, observed[settled.primary])
    return True, None


def settle(memory: Memory, check: "Check", actor: "Actor", mark: tuple | None) -> None:
    """After a full check that ran to its end without a failover or switchover: light checks
    may follow while nothing moves (see Settled)."""
    status = check.status
    quiet = (mark is not None and memory.tracker.failures == 0 and not memory.tracker.down
             and check.observations and all(o.reachable and not o.error for o in check.observations.values())
             and not ((status.get("rollout") or {}).get("current")) and memory.fenced is not None
             and not actor.in_flight)
    if quiet:
        memory.settled = Settled(mark, check.targets, _observed(check.observations), check.topology.primary,
                                 actor.cluster.lease_name, check.spec.failover.lease.clock_skew_seconds,
                                 time.monotonic())


def suspect_interval(interval: float) -> float:
    """The wait after a check the primary failed: half the check interval, at least 1 s."""
    return max(1.0, interval / 2)


async def wait_for_next_check(stopped, interval: float, sockets: list[int],
                              slice_seconds: float = STOP_SLICE_SECONDS) -> bool:
    """Wait `interval` seconds, or until the operator stops, or until one of the kept check
    connections' `sockets` has something to read; True in that last case. An idle session
    gets nothing from its server unless the server ends it: a killed PostgreSQL (its
    backends' sockets closed), a shutdown or a deleted pod is checked at once, not at the
    next interval, which is when PgBouncer starts refusing its clients ("server login has
    been failing") until the failover holds them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + interval
    # One future and one timer, no task: this runs every 2 s for every cluster. The timer
    # looks at `stopped` every STOP_SLICE_SECONDS (kopf's wait for it would start a task).
    wake = loop.create_future()
    timer = None

    def tick() -> None:
        nonlocal timer
        left = deadline - loop.time()
        if stopped or left <= 0:
            _wake(wake, False)
        else:
            timer = loop.call_later(min(left, slice_seconds), tick)

    watched = []
    for fd in sockets:
        try:
            loop.add_reader(fd, _wake, wake, True)
            watched.append(fd)
        except (OSError, ValueError):
            pass
    tick()
    try:
        return await wake
    finally:
        if timer is not None:
            timer.cancel()
        for fd in watched:
            loop.remove_reader(fd)


def _wake(future: asyncio.Future, readable: bool) -> None:
    if not future.done():
        future.set_result(readable)


@kopf.daemon(*RESOURCE, cancellation_timeout=10)
async def failover_daemon(name, namespace, body, stopped, logger, **_) -> None:
    """Checks until the cluster is deleted or the operator stops; `body` (kopf's view) only
    gives the check interval and the object that Events are about.

    Async on purpose: a sync daemon would hold one of kopf's few executor threads for its
    whole life (one per cluster); each check borrows a thread only while it runs.
    """
    memory = Memory()

    def post_event(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)

    try:
        woke_early = False
        while not stopped:
            interval = 2
            try:
                interval = parse_cluster_spec(body).failover.check_interval_seconds
            except InvalidSpec:
                pass
            try:
                light, observed = await light_check(memory, name, namespace)
                if not light:
                    # to_thread: the check runs in kopf's context (kopf.event reads its settings there)
                    await asyncio.to_thread(locked_check, memory, name, namespace, post_event, logger, observed)
            except kopf.TemporaryError as err:
                logger.info("failover check of %s/%s: %s", namespace, name, err)
            except KubeError as err:
                logger.warning("failover check of %s/%s: the API server refused: %s", namespace, name, err)
            except (postgres.Error, RuntimeError) as err:  # a step failed: resumed at the next check
                logger.warning("failover step of %s/%s failed: %s", namespace, name, type(err).__name__)
            except Exception:  # a bug must not stop the checks of this cluster for kopf's backoff
                logger.exception("failover check of %s/%s failed", namespace, name)
            if memory.tracker.failures:
                # A primary that failed a check is checked again at half the interval: a
                # hang or a partition (no socket tells of it) is confirmed by
                # failureThreshold checks in less time, while a lone blip still costs one.
                interval = suspect_interval(interval)
            # Not twice in a row: a socket left readable (a check that did not get to read it)
            # must not turn the checks into a busy loop.
            woke_early = await wait_for_next_check(stopped, interval, [] if woke_early else memory.connections.sockets())
    finally:
        # The cluster is deleted or the operator stops: its sessions end with it (a check
        # still running in its thread closes its connection instead of keeping it).
        memory.connections.close()
        reason = getattr(stopped, "reason", None)
        if reason is not None and kopf.DaemonStoppingReason.RESOURCE_DELETED in reason:
            metrics.forget_cluster(namespace, name)  # its series go with it
