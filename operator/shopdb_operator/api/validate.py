"""Turns a raw `spec` into a ClusterSpec or a list of messages a user can act on.

The CRD schema rejects most bad input at `kubectl apply`; this module repeats those rules
(an older CRD, or a cluster where CEL is off, must not get a half-built database) and
adds what a schema cannot say: cron ranges, setting types, and changes that are unsafe
compared with what was last applied.
"""

from __future__ import annotations

import functools
import threading
import json

from pydantic import ValidationError

from .. import pgsettings
from .quantity import QUANTITY_PATTERN, parse_quantity, to_bytes
from .spec import CIDR_PATTERN, CRON_PATTERN, REPLICA_NAME_PATTERN, SQL_IDENTIFIER_PATTERN, ClusterSpec

RESERVED_CONNECTIONS = 20  # superuser, replication, the operator, maintenance Jobs

_CRON_RANGES = [("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
                ("day of week", 0, 7)]
# Without a settings table for the major version, at least these must be whole numbers.
_INTEGER_PARAMETERS = {"max_connections", "max_worker_processes", "max_parallel_workers",
                       "max_parallel_workers_per_gather", "autovacuum_max_workers",
                       "default_statistics_target", "max_locks_per_transaction"}
# Memory one query or one maintenance task may take: each must stay below the instance's.
_PER_TASK_MEMORY = ("work_mem", "maintenance_work_mem", "autovacuum_work_mem", "logical_decoding_work_mem",
                    "temp_buffers")
SHARED_BUFFERS_MAX_SHARE = 0.5  # the rest: connections, work_mem, maintenance, the page cache


class InvalidSpec(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_spec(raw: dict | None) -> ClusterSpec:
    """The typed spec, or InvalidSpec with every problem found. Parsed once per distinct
    spec (each cluster's checks parse the same one every 2 s); the result is shared, so
    callers use model_copy() for a changed one and never set its fields."""
    return _parse_spec_text(json.dumps(raw or {}, sort_keys=True, separators=(",", ":"), default=str))


_BY_GENERATION: dict[str, tuple[int, ClusterSpec]] = {}
_BY_GENERATION_LOCK = threading.Lock()


def parse_cluster_spec(body: dict) -> ClusterSpec:
    """parse_spec() of a cluster object as the API server gave it, once per generation: the
    API server moves metadata.generation on every spec change (the status subresource keeps
    status writes from moving it), so a cluster's checks every 2 s need not serialize its
    spec again to find it parsed. An object without uid or generation is parsed as given."""
    meta = body.get("metadata") or {}
    uid, generation = meta.get("uid"), meta.get("generation")
    if not uid or generation is None:
        return parse_spec(dict(body.get("spec") or {}))
    known = _BY_GENERATION.get(uid)
    if known is not None and known[0] == generation:
        return known[1]
    spec = parse_spec(dict(body.get("spec") or {}))
    with _BY_GENERATION_LOCK:
        if len(_BY_GENERATION) >= 4096:  # deleted clusters' entries
            _BY_GENERATION.clear()
        _BY_GENERATION[uid] = (generation, spec)
    return spec


@functools.lru_cache(maxsize=512)
def _parse_spec_text(text: str) -> ClusterSpec:
    raw = json.loads(text)
    try:
        spec = ClusterSpec.model_validate(raw)
    except ValidationError as err:
        raise InvalidSpec([_pydantic_message(e) for e in err.errors()]) from None
    problems = semantic_problems(spec)
    if problems:
        raise InvalidSpec(problems)
    return spec


_PATTERN_MEANING = {
    CRON_PATTERN: "needs a cron schedule: five fields (minute hour day-of-month month day-of-week) or @hourly, @daily, ...",
    QUANTITY_PATTERN: "needs a quantity like '500m', '4', '16Gi' or '1Ti'",
    SQL_IDENTIFIER_PATTERN: "needs a lower-case SQL name: a letter or _, then letters, digits or _ (at most 63)",
    REPLICA_NAME_PATTERN: "needs a short name: lower-case letters, digits and '-', starting with a letter (at most 15)",
    CIDR_PATTERN: "needs a network like 10.0.0.0/8",
}


def _pydantic_message(error: dict) -> str:
    path = "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "string_pattern_mismatch":
        message = _PATTERN_MEANING.get(error["ctx"]["pattern"], message)
        message = f"{error['input']!r} {message}"
    return f"{path}: {message}"


def max_connections(spec: ClusterSpec) -> int:
    return int(spec.postgres.parameters.get("max_connections", "500"))


def parameter_problems(spec: ClusterSpec) -> list[str]:
    """Each parameter the instances' PostgreSQL would refuse (its own settings table for the
    major version: type, unit, range, enum values), and values that do not fit the memory."""
    parameters = spec.postgres.parameters
    major = spec.postgres.version
    if pgsettings.table(major) is None:
        problems = [f"{name}: {value!r} is not a whole number" for name, value in parameters.items()
                    if name in _INTEGER_PARAMETERS and not value.isdigit()]
    else:
        problems = pgsettings.parameter_problems(major, parameters)
    if problems:
        return [f"spec.postgres.parameters.{p}" for p in problems]
    roles = spec.postgres.resources
    memory, role = min((to_bytes(roles.primary.memory), "primary"), (to_bytes(roles.replica.memory), "replica"))
    limit = getattr(roles, role).memory
    shared = pgsettings.in_bytes(major, "shared_buffers", parameters.get("shared_buffers", "0"))
    if shared and shared > memory * SHARED_BUFFERS_MAX_SHARE:
        problems.append(f"spec.postgres.parameters.shared_buffers: {parameters['shared_buffers']} is more than half "
                        f"the {role}'s memory limit ({limit}); PostgreSQL would not start, or be killed "
                        f"when it runs out of memory; lower it or raise spec.postgres.resources.{role}.memory")
    for name in _PER_TASK_MEMORY:
        amount = pgsettings.in_bytes(major, name, parameters.get(name, "0"))
        if amount and amount >= memory:
            problems.append(f"spec.postgres.parameters.{name}: {parameters[name]} is not below the {role}'s "
                            f"memory limit ({limit})")
    return problems


def semantic_problems(spec: ClusterSpec) -> list[str]:
    problems = parameter_problems(spec)
    if problems:
        return problems
    if spec.failover.enabled and not spec.promotable_replicas:
        problems.append("spec.replicas: failover needs at least one replica with promotable: true")
    lease = spec.failover.lease
    if lease.duration_seconds - lease.fence_margin_seconds < 3:
        problems.append("spec.failover.lease: durationSeconds - fenceMarginSeconds must be at least 3 "
                        "(the agent renews every third of it)")
    if spec.postgres.synchronous.enabled and len(spec.promotable_replicas) < spec.postgres.synchronous.number:
        problems.append("spec.postgres.synchronous.number is larger than the number of promotable replicas")
    bouncer = spec.pgbouncer
    pools = bouncer.primary_pool_size + bouncer.read_only_pool_size + sum(r.pool_size for r in spec.replicas)
    needed = bouncer.instances * pools + RESERVED_CONNECTIONS
    if needed > max_connections(spec):
        problems.append(
            f"spec.pgbouncer: pools need {needed} connections ({bouncer.instances} instances x {pools} "
            f"+ {RESERVED_CONNECTIONS} reserved) but max_connections is {max_connections(spec)}"
        )
    for where, schedule in _schedules(spec):
        problem = cron_problem(schedule)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems + backup_problems(spec)


def backup_problems(spec: ClusterSpec) -> list[str]:
    problems = []
    if spec.backup is not None:
        names = [r.name for r in spec.backup.repositories]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            problems.append(f"spec.backup.repositories: names must be unique; repeated: {', '.join(repeated)}")
    recovery = spec.bootstrap.recovery if spec.bootstrap else None
    if recovery is not None:
        target = recovery.target
        chosen = [k for k, v in (("time", target.time), ("lsn", target.lsn), ("backupSet", target.backup_set)) if v]
        if len(chosen) > 1:
            problems.append(f"spec.bootstrap.recovery.target: one of time, lsn or backupSet, not {' and '.join(chosen)}")
    return problems


def recovery_overlap_problem(spec: ClusterSpec, namespace: str, name: str) -> str | None:
    """A cluster made from a backup must never archive into its source's stanza: the restored
    database has the source's system identifier, so pgBackRest would accept its WAL there."""
    recovery = spec.bootstrap.recovery if spec.bootstrap else None
    if recovery is None or spec.backup is None:
        return None
    source = recovery.source
    if source.cluster_name != name:
        return None
    source_place = (source.repository.s3.endpoint, source.repository.s3.bucket,
                    source.repository.path_for(source.namespace or namespace, source.cluster_name))
    for repo in spec.backup.repositories:
        if (repo.s3.endpoint, repo.s3.bucket, repo.path_for(namespace, name)) == source_place:
            return (f"spec.backup.repositories[{repo.name}]: it is where this cluster restores from "
                    f"(stanza {source.cluster_name}); a restored cluster would write into its source's backups")
    return None


def _schedules(spec: ClusterSpec) -> list[tuple[str, str]]:
    maintenance = spec.maintenance
    found = [(f"spec.maintenance.partitionedTables[{i}].schedule", t.schedule)
             for i, t in enumerate(maintenance.partitioned_tables)] + [
        (f"spec.maintenance.materializedViews[{i}].schedule", v.schedule)
        for i, v in enumerate(maintenance.materialized_views)]
    for i, repo in enumerate(spec.backup.repositories if spec.backup else []):
        for kind in ("full", "differential", "incremental"):
            if getattr(repo.schedules, kind):
                found.append((f"spec.backup.repositories[{i}].schedules.{kind}", getattr(repo.schedules, kind)))
    return found


def cron_problem(schedule: str) -> str | None:
    """None for a valid five-field cron schedule (or @hourly and friends), else why not."""
    if schedule.startswith("@"):
        return None
    fields = schedule.split()
    if len(fields) != 5:
        return f"{schedule!r} needs five fields (minute hour day-of-month month day-of-week)"
    for text, (name, low, high) in zip(fields, _CRON_RANGES):
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                return f"{schedule!r}: bad step {step!r} in the {name} field"
            if base == "*":
                continue
            bounds = base.split("-")
            if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
                return f"{schedule!r}: {part!r} is not a number, range or '*' in the {name} field"
            if any(not low <= int(b) <= high for b in bounds):
                return f"{schedule!r}: {part!r} is outside {low}-{high} in the {name} field"
    return None


def applied_record(spec: ClusterSpec) -> dict:
    """What later changes are checked against; stored in status after a successful apply."""
    return {
        "postgresVersion": spec.postgres.version,
        "storageSize": spec.postgres.storage.size,
        "storageClassName": spec.postgres.storage.storage_class_name or "",
    }


def unsafe_change_problems(applied: dict | None, spec: ClusterSpec) -> list[str]:
    """Changes that would destroy data or cannot be done in place; nothing is applied then."""
    if not applied:
        return []
    problems = []
    old_version = applied.get("postgresVersion")
    if old_version is not None and old_version != spec.postgres.version:
        problems.append(
            f"spec.postgres.version: the PostgreSQL major version cannot change in place "
            f"({old_version} -> {spec.postgres.version}); create a new cluster and migrate"
        )
    old_size = applied.get("storageSize")
    if old_size and parse_quantity(spec.postgres.storage.size) < parse_quantity(old_size):
        problems.append(
            f"spec.postgres.storage.size: storage cannot shrink ({old_size} -> {spec.postgres.storage.size})"
        )
    old_class = applied.get("storageClassName")
    if old_class is not None and old_class != (spec.postgres.storage.storage_class_name or ""):
        problems.append("spec.postgres.storage.storageClassName: existing volumes cannot move to another "
                        "storage class")
    return problems
