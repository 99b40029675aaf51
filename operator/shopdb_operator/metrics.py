"""The operator's own Prometheus metrics, served on `/metrics` (`shopdb-operator run
--metrics-address`, 0.0.0.0:9560 by default).

One dedicated registry (not prometheus_client's global one, so each test gets its own
OperatorMetrics), with the process and platform collectors on it. Label values are
namespaces, cluster names, instance names, phases and step names: never a secret.

| metric | labels | updated |
|---|---|---|
| shopdb_reconcile_total (counter) | namespace, cluster, result | each reconciliation pass: the create/update/resume handler and the drift timer's pass; result `ok`, `error`, or `invalid` (InvalidSpec, missing Secrets) |
| shopdb_reconcile_duration_seconds (histogram) | namespace, cluster | the same passes |
| shopdb_cluster_phase (gauge) | namespace, cluster, phase | status.phase: 1 for the current phase, 0 for the other known ones |
| shopdb_cluster_instances (gauge) | namespace, cluster | desired database instances: the primary + spec.replicas |
| shopdb_cluster_instances_ready (gauge) | namespace, cluster | status.instances that are ready |
| shopdb_failovers_total (counter) | namespace, cluster, from, to, kind | once per completed failover or switchover (kind), keyed by its start time |
| shopdb_failover_step_seconds (gauge) | namespace, cluster, step | each step of the last completed failover (status.failoverHistory stepSeconds) |
| shopdb_failover_blocked (gauge) | namespace, cluster | 1 while the recorded failover is refused and will be retried (status.failover.phase Refused: lag over failover.maxLagBytes, no candidate, synchronous commits not proven), else 0 |
| shopdb_rollout_pending_instances (gauge) | namespace, cluster | instances a rolling update still has to restart (status.rollout.pending, and the one restarting now) |
| shopdb_backup_last_success_timestamp_seconds (gauge) | namespace, cluster | see backup_deadline(); set once a backup is known |
| shopdb_wal_archive_last_success_timestamp_seconds (gauge) | namespace, cluster | status.backup.archiving.lastArchivedAt; set once known |
| shopdb_backup_max_age_seconds (gauge) | namespace, cluster | see backup_max_age() |
| shopdb_operator_info (gauge) | version | 1 |

Gauges are derived from the status the operator writes (set_cluster_status, fed the status
after each write of the reconcile handler and the drift timer, and after each check of the
failover daemon), so the instrumentation in the handlers stays a call or two. A deleted
cluster's series are removed (forget_cluster).

Alert examples: `time() - shopdb_backup_last_success_timestamp_seconds >
shopdb_backup_max_age_seconds`, `shopdb_failover_blocked == 1`,
`increase(shopdb_failovers_total[1h]) > 0`.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import threading
import time
from dataclasses import dataclass

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector,
                               generate_latest, start_http_server)

from . import __version__
from .api.validate import InvalidSpec, parse_spec
from .backup.jobs import schedules as backup_schedules
from .failover import decide
from .status import PHASE_CREATING, PHASE_DEGRADED, PHASE_INVALID, PHASE_READY

OK, ERROR, INVALID = "ok", "error", "invalid"
PHASES = (PHASE_CREATING, PHASE_READY, PHASE_DEGRADED, PHASE_INVALID)
DEFAULT_ADDRESS = "0.0.0.0:9560"
RECONCILE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BACKUP_AGE_MARGIN_FRACTION = 0.25  # of the longest interval between two scheduled runs
BACKUP_AGE_MARGIN_MIN_SECONDS = 3600
CLUSTER = ("namespace", "cluster")

log = logging.getLogger(__name__)


@dataclass
class ReconcilePass:
    """What `reconciling()` records: `result` defaults to ok (error on an exception);
    `skip` when the pass found nothing to do (the cluster is gone or not created yet)."""

    result: str | None = None
    skip: bool = False


class OperatorMetrics:
    """The registry and every metric; the module-level functions use METRICS."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.reconcile_total = Counter(
            "shopdb_reconcile", "Reconciliation passes (create/update/resume handler and drift timer), by result.",
            [*CLUSTER, "result"], registry=r)
        self.reconcile_duration = Histogram(
            "shopdb_reconcile_duration_seconds", "Seconds one reconciliation pass took.", CLUSTER,
            buckets=RECONCILE_BUCKETS, registry=r)
        self.phase = Gauge("shopdb_cluster_phase", "1 for the cluster's status.phase, 0 for the other known phases.",
                           [*CLUSTER, "phase"], registry=r)
        self.instances = Gauge("shopdb_cluster_instances",
                               "Desired database instances: the primary and spec.replicas.", CLUSTER, registry=r)
        self.instances_ready = Gauge("shopdb_cluster_instances_ready", "Database instances whose pod is ready.",
                                     CLUSTER, registry=r)
        self.failovers = Counter("shopdb_failovers", "Completed failovers and switchovers.",
                                 [*CLUSTER, "from", "to", "kind"], registry=r)
        self.failover_step = Gauge("shopdb_failover_step_seconds",
                                   "Seconds each step of the last completed failover or switchover took.",
                                   [*CLUSTER, "step"], registry=r)
        self.failover_blocked = Gauge(
            "shopdb_failover_blocked", "1 while a needed failover is refused (condition FailoverBlocked), else 0.",
            CLUSTER, registry=r)
        self.rollout_pending = Gauge(
            "shopdb_rollout_pending_instances",
            "Instances a rolling update has yet to restart onto the desired configuration or pod template.",
            CLUSTER, registry=r)
        self.backup_last_success = Gauge(
            "shopdb_backup_last_success_timestamp_seconds",
            "End of the newest successful backup of the repository due soonest (unix seconds).", CLUSTER, registry=r)
        self.wal_last_success = Gauge("shopdb_wal_archive_last_success_timestamp_seconds",
                                      "When the primary last archived a WAL segment (unix seconds).", CLUSTER,
                                      registry=r)
        self.backup_max_age = Gauge(
            "shopdb_backup_max_age_seconds",
            "How old shopdb_backup_last_success_timestamp_seconds may get given the backup schedules.", CLUSTER,
            registry=r)
        self.info = Gauge("shopdb_operator_info", "The running operator's version.", ["version"], registry=r)
        self.info.labels(version=__version__).set(1)
        self._lock = threading.Lock()
        # (namespace, cluster) -> startedAt of the newest completed failover already accounted for
        self._last_failover: dict[tuple[str, str], datetime.datetime | None] = {}

    # --- reconciliation ------------------------------------------------------------------

    def observe_reconcile(self, namespace: str, cluster: str, result: str, seconds: float) -> None:
        if result not in (OK, ERROR, INVALID):
            raise ValueError(f"unknown reconcile result {result!r}")
        self.reconcile_total.labels(namespace, cluster, result).inc()
        self.reconcile_duration.labels(namespace, cluster).observe(max(0.0, seconds))

    @contextlib.contextmanager
    def reconciling(self, namespace: str, cluster: str):
        """Times the block and counts it: ok, error when it raises, or what it set."""
        started = time.monotonic()
        outcome = ReconcilePass()
        failed = False
        try:
            yield outcome
        except BaseException:
            failed = True
            raise
        finally:
            if not outcome.skip:
                try:
                    self.observe_reconcile(namespace, cluster, outcome.result or (ERROR if failed else OK),
                                           time.monotonic() - started)
                except Exception:  # noqa: BLE001  (never fails the handler)
                    log.exception("reconcile metrics of %s/%s not updated", namespace, cluster)

    # --- what the status says ----------------------------------------------------------------

    def set_cluster_status(self, namespace: str, cluster: str, status: dict | None, spec: dict | None) -> None:
        """Every status-derived gauge from the cluster's status (as just written) and raw spec."""
        status = status or {}
        phase = status.get("phase")
        for known in PHASES:  # the only phases the operator writes
            self.phase.labels(namespace, cluster, known).set(1 if phase == known else 0)
        instances = status.get("instances")
        if isinstance(instances, list):
            self.instances_ready.labels(namespace, cluster).set(
                sum(1 for i in instances if isinstance(i, dict) and i.get("ready")))
        facts = spec_facts(spec)
        if facts is not None:
            self.instances.labels(namespace, cluster).set(facts.instances)
        state = status.get("failover")
        self.failover_blocked.labels(namespace, cluster).set(1 if failover_blocked(state) else 0)
        history = status.get("failoverHistory")
        self._failover_history(namespace, cluster, history if isinstance(history, list) else [])
        self.rollout_pending.labels(namespace, cluster).set(rollout_pending(status.get("rollout")))
        backup = status.get("backup")
        if facts is not None:
            self._backup(namespace, cluster, backup if isinstance(backup, dict) else {}, facts)

    def _backup(self, namespace: str, cluster: str, backup: dict, facts: "SpecFacts") -> None:
        if not facts.backup_max_ages:  # no spec.backup (any more)
            for gauge in (self.backup_last_success, self.wal_last_success, self.backup_max_age):
                gauge.remove_by_labels({"namespace": namespace, "cluster": cluster})
            return
        last, max_age = backup_deadline(backup.get("repositories") or {}, facts.backup_max_ages)
        self.backup_max_age.labels(namespace, cluster).set(max_age)
        if last is not None:
            self.backup_last_success.labels(namespace, cluster).set(last)
        archiving = backup.get("archiving")
        archived = _epoch(archiving.get("lastArchivedAt") if isinstance(archiving, dict) else None)
        if archived is not None:
            self.wal_last_success.labels(namespace, cluster).set(archived)

    # --- failovers -----------------------------------------------------------------------

    def failover_completed(self, namespace: str, cluster: str, state: dict) -> bool:
        """A failover or switchover this operator just completed (status.failover, phase
        Completed): counted once, however often it is reported; True when counted now."""
        if not isinstance(state, dict) or state.get("phase") != decide.COMPLETED or not state.get("startedAt"):
            return False
        return self._completed(namespace, cluster, decide.history_entry(state), prime=False)

    def _failover_history(self, namespace: str, cluster: str, history: list) -> None:
        """Completed failovers recorded in status.failoverHistory. The first status seen for a
        cluster only sets the step gauges of its last one: a restarted operator does not count
        again what it counted before."""
        entries = [h for h in history if isinstance(h, dict) and _moment(h.get("startedAt")) is not None]
        entries.sort(key=lambda h: _moment(h["startedAt"]))
        with self._lock:
            first_sight = (namespace, cluster) not in self._last_failover
            if first_sight:
                self._last_failover[(namespace, cluster)] = None
        if first_sight and entries:
            self._completed(namespace, cluster, entries[-1], prime=True)
            return
        for entry in entries:
            self._completed(namespace, cluster, entry, prime=False)

    def _completed(self, namespace: str, cluster: str, entry: dict, prime: bool) -> bool:
        started = _moment(entry.get("startedAt"))
        if started is None:
            return False
        with self._lock:
            last = self._last_failover.get((namespace, cluster))
            if last is not None and started <= last:
                return False
            self._last_failover[(namespace, cluster)] = started
            if not prime:
                self.failovers.labels(namespace, cluster, entry.get("from") or "", entry.get("to") or "",
                                      entry.get("kind") or "failover").inc()
            self.failover_step.remove_by_labels({"namespace": namespace, "cluster": cluster})
            for step, seconds in (entry.get("stepSeconds") or {}).items():
                if isinstance(seconds, (int, float)):
                    self.failover_step.labels(namespace, cluster, step).set(seconds)
        return not prime

    # --- deletion --------------------------------------------------------------------------

    def forget_cluster(self, namespace: str, cluster: str) -> None:
        """Remove every series of a deleted cluster."""
        labels = {"namespace": namespace, "cluster": cluster}
        for metric in (self.reconcile_total, self.reconcile_duration, self.phase, self.instances,
                       self.instances_ready, self.failovers, self.failover_step, self.failover_blocked,
                       self.rollout_pending, self.backup_last_success, self.wal_last_success, self.backup_max_age):
            metric.remove_by_labels(labels)
        with self._lock:
            self._last_failover.pop((namespace, cluster), None)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# --- pure helpers ----------------------------------------------------------------------------

def failover_blocked(state: dict | None) -> bool:
    """A recorded failover refused and retried at each check (a refused switchover that fenced
    nothing yet simply ends: nothing is needed then)."""
    return isinstance(state, dict) and decide.blocking(state) is not None and decide.is_running(state)


def rollout_pending(rollout: dict | None) -> int:
    """Instances not yet on the desired configuration or pod template: those status.rollout
    lists as pending, and the one being restarted (or switched away from) right now, until it
    is back. Deferred changes (operatorChanges: deferred) are not pending by choice."""
    rollout = rollout if isinstance(rollout, dict) else {}
    names = set((rollout.get("pending") or {}).keys())
    current = rollout.get("current") or {}
    if current.get("instance"):
        names.add(current["instance"])
    return len(names)


def backup_deadline(repositories: dict, max_ages: dict[str, float]) -> tuple[float | None, float]:
    """(last success, max age) to export for the repositories of status.backup and each
    repository's allowed age (backup_max_age()).

    One series per cluster stands for every repository: the repository whose newest backup
    is due soonest, that is with the smallest end of its newest backup + its max age, so that
    `time() - last > max_age` holds exactly when some repository is overdue. A repository
    with no successful backup yet is left out (condition LastBackupSucceeded tells about it);
    while none has one, the last success is None and the max age is the smallest."""
    best: tuple[float, float, float] | None = None
    repositories = repositories if isinstance(repositories, dict) else {}
    for name, max_age in max_ages.items():
        held = repositories.get(name)
        newest = held.get("lastSuccessfulBackup") if isinstance(held, dict) else None
        last = _epoch(newest.get("finishedAt") if isinstance(newest, dict) else None)
        if last is None:
            continue
        if best is None or last + max_age < best[0]:
            best = (last + max_age, last, max_age)
    if best is None:
        return None, min(max_ages.values())
    return best[1], best[2]


def backup_max_age(schedules: list[str]) -> float | None:
    """How old a repository's newest backup may be: the longest interval between two
    consecutive runs of its backup schedules together (full, differential, incremental: any
    of them makes a newer backup), plus a margin of a quarter of that interval and at least
    an hour, for how long a backup runs and how late a run may start. None when the
    schedules never run. E.g. daily at 02:00: 24 h + 6 h = 30 h; every 6 hours: 7.5 h;
    hourly incremental with a daily full: 2 h."""
    interval = longest_interval(tuple(schedules))
    if interval is None:
        return None
    return float(interval + max(BACKUP_AGE_MARGIN_MIN_SECONDS, interval * BACKUP_AGE_MARGIN_FRACTION))


# --- cron -------------------------------------------------------------------------------------

_MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
           "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
# Within 1901-2099 the calendar (leap years and weekdays) repeats every 28 years.
_CYCLE_START = datetime.date(2001, 1, 1)
_CYCLE_DAYS = (datetime.date(2029, 1, 1) - _CYCLE_START).days


@dataclass(frozen=True)
class _Cron:
    minutes_of_day: tuple[int, ...]  # sorted
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_star: bool
    weekday_star: bool

    def runs_on(self, day: datetime.date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        # Kubernetes' CronJob (robfig/cron): both restricted: either; one is '*': both.
        return in_month and in_week if self.day_star or self.weekday_star else in_month or in_week


def _cron_field(text: str, low: int, high: int) -> tuple[frozenset[int], bool]:
    values: set[int] = set()
    star = False
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = int(step_text) if slash else 1
        if step < 1:
            raise ValueError(f"bad step in {text!r}")
        if base in ("*", "?"):
            start, end = low, high
            star = star or step == 1
        else:
            bounds = [int(b) for b in base.split("-")]
            if len(bounds) > 2:
                raise ValueError(f"bad range in {text!r}")
            start = bounds[0]
            end = bounds[1] if len(bounds) == 2 else (high if slash else start)  # "5/10": 5-high/10
        if not low <= start <= end <= high:
            raise ValueError(f"{part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values), star


@functools.lru_cache(maxsize=256)
def parse_cron(schedule: str) -> _Cron:
    """A five-field cron schedule (or @hourly and friends) as Kubernetes runs it; ValueError."""
    fields = _MACROS.get(schedule.strip(), schedule).split()
    if len(fields) != 5:
        raise ValueError(f"{schedule!r} needs five fields")
    (minutes, _), (hours, _), (days, day_star), (months, _), (weekdays, weekday_star) = (
        _cron_field(text, low, high) for text, (low, high) in zip(fields, _RANGES))
    return _Cron(tuple(sorted(h * 60 + m for h in hours for m in minutes)), days, months,
                 frozenset(d % 7 for d in weekdays), day_star, weekday_star)


@functools.lru_cache(maxsize=256)
def longest_interval(schedules: tuple[str, ...]) -> int | None:
    """The longest time in seconds between two consecutive runs of any of `schedules`
    (UTC, as the operator's CronJobs run them), over a whole 28-year calendar cycle; None
    when none of them ever runs."""
    crons = [parse_cron(s) for s in schedules]
    per_day: dict[tuple[int, ...], tuple[int, int, int]] = {}  # which run -> (first, last, longest gap)
    first_run = last_run = None
    longest = 0
    for offset in range(_CYCLE_DAYS):
        day = _CYCLE_START + datetime.timedelta(days=offset)
        running = tuple(i for i, c in enumerate(crons) if c.runs_on(day))
        if not running:
            continue
        if running not in per_day:
            minutes = sorted(set().union(*(crons[i].minutes_of_day for i in running)))
            gaps = [b - a for a, b in zip(minutes, minutes[1:])]
            per_day[running] = (minutes[0], minutes[-1], max(gaps, default=0))
        first, last, gap = per_day[running]
        base = offset * 1440
        if last_run is not None:
            longest = max(longest, base + first - last_run)
        else:
            first_run = base + first
        longest = max(longest, gap)
        last_run = base + last
    if first_run is None or last_run is None:
        return None
    longest = max(longest, _CYCLE_DAYS * 1440 + first_run - last_run)  # into the next cycle
    return longest * 60


@dataclass(frozen=True)
class SpecFacts:
    instances: int
    backup_max_ages: dict  # repository name -> seconds (empty without spec.backup)


def spec_facts(spec: dict | None) -> SpecFacts | None:
    """What the gauges need from a raw spec; None when it does not parse (InvalidSpec)."""
    try:
        return _spec_facts(json.dumps(spec or {}, sort_keys=True, separators=(",", ":"), default=str))
    except ValueError:  # InvalidSpec
        return None


@functools.lru_cache(maxsize=256)
def _spec_facts(key: str) -> SpecFacts:
    try:
        spec = parse_spec(json.loads(key))
    except InvalidSpec as err:
        raise ValueError(str(err)) from None
    max_ages = {}
    for index, repo in enumerate(spec.backup.repositories if spec.backup else [], start=1):
        try:
            age = backup_max_age(sorted(backup_schedules(repo, index).values()))
        except ValueError:  # a schedule the schema let through but no cron runs
            continue
        if age is not None:
            max_ages[repo.name] = age
    return SpecFacts(1 + len(spec.replicas), max_ages)


def _moment(value) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def _epoch(value) -> float | None:
    moment = _moment(value)
    return moment.timestamp() if moment else None


# --- serving ----------------------------------------------------------------------------------

def parse_address(text: str) -> tuple[str, int]:
    """"host:port" ("0.0.0.0:9560", "[::]:9560", ":9560" for every IPv4 address) -> (host, port)."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def serve(address: str, metrics: OperatorMetrics | None = None):
    """Serve the registry on `address` (host:port) in a daemon thread; (server, thread)."""
    host, port = parse_address(address)
    return start_http_server(port, addr=host, registry=(metrics or METRICS).registry)


# --- what the handlers call: the operator's registry; a metrics bug never fails a handler ----

METRICS = OperatorMetrics()


def _guarded(method):
    @functools.wraps(method)
    def call(namespace: str, cluster: str, *args):
        try:
            return method(namespace, cluster, *args)
        except Exception:  # noqa: BLE001
            log.exception("metrics of %s/%s not updated", namespace, cluster)
            return None
    return call


observe_reconcile = _guarded(METRICS.observe_reconcile)
set_cluster_status = _guarded(METRICS.set_cluster_status)
failover_completed = _guarded(METRICS.failover_completed)
forget_cluster = _guarded(METRICS.forget_cluster)


def reconciling(namespace: str, cluster: str):
    """METRICS.reconciling(): times and counts the block (see OperatorMetrics.reconciling)."""
    return METRICS.reconciling(namespace, cluster)
