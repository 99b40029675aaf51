"""Backups, as the drift timer sees them every 15 s: start the Jobs that were asked for (the
annotation, a new cluster's first backup), read what finished Jobs report, and ask the
primary whether WAL archiving works. Kept free of kopf: the timer posts the Events."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

from .. import GROUP, KIND, VERSION
from ..backup import jobs as backup_jobs
from ..backup import status as backup_status
from ..builders.common import COMPONENT, LABEL_CLUSTER, ClusterContext
from ..builders.secrets import SUPERUSER_CREDENTIAL
from ..failover.adapters import database_pods, pod_address, secret_password
from ..kube.client import Kube, KubeError
from .. import postgres
from ..status import condition

log = logging.getLogger(__name__)

ANNOTATION_BACKUP_NOW = f"{GROUP}/backup-now"  # full | diff | incr
ANNOTATION_BACKUP_REPOSITORY = f"{GROUP}/backup-repository"  # a repository name; every one when absent
CONTINUOUS_ARCHIVING = "ContinuousArchiving"
LAST_BACKUP_SUCCEEDED = "LastBackupSucceeded"
BACKUP_TYPES = ("full", "diff", "incr")


@dataclass
class Observed:
    """What one pass found: status fields, conditions to set, Events to post."""

    status: dict = field(default_factory=dict)
    conditions: list[tuple[str, bool, str, str]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def job_name(ctx: ClusterContext, backup_type: str, now: datetime.datetime) -> str:
    return ctx.child(f"backup-{backup_type}-{now.strftime('%Y%m%d%H%M%S')}")


def request_backup(kube: Kube, ctx: ClusterContext, backup_type: str, repositories: list[str] | None) -> str:
    """Start a backup Job now; its name. Raises ValueError for an unknown type or repository."""
    if backup_type not in BACKUP_TYPES:
        raise ValueError(f"unknown backup type {backup_type!r}: one of {', '.join(BACKUP_TYPES)}")
    names = [r.name for r in ctx.spec.backup.repositories]
    unknown = [r for r in repositories or [] if r not in names]
    if unknown:
        raise ValueError(f"no repository {', '.join(unknown)} (repositories: {', '.join(names)})")
    indexes = [i for i, n in enumerate(names, start=1) if not repositories or n in repositories]
    name = job_name(ctx, backup_type, _now())
    kube.create(backup_jobs.on_demand_job(ctx, name, backup_type, indexes))
    return name


def _finished(job: dict) -> tuple[str, str] | None:
    """(Complete|Failed, when) for a finished Job."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return cond["type"], cond.get("lastTransitionTime") or ""
    return None


def _job_log(kube: Kube, ctx: ClusterContext, job: str) -> str:
    pods = kube.list("v1", "Pod", ctx.namespace, {"job-name": job})
    pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
    for pod in reversed(pods):
        try:
            return kube.log(ctx.namespace, pod["metadata"]["name"], "pgbackrest")
        except KubeError as err:
            log.info("cannot read the log of %s: %s", pod["metadata"]["name"], err)
    return ""


def _repo_names(ctx: ClusterContext, job: dict) -> list[str]:
    labels = (job.get("spec") or {}).get("template", {}).get("metadata", {}).get("labels") or {}
    names = [r.name for r in ctx.spec.backup.repositories]
    indexes = [int(i) for i in (labels.get(backup_jobs.LABEL_BACKUP_REPOS) or "").split("-") if i.isdigit()]
    return [names[i - 1] for i in indexes if 0 < i <= len(names)]


def _read_jobs(kube: Kube, ctx: ClusterContext, recorded: dict, out: Observed) -> None:
    """The newest finished backup Job, read once: what the repositories hold, or why it failed."""
    jobs = kube.list("batch/v1", "Job", ctx.namespace, {LABEL_CLUSTER: ctx.name, COMPONENT: backup_jobs.BACKUP})
    finished = [(f[1], j, f[0]) for j in jobs if (f := _finished(j))]
    if not finished:
        return
    at, job, outcome = max(finished, key=lambda item: item[0])
    name = job["metadata"]["name"]
    if name == recorded.get("lastJob"):
        return
    text = _job_log(kube, ctx, name)
    repositories = dict(recorded.get("repositories") or {})
    info = backup_status.parse_info(text)
    if info is not None:
        for repo, held in backup_status.repositories_from_info(info, ctx.spec.backup).items():
            repositories[repo] = {**(repositories.get(repo) or {}), **held}
    backup_type = ((job.get("spec") or {}).get("template", {}).get("metadata", {}).get("labels") or {}).get(
        backup_jobs.LABEL_BACKUP_TYPE, "")
    if outcome == "Failed":
        reason = backup_status.failure_reason(text)
        for repo in _repo_names(ctx, job):
            repositories[repo] = {**(repositories.get(repo) or {}),
                                  "lastFailedBackup": {"at": at, "job": name, "type": backup_type, "reason": reason}}
        out.conditions.append((LAST_BACKUP_SUCCEEDED, False, "BackupFailed", f"{name}: {reason}"))
        out.events.append(("Warning", "BackupFailed", f"{backup_type} backup {name} failed: {reason}"))
    else:
        out.conditions.append((LAST_BACKUP_SUCCEEDED, True, "BackupSucceeded", f"{backup_type} backup {name} completed"))
        out.events.append(("Normal", "BackupSucceeded", f"{backup_type} backup {name} completed"))
    out.status["repositories"] = repositories
    out.status["lastJob"] = name


def _archiving(kube: Kube, ctx: ClusterContext, conditions: list[dict], out: Observed) -> None:
    primary = database_pods(kube, ctx.namespace, ctx.name).get(ctx.topology.primary)
    address = pod_address(primary)
    password = secret_password(kube, ctx.namespace, SUPERUSER_CREDENTIAL.secret_name(ctx))
    row = None
    if address is not None and password:
        try:
            with postgres.connect(host=address.host, port=address.port, user="postgres", password=password,
                                  dbname="postgres", connect_timeout=3, statement_timeout_ms=3000) as conn:
                row = postgres.archiver(conn)
        except postgres.Error as err:
            log.info("pg_stat_archiver of %s: %s", ctx.topology.primary, type(err).__name__)
    ok, reason, message, fields = backup_status.archiving_state(row, _now())
    out.status["archiving"] = fields if row is not None else None
    if row is None:
        return  # unknown: the failover monitor reports an unreachable primary
    out.conditions.append((CONTINUOUS_ARCHIVING, ok, reason, message))
    previous = condition(conditions, CONTINUOUS_ARCHIVING)
    if not ok and (previous is None or previous.get("status") != "False"):
        out.events.append(("Warning", "ArchivingFailed", message))


def observe(kube: Kube, ctx: ClusterContext, current: dict, primary_ready: bool) -> Observed:
    out = Observed()
    if ctx.spec.backup is None:
        return out
    meta = current.get("metadata") or {}
    status = current.get("status") or {}
    recorded = status.get("backup") or {}
    annotations = meta.get("annotations") or {}
    requested = annotations.get(ANNOTATION_BACKUP_NOW)
    if requested is not None:
        kube.merge_patch(f"{GROUP}/{VERSION}", KIND, ctx.namespace, ctx.name, {"metadata": {"annotations": {
            ANNOTATION_BACKUP_NOW: None, ANNOTATION_BACKUP_REPOSITORY: None}}})
        repository = annotations.get(ANNOTATION_BACKUP_REPOSITORY)
        try:
            name = request_backup(kube, ctx, requested, [repository] if repository else None)
            out.events.append(("Normal", "BackupStarted", f"{requested} backup {name} requested"))
        except ValueError as err:
            out.events.append(("Warning", "BackupRefused", str(err)))
    if not recorded.get("initialBackupJob") and primary_ready:
        # a new cluster is backed up at once: the stanza exists and WAL archiving starts
        name = request_backup(kube, ctx, "full", None)
        out.status["initialBackupJob"] = name
        out.events.append(("Normal", "BackupStarted", f"first full backup {name}"))
    _read_jobs(kube, ctx, recorded, out)
    _archiving(kube, ctx, status.get("conditions") or [], out)
    return out
