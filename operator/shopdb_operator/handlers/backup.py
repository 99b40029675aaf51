"""Backups, as the drift timer sees them every 15 s: start the Jobs that were asked for (the
annotation, a new cluster's first backup), read what finished Jobs report, and ask the
primary whether WAL archiving works. Kept free of kopf: the timer posts the Events."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

from .. import GROUP, KIND, VERSION
from ..backup import config as backup_config
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
BACKUP_VERIFIED = "BackupVerified"
ANNOTATION_VERIFY_NOW = f"{GROUP}/verify-now"  # a repository name, or "true" for the configured one
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


def request_backup(kube: Kube, ctx: ClusterContext, backup_type: str, repositories: list[str] | None,
                   name: str | None = None) -> str:
    """Start a backup Job now (unless one of that name exists); its name. Raises ValueError
    for an unknown type or repository."""
    if backup_type not in BACKUP_TYPES:
        raise ValueError(f"unknown backup type {backup_type!r}: one of {', '.join(BACKUP_TYPES)}")
    names = [r.name for r in ctx.spec.backup.repositories]
    unknown = [r for r in repositories or [] if r not in names]
    if unknown:
        raise ValueError(f"no repository {', '.join(unknown)} (repositories: {', '.join(names)})")
    indexes = [i for i, n in enumerate(names, start=1) if not repositories or n in repositories]
    name = name or job_name(ctx, backup_type, _now())
    kube.create(backup_jobs.on_demand_job(ctx, name, backup_type, indexes))
    return name


def request_verification(kube: Kube, ctx: ClusterContext, repository: str | None) -> str:
    """Start a restore verification of one repository now (the configured one when None)."""
    names = [r.name for r in ctx.spec.backup.repositories]
    if repository is not None and repository not in names:
        raise ValueError(f"no repository {repository} (repositories: {', '.join(names)})")
    index = names.index(repository) + 1 if repository else backup_jobs.verify_repository(ctx)[0]
    name = job_name(ctx, backup_jobs.VERIFY, _now())
    kube.create(backup_jobs.on_demand_job(ctx, name, backup_jobs.VERIFY, [index]))
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


def _job_type(job: dict) -> str:
    labels = (job.get("spec") or {}).get("template", {}).get("metadata", {}).get("labels") or {}
    return labels.get(backup_jobs.LABEL_BACKUP_TYPE, "")


def _read_jobs(kube: Kube, ctx: ClusterContext, recorded: dict, out: Observed) -> None:
    """The newest finished backup Job and the newest finished verification, each read once."""
    jobs = kube.cached_list("batch/v1", "Job", ctx.namespace, {LABEL_CLUSTER: ctx.name, COMPONENT: backup_jobs.BACKUP})
    finished = [(f[1], j, f[0]) for j in jobs if (f := _finished(j))]
    backups = [item for item in finished if _job_type(item[1]) != backup_jobs.VERIFY]
    verifications = [item for item in finished if _job_type(item[1]) == backup_jobs.VERIFY]
    if backups:
        _read_backup(kube, ctx, recorded, out, *max(backups, key=lambda item: item[0]))
    if verifications:
        _read_verification(kube, ctx, recorded, out, *max(verifications, key=lambda item: item[0]))


def _read_backup(kube: Kube, ctx: ClusterContext, recorded: dict, out: Observed, at: str, job: dict,
                 outcome: str) -> None:
    """What the repositories hold, or why the backup failed."""
    name = job["metadata"]["name"]
    if name == recorded.get("lastJob"):
        return
    text = _job_log(kube, ctx, name)
    repositories = dict(recorded.get("repositories") or {})
    info = backup_status.parse_info(text)
    if info is not None:
        for repo, held in backup_status.repositories_from_info(info, ctx.spec.backup).items():
            repositories[repo] = {**(repositories.get(repo) or {}), **held}
    backup_type = _job_type(job)
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


def _read_verification(kube: Kube, ctx: ClusterContext, recorded: dict, out: Observed, at: str, job: dict,
                       outcome: str) -> None:
    """Whether the latest backup restored, started and passed pg_amcheck."""
    name = job["metadata"]["name"]
    if name == (recorded.get("lastVerifiedBackup") or {}).get("job"):
        return
    text = _job_log(kube, ctx, name)
    result = backup_status.parse_verification(text) or {}
    repos = _repo_names(ctx, job)
    ok = outcome == "Complete" and bool(result.get("ok"))
    reason = result.get("reason") or ("" if ok else backup_status.failure_reason(text))
    out.status["lastVerifiedBackup"] = {
        "job": name, "at": at, "repository": repos[0] if repos else None, "label": result.get("label") or None,
        "result": "Succeeded" if ok else "Failed", "durationSeconds": result.get("seconds"),
        "reason": reason or None}
    if ok:
        message = f"backup {result.get('label')} of {repos[0] if repos else '?'} restored and checked in {result.get('seconds')}s"
        out.conditions.append((BACKUP_VERIFIED, True, "RestoreVerified", message))
        out.events.append(("Normal", "RestoreVerified", message))
    else:
        out.conditions.append((BACKUP_VERIFIED, False, "RestoreVerificationFailed", f"{name}: {reason}"))
        out.events.append(("Warning", "RestoreVerificationFailed", f"{name}: {reason}"))


def _archiving(kube: Kube, ctx: ClusterContext, conditions: list[dict], out: Observed) -> None:
    primary = database_pods(kube, ctx.namespace, ctx.name).get(ctx.topology.primary)
    address = pod_address(primary)
    password = secret_password(kube, ctx.namespace, SUPERUSER_CREDENTIAL.secret_name(ctx))
    row = None
    if address is not None and password:
        try:
            host, port = address
            with postgres.connect(host=host, port=port, user="postgres", password=password,
                                  dbname="postgres", connect_timeout=3, statement_timeout_ms=3000) as conn:
                row = postgres.archiver(conn, backup_config.ARCHIVE_PUSH_ERROR)
        except postgres.Error as err:
            log.info("pg_stat_archiver of %s: %s", ctx.topology.primary, type(err).__name__)
    names = [repo.name for repo in ctx.spec.backup.repositories]
    ok, reason, message, fields = backup_status.archiving_state(row, _now(), names)
    out.status["archiving"] = fields if row is not None else None
    if row is None:
        return  # unknown: the failover monitor reports an unreachable primary
    out.conditions.append((CONTINUOUS_ARCHIVING, ok, reason, message))
    previous = condition(conditions, CONTINUOUS_ARCHIVING)
    if not ok and (previous is None or previous.get("status") != "False"):
        out.events.append(("Warning", "ArchivingFailed", message))


def observe(kube: Kube, ctx: ClusterContext, current: dict, ready_for_first_backup: bool) -> Observed:
    """`ready_for_first_backup`: every instance is ready (so it runs off a replica), or the
    primary has been for a while (a replica that never comes must not delay it forever)."""
    out = Observed()
    if ctx.spec.backup is None:
        return out
    meta = current.get("metadata") or {}
    status = current.get("status") or {}
    recorded = status.get("backup") or {}
    annotations = meta.get("annotations") or {}
    requested = annotations.get(ANNOTATION_BACKUP_NOW)
    verify = annotations.get(ANNOTATION_VERIFY_NOW)
    if verify is not None:
        kube.merge_patch(f"{GROUP}/{VERSION}", KIND, ctx.namespace, ctx.name,
                         {"metadata": {"annotations": {ANNOTATION_VERIFY_NOW: None}}})
        try:
            name = request_verification(kube, ctx, None if verify in ("", "true") else verify)
            out.events.append(("Normal", "RestoreVerificationStarted", f"restore verification {name} requested"))
        except ValueError as err:
            out.events.append(("Warning", "RestoreVerificationRefused", str(err)))
    if requested is not None:
        kube.merge_patch(f"{GROUP}/{VERSION}", KIND, ctx.namespace, ctx.name, {"metadata": {"annotations": {
            ANNOTATION_BACKUP_NOW: None, ANNOTATION_BACKUP_REPOSITORY: None}}})
        repository = annotations.get(ANNOTATION_BACKUP_REPOSITORY)
        try:
            name = request_backup(kube, ctx, requested, [repository] if repository else None)
            out.events.append(("Normal", "BackupStarted", f"{requested} backup {name} requested"))
        except ValueError as err:
            out.events.append(("Warning", "BackupRefused", str(err)))
    if not recorded.get("initialBackupJob") and ready_for_first_backup:
        # a new cluster is backed up at once: the stanza exists and WAL archiving starts.
        # One name, so that a pass that fails later never starts a second one.
        name = request_backup(kube, ctx, "full", None, name=ctx.child("backup-first"))
        out.status["initialBackupJob"] = name
        out.events.append(("Normal", "BackupStarted", f"first full backup {name}"))
    for step in (lambda: _read_jobs(kube, ctx, recorded, out),
                 lambda: _archiving(kube, ctx, status.get("conditions") or [], out)):
        try:
            step()
        except (KubeError, postgres.Error, OSError) as err:  # the next pass tries again
            log.warning("%s/%s: reading backup state: %s", ctx.namespace, ctx.name, err)
    return out
