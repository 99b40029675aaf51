"""Backup Jobs: a CronJob per repository and scheduled type, and the on-demand Job (the
annotation, the CLI, a new cluster's first backup) built the same way.

A backup Job is pgBackRest's repository host: it reaches the instances' `pgbackrest
server` sidecars over TLS (client certificate) and the repositories over S3. It backs up
from a streaming replica; when none runs, from the primary (backup.sh retries without
backup-standby and says so).
"""

from __future__ import annotations

from ..api.spec import DEFAULT_FIRST_FULL_SCHEDULE, DEFAULT_OTHER_FULL_SCHEDULE, BackupRepository
from ..builders.common import (POSTGRES_UID, ClusterContext, config_map_volume, container_resources,
                               container_security_context, empty_dir, labels, metadata, pod_security_context,
                               scripts_config_map_name)
from ..builders.cronjobs import bounded_name
from . import volumes
from .config import VERIFY_DIR

BACKUP = "backup"  # the component label of backup pods (the instances' NetworkPolicy lets them in)
LABEL_BACKUP_TYPE = "shopdb.io/backup-type"
LABEL_BACKUP_REPOS = "shopdb.io/backup-repos"  # "1", "1-2": the repository indexes, in order
VERIFY = "verify"  # the type label of a restore-verification Job
SCRIPTS_MOUNT = "/etc/shopdb/scripts"


def full_schedule(repo: BackupRepository, index: int) -> str:
    if repo.schedules.full:
        return repo.schedules.full
    return DEFAULT_FIRST_FULL_SCHEDULE if index == 1 else DEFAULT_OTHER_FULL_SCHEDULE


def schedules(repo: BackupRepository, index: int) -> dict[str, str]:
    """pgBackRest type -> cron schedule, for the types this repository schedules."""
    found = {"full": full_schedule(repo, index)}
    if repo.schedules.differential:
        found["diff"] = repo.schedules.differential
    if repo.schedules.incremental:
        found["incr"] = repo.schedules.incremental
    return found


def cronjob_name(ctx: ClusterContext, repo: BackupRepository, backup_type: str) -> str:
    return bounded_name(ctx.child(f"backup-{repo.name}-{backup_type}"))


def job_spec(ctx: ClusterContext, backup_type: str, repo_indexes: list[int]) -> dict:
    """The Job spec of one backup run: `backup_type` to each repository in turn."""
    return _pgbackrest_job(ctx, backup_type, repo_indexes, ["backup.sh", backup_type, *map(str, repo_indexes)])


def verify_job_spec(ctx: ClusterContext, repo_index: int) -> dict:
    """The Job spec of one restore verification: the latest backup of one repository restored
    into a scratch volume as large as an instance's, started and checked."""
    storage = ctx.spec.postgres.storage
    claim: dict = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage.size}}}
    if storage.storage_class_name:
        claim["storageClassName"] = storage.storage_class_name
    scratch = {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
        "metadata": {"labels": labels(ctx, BACKUP)}, "spec": claim}}}
    return _pgbackrest_job(ctx, VERIFY, [repo_index], ["verify.sh", str(repo_index)],
                           [scratch], [{"name": "scratch", "mountPath": VERIFY_DIR}])


def _pgbackrest_job(ctx: ClusterContext, job_type: str, repo_indexes: list[int], script: list[str],
                    extra_volumes: list[dict] = (), extra_mounts: list[dict] = ()) -> dict:
    pod_labels = labels(ctx, BACKUP, **{LABEL_BACKUP_TYPE: job_type,
                                        LABEL_BACKUP_REPOS: "-".join(map(str, repo_indexes))})
    mounts, vols = volumes.job_volumes(ctx)
    container = {
        "name": "pgbackrest",
        # the instances' image: pgBackRest needs the same version at both ends of its TLS link
        "image": ctx.spec.postgres.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["bash", f"{SCRIPTS_MOUNT}/{script[0]}", *script[1:]],
        "env": [
            {"name": "SHOPDB_STANZA", "value": ctx.name},
            {"name": "HOME", "value": "/tmp"},
        ],
        "resources": container_resources(ctx.spec.backup.resources),
        "securityContext": container_security_context(),
        "volumeMounts": [*mounts, {"name": "scripts", "mountPath": SCRIPTS_MOUNT, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}, *extra_mounts],
        # the last lines of the log (the summary or the error) become the termination message
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "backoffLimit": 1 if job_type != VERIFY else 0,
        "activeDeadlineSeconds": 12 * 3600,
        "ttlSecondsAfterFinished": 7 * 24 * 3600,
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": pod_security_context(POSTGRES_UID),
                "containers": [container],
                "volumes": [*vols, config_map_volume("scripts", scripts_config_map_name(ctx), mode=0o555),
                            empty_dir("tmp"), *extra_volumes],
            },
        },
    }


def backup_cronjob(ctx: ClusterContext, repo: BackupRepository, index: int, backup_type: str, schedule: str) -> dict:
    return _cronjob(ctx, cronjob_name(ctx, repo, backup_type), schedule, job_spec(ctx, backup_type, [index]))


def verify_repository(ctx: ClusterContext) -> tuple[int, BackupRepository]:
    """(index, repository) that restore verification reads: the named one, or the first."""
    repos = ctx.spec.backup.repositories
    wanted = ctx.spec.backup.verify.repository
    return next(((i, r) for i, r in enumerate(repos, start=1) if r.name == wanted), (1, repos[0]))


def verify_cronjob(ctx: ClusterContext) -> dict:
    index, repo = verify_repository(ctx)
    return _cronjob(ctx, cronjob_name(ctx, repo, VERIFY), ctx.spec.backup.verify.schedule,
                    verify_job_spec(ctx, index))


def _cronjob(ctx: ClusterContext, name: str, schedule: str, spec: dict) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata(ctx, name, BACKUP),
        "spec": {
            "schedule": schedule,
            "timeZone": "Etc/UTC",
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"metadata": {"labels": spec["template"]["metadata"]["labels"]}, "spec": spec},
        },
    }


def backup_cronjobs(ctx: ClusterContext) -> list[dict]:
    if ctx.spec.backup is None:
        return []
    cronjobs = [backup_cronjob(ctx, repo, index, backup_type, schedule)
                for index, repo in enumerate(ctx.spec.backup.repositories, start=1)
                for backup_type, schedule in schedules(repo, index).items()]
    if ctx.spec.backup.verify.enabled:
        cronjobs.append(verify_cronjob(ctx))
    return cronjobs


def on_demand_job(ctx: ClusterContext, name: str, backup_type: str, repo_indexes: list[int]) -> dict:
    spec = job_spec(ctx, backup_type, repo_indexes) if backup_type != VERIFY else verify_job_spec(ctx, repo_indexes[0])
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(ctx, name, BACKUP, **spec["template"]["metadata"]["labels"]),
        "spec": spec,
    }
