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
                               container_security_context, empty_dir, labels, metadata, pod_security_context)
from ..builders.cronjobs import bounded_name
from . import volumes
from .config import CONFIG_DIR, JOB_CONF

BACKUP = "backup"  # the component label of backup pods (the instances' NetworkPolicy lets them in)
LABEL_BACKUP_TYPE = "shopdb.io/backup-type"
LABEL_BACKUP_REPOS = "shopdb.io/backup-repos"  # "1", "1-2": the repository indexes, in order
TYPES = {"full": "full", "differential": "diff", "incremental": "incr"}  # schedule field -> pgBackRest type
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
    pod_labels = labels(ctx, BACKUP, **{LABEL_BACKUP_TYPE: backup_type,
                                        LABEL_BACKUP_REPOS: "-".join(map(str, repo_indexes))})
    mounts, vols = volumes.job_volumes(ctx)
    container = {
        "name": "pgbackrest",
        # the instances' image: pgBackRest needs the same version at both ends of its TLS link
        "image": ctx.spec.postgres.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["bash", f"{SCRIPTS_MOUNT}/backup.sh", backup_type, *map(str, repo_indexes)],
        "env": [
            {"name": "SHOPDB_STANZA", "value": ctx.name},
            {"name": "SHOPDB_PGBACKREST_CONF", "value": f"{CONFIG_DIR}/{JOB_CONF}"},
            {"name": "HOME", "value": "/tmp"},
        ],
        "resources": container_resources(ctx.spec.backup.resources),
        "securityContext": container_security_context(),
        "volumeMounts": [*mounts, {"name": "scripts", "mountPath": SCRIPTS_MOUNT, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
        # the last lines of the log (the summary or the error) become the termination message
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "backoffLimit": 1,
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
                "volumes": [*vols, config_map_volume("scripts", ctx.child("scripts"), mode=0o555), empty_dir("tmp")],
            },
        },
    }


def backup_cronjob(ctx: ClusterContext, repo: BackupRepository, index: int, backup_type: str, schedule: str) -> dict:
    spec = job_spec(ctx, backup_type, [index])
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata(ctx, cronjob_name(ctx, repo, backup_type), BACKUP),
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
    return [backup_cronjob(ctx, repo, index, backup_type, schedule)
            for index, repo in enumerate(ctx.spec.backup.repositories, start=1)
            for backup_type, schedule in schedules(repo, index).items()]


def on_demand_job(ctx: ClusterContext, name: str, backup_type: str, repo_indexes: list[int]) -> dict:
    spec = job_spec(ctx, backup_type, repo_indexes)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(ctx, name, BACKUP, **spec["template"]["metadata"]["labels"]),
        "spec": spec,
    }
