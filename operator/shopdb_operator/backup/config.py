"""pgbackrest.conf for the three places pgBackRest runs, from the spec alone.

- instance: every database pod. PostgreSQL's archive_command pushes WAL to every
  repository; the `pgbackrest server` sidecar lets a backup Job reach this instance's data
  over TLS with client certificates (backup from a standby needs the primary too).
- job: a backup Job, pgBackRest's "repository host": every instance is a TLS pg host,
  the promotable replicas first, so the first running standby found is one of them.
- recovery: a new cluster's first primary, restoring another cluster's stanza.

S3 credentials are never in these files: pgbackrest.sh reads them from the mounted Secrets
into pgBackRest's environment variables for the one command that needs them.
"""

from __future__ import annotations

import datetime

from ..api.quantity import to_bytes
from ..api.spec import BackupRepository, BackupSpec, Recovery
from ..builders.common import ClusterContext

PGBACKREST_PORT = 8432
CONFIG_DIR = "/etc/shopdb/pgbackrest"
TLS_DIR = "/etc/shopdb/pgbackrest-tls"
S3_DIR = "/etc/shopdb/s3"  # <S3_DIR>/<repoN or recovery>/{key,secret} and ca/<...>/ca.crt
LOCK_PATH = "/tmp/pgbackrest"
ARCHIVE_PUSH_ERROR = f"{LOCK_PATH}/archive-push.error"  # written by scripts/pgbackrest.sh
SPOOL_PATH = f"{LOCK_PATH}/spool"
ARCHIVE_IO_TIMEOUT = 15  # seconds; the instances' pgBackRest only (Jobs keep the default 60)
PG_SOCKET = "/var/run/postgresql"
INSTANCE_CONF, JOB_CONF, VERIFY_CONF, RECOVERY_CONF = "instance.conf", "job.conf", "verify.conf", "recovery.conf"
VERIFY_DIR = "/scratch"  # a restore-verification Job's scratch volume
RECOVERY_CREDENTIALS = "recovery"
BACKUP_CLIENT_CN = "shopdb-backup"  # the CN of the Jobs' client certificate


def stanza(ctx: ClusterContext) -> str:
    return ctx.name


def ca_file(which: str) -> str:
    return f"{S3_DIR}/ca/{which}/ca.crt"


def _repo_lines(index: int, repo: BackupRepository, path: str, ca_name: str) -> list[str]:
    s3 = repo.s3
    lines = [
        f"repo{index}-type=s3",
        f"repo{index}-path={path}",
        f"repo{index}-s3-endpoint={s3.endpoint}",
        f"repo{index}-storage-port={s3.port}",
        f"repo{index}-s3-bucket={s3.bucket}",
        f"repo{index}-s3-region={s3.region}",
        f"repo{index}-s3-uri-style={s3.uri_style.value}",
    ]
    # full backups expire by age (or count); their WAL goes with them (archive retention follows)
    if repo.retention.full_count is not None:
        lines += [f"repo{index}-retention-full-type=count", f"repo{index}-retention-full={repo.retention.full_count}"]
    else:
        lines += [f"repo{index}-retention-full-type=time", f"repo{index}-retention-full={repo.retention.full_days}"]
    if s3.ca is not None:
        lines.append(f"repo{index}-storage-ca-file={ca_file(ca_name)}")
    return lines


def _common(process_max: int) -> list[str]:
    return [
        f"process-max={process_max}",
        "compress-type=lz4",  # fast on few cores; WAL and backups are still much smaller
        "log-level-console=info",
        "log-level-stderr=warn",
        "log-level-file=off",  # the root file system is read-only: logs go to the container
        f"lock-path={LOCK_PATH}",
        "start-fast=y",
        "delta=y",
    ]


def _repositories(ctx: ClusterContext) -> list[str]:
    lines = []
    for index, repo in enumerate(ctx.spec.backup.repositories, start=1):
        lines += _repo_lines(index, repo, repo.path_for(ctx.namespace, ctx.name), f"repo{index}")
    return lines


def _render(sections: list[tuple[str, list[str]]]) -> str:
    out = ["# Rendered by shopdb-operator."]
    for name, lines in sections:
        out += ["", f"[{name}]", *lines]
    return "\n".join(out) + "\n"


def _local_pg(pgdata: str) -> list[str]:
    return [f"pg1-path={pgdata}", f"pg1-socket-path={PG_SOCKET}", "pg1-port=5432"]


def archive_settings(ctx: ClusterContext, scripts_dir: str) -> dict[str, str]:
    """WAL to every repository from whichever instance is primary (a standby does not archive
    with archive_mode=on; a promoted one starts with its timeline history file)."""
    if ctx.spec.backup is None:
        return {}
    return {
        "archive_mode": "on",
        "archive_command": f"bash {scripts_dir}/pgbackrest.sh instance --stanza={stanza(ctx)} archive-push %p",
        "archive_timeout": f"{ctx.spec.backup.archive_timeout_seconds}s",
    }


def instance_conf(ctx: ClusterContext, pgdata: str) -> str:
    backup = ctx.spec.backup
    return _render([
        ("global", [
            *_repositories(ctx), *_common(backup.process_max),
            # Asynchronous archive-push: a worker pushes ready WAL to each repository on its
            # own, so a failing one does not hold the others back. The worker is orphaned on
            # purpose; the pod shares one PID namespace (see builders.postgres) so that the
            # pause process reaps it, not the postmaster (which takes an unknown child's error
            # exit for a crashed backend). The spool holds only status files: on the pod's
            # emptyDir, so a restored or rewound instance never trusts a stale ".ok".
            "archive-async=y",
            f"spool-path={SPOOL_PATH}",
            # A repository that cannot be reached (or whose certificate is not trusted) is
            # retried for io-timeout (a TLS handshake, then the HTTP request: twice at most);
            # PostgreSQL's archive-push waits archive-timeout for the worker. Waiting out every
            # repository's retries lets the worker's error, not a bare timeout, reach the
            # server log and status (the default 60 s for both hid a wrong CA that way).
            f"io-timeout={ARCHIVE_IO_TIMEOUT}",
            f"archive-timeout={2 * ARCHIVE_IO_TIMEOUT * len(backup.repositories) + 30}",
            f"archive-push-queue-max={to_bytes(backup.archive_push_queue_max)}",
        ]),
        ("global:server", [
            "tls-server-address=*",
            f"tls-server-port={PGBACKREST_PORT}",
            f"tls-server-cert-file={TLS_DIR}/tls.crt",
            f"tls-server-key-file={TLS_DIR}/tls.key",
            f"tls-server-ca-file={TLS_DIR}/ca.crt",
            f"tls-server-auth={BACKUP_CLIENT_CN}={stanza(ctx)}",
        ]),
        (stanza(ctx), _local_pg(pgdata)),
    ])


def pg_host(ctx: ClusterContext, instance_name: str) -> str:
    """The pod's name through the headless Service; its certificate's SAN is *.<service>.<ns>.svc."""
    return f"{instance_name}-0.{instance_service_domain(ctx)}"


def instance_service_domain(ctx: ClusterContext) -> str:
    return f"{ctx.child('instances')}.{ctx.namespace}.svc"


def backup_hosts(ctx: ClusterContext) -> list[str]:
    """Instances in the order pgBackRest tries them: promotable ones first, so the standby a
    backup runs from is a pool replica when one runs; analytics last."""
    ordered = sorted(ctx.topology.instances, key=lambda i: (not i.promotable, i.name))
    return [i.name for i in ordered]


def job_conf(ctx: ClusterContext, pgdata: str) -> str:
    hosts = []
    for index, name in enumerate(backup_hosts(ctx), start=1):
        hosts += [
            f"pg{index}-host={pg_host(ctx, name)}",
            f"pg{index}-host-type=tls",
            f"pg{index}-host-port={PGBACKREST_PORT}",
            f"pg{index}-host-ca-file={TLS_DIR}/ca.crt",
            f"pg{index}-host-cert-file={TLS_DIR}/client.crt",
            f"pg{index}-host-key-file={TLS_DIR}/client.key",
            f"pg{index}-path={pgdata}",
            f"pg{index}-socket-path={PG_SOCKET}",
            f"pg{index}-port=5432",
        ]
    return _render([
        ("global", [*_repositories(ctx), *_common(ctx.spec.backup.process_max), "backup-standby=y"]),
        (stanza(ctx), hosts),
    ])


def verify_conf(ctx: ClusterContext) -> str:
    """A restore-verification Job restores into its scratch volume: a local pg1, no hosts."""
    return _render([
        ("global", [*_repositories(ctx), *_common(ctx.spec.backup.process_max)]),
        (stanza(ctx), [f"pg1-path={VERIFY_DIR}/pgdata"]),
    ])


def recovery_conf(ctx: ClusterContext, recovery: Recovery, pgdata: str) -> str:
    """The source cluster's repository as repo1, read-only use: restore and archive-get."""
    source = recovery.source
    path = source.repository.path_for(source.namespace or ctx.namespace, source.cluster_name)
    lines = _repo_lines(1, source.repository, path, RECOVERY_CREDENTIALS)
    process_max = ctx.spec.backup.process_max if ctx.spec.backup else BackupSpec.model_fields["process_max"].default
    return _render([
        ("global", [*lines, *_common(process_max)]),
        (source.cluster_name, _local_pg(pgdata)),
    ])


def pgbackrest_time(rfc3339: str) -> str:
    """'2026-05-01T10:00:00.123456Z' -> '2026-05-01 10:00:00.123+00', the form pgBackRest
    takes. Milliseconds at most: truncated, so the target never moves past the given moment."""
    moment = datetime.datetime.fromisoformat(rfc3339.replace(" ", "T")).astimezone(datetime.timezone.utc)
    millis = f".{moment.microsecond // 1000:03d}" if moment.microsecond else ""
    return moment.strftime("%Y-%m-%d %H:%M:%S") + millis + "+00"


def restore_options(recovery: Recovery) -> list[str]:
    """pgbackrest restore's target options; recovery promotes once it gets there."""
    target = recovery.target
    if target.time:
        return ["--type=time", f"--target={pgbackrest_time(target.time)}", "--target-action=promote"]
    if target.lsn:
        return ["--type=lsn", f"--target={target.lsn}", "--target-action=promote"]
    if target.backup_set:
        return [f"--set={target.backup_set}", "--type=immediate", "--target-action=promote"]
    return ["--type=default"]
