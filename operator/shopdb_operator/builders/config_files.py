"""The configuration files the database and PgBouncer containers read.

Pure functions of the spec: no I/O, no clock, no randomness. Listening address, port,
socket directory, hba_file and the standby connection settings are not here: instance.sh
passes them on the postgres command line from the pod's environment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..api.quantity import to_bytes, to_millicores
from ..api.spec import ClusterSpec, ComputeResources

REPLICATION_USER = "streaming_replica"
SUPERUSER = "postgres"
DEFAULT_MAX_CONNECTIONS = 500
PGBOUNCER_ADMIN_USER = "pgbouncer_admin"
PGBOUNCER_RUN_DIR = "/var/run/pgbouncer"

_KB = 1024
_MB = 1024 * _KB
_GB = 1024 * _MB


def _size(value: int) -> str:
    """A memory or WAL size in the largest unit PostgreSQL accepts that keeps it exact."""
    kilobytes = max(value // _KB, 64)
    for unit, factor in (("GB", 1024 * 1024), ("MB", 1024)):
        if kilobytes % factor == 0:
            return f"{kilobytes // factor}{unit}"
    return f"{kilobytes}kB"


def _memory_settings(memory: int, smallest_memory: int, max_connections: int, analytics: bool) -> dict[str, str]:
    """`memory` is this instance's role's; shared_buffers, which only a restart changes, comes
    from the smaller role's, so that a failover (which swaps the roles' resources in place)
    never needs a restart and fits either role."""
    shared_buffers = smallest_memory // 4
    # Each connection may use a few work_mem-sized sort/hash nodes at once.
    work_mem = max((memory - shared_buffers) // (max_connections * 3), 4 * _MB)
    if analytics:
        # Few, long, large queries: let them sort in memory.
        work_mem = max(work_mem * 4, 16 * _MB)
    work_mem -= work_mem % _MB
    return {
        "shared_buffers": _size(shared_buffers),
        "effective_cache_size": _size(memory * 3 // 4),
        "work_mem": _size(work_mem),
        "maintenance_work_mem": _size(min(memory // 16, 2 * _GB)),
    }


def _cpu_settings(millicores: int, most_millicores: int) -> dict[str, str]:
    """max_worker_processes needs a restart, and a standby needs at least the primary's:
    it comes from the larger role's cores, the rest (reloadable) from this instance's."""
    cores = max(millicores // 1000, 1)
    per_gather = max(min(cores // 2, 4), 1)
    return {
        "max_worker_processes": str(max(most_millicores // 1000, 8)),
        "max_parallel_workers": str(cores),
        "max_parallel_workers_per_gather": str(per_gather),
        "max_parallel_maintenance_workers": str(per_gather),
    }


def _wal_settings(spec: ClusterSpec) -> dict[str, str]:
    storage = to_bytes(spec.postgres.storage.size)
    # Every instance streams, plus pg_basebackup (2 senders) and a rejoining pg_rewind.
    senders = 2 * (len(spec.replicas) + 1) + 4
    return {
        "wal_level": "replica",
        "max_wal_senders": str(senders),
        "max_replication_slots": str(senders),
        # pg_rewind needs hint-bit changes WAL-logged; initdb also enables checksums.
        "wal_log_hints": "on",
        "hot_standby": "on",
        "max_wal_size": _size(min(max(storage // 32, 1 * _GB), 64 * _GB)),
        "min_wal_size": _size(min(max(storage // 256, 80 * _MB), 4 * _GB)),
        # A slot of a lost replica must not fill the primary's volume.
        "max_slot_wal_keep_size": _size(max(storage // 8, 1 * _GB)),
        # Lets a replica that rejoins after a failover find the WAL it still needs.
        "wal_keep_size": _size(min(max(storage // 64, 512 * _MB), 16 * _GB)),
        "wal_compression": "on",
        "checkpoint_completion_target": "0.9",
    }


def _analytics_settings() -> dict[str, str]:
    return {
        # The primary keeps rows our long queries still see, so vacuum causes no conflicts.
        "hot_standby_feedback": "on",
        # Remaining conflicts (locks) wait this long before cancelling the query: long
        # enough for dashboards, bounded so replay never stalls indefinitely.
        "max_standby_streaming_delay": "15min",
        "max_standby_archive_delay": "15min",
        "wal_receiver_status_interval": "1s",
    }


def _synchronous_settings(spec: ClusterSpec, standby_names: Sequence[str]) -> dict[str, str]:
    if not spec.postgres.synchronous.enabled:
        return {"synchronous_standby_names": ""}
    if len(standby_names) < spec.postgres.synchronous.number:
        raise ValueError(
            f"synchronous replication needs {spec.postgres.synchronous.number} standby names, "
            f"got {len(standby_names)}"
        )
    quoted = ", ".join('"' + name.replace('"', '""') + '"' for name in standby_names)
    return {"synchronous_standby_names": f"ANY {spec.postgres.synchronous.number} ({quoted})"}


def _conf_value(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def postgresql_conf(
    spec: ClusterSpec,
    resources: ComputeResources,
    analytics: bool,
    synchronous_standby_names: Sequence[str] = (),
    archive: Mapping[str, str] | None = None,
) -> str:
    """postgresql.conf of one instance.

    `synchronous_standby_names` are the promotable instances' names (the walreceivers'
    application_name); used only when spec.postgres.synchronous.enabled. `archive` holds
    the archive_* settings when the cluster backs up (archiving is off otherwise).
    """
    max_connections = int(spec.postgres.parameters.get("max_connections", DEFAULT_MAX_CONNECTIONS))
    roles = (spec.postgres.resources.primary, spec.postgres.resources.replica)
    settings: dict[str, str] = {
        "max_connections": str(max_connections),
        "superuser_reserved_connections": "5",
        "password_encryption": "scram-sha-256",
        "ssl": "off",
        **_memory_settings(to_bytes(resources.memory), min(to_bytes(r.memory) for r in roles), max_connections,
                           analytics),
        **_cpu_settings(to_millicores(resources.cpu), max(to_millicores(r.cpu) for r in roles)),
        # Network volumes are SSD-like: random reads cost little more than sequential ones.
        "random_page_cost": "1.1",
        "effective_io_concurrency": "200",
        **_wal_settings(spec),
        **_synchronous_settings(spec, synchronous_standby_names),
        "archive_mode": "off",
        **(archive or {}),
        # A walreceiver that sees nothing for this long reconnects (and so follows a failover).
        "wal_receiver_timeout": "10s",
        "wal_sender_timeout": "10s",
        # after a failover, a replica retries its (re-labelled) primary every second, not five
        "wal_retrieve_retry_interval": "1s",
        "logging_collector": "off",
        "log_destination": "stderr",
        "log_line_prefix": "%m [%p] %q%u@%d ",
        "log_min_duration_statement": "100ms",
        "log_checkpoints": "on",
        "log_lock_waits": "on",
        "log_temp_files": "0",
        "log_autovacuum_min_duration": "1s",
        "track_io_timing": "on",
        "idle_in_transaction_session_timeout": "10min",
        # Where the time goes, per normalized statement, on every instance (the extension is
        # created in the application database when the primary is bootstrapped). A user's
        # shared_preload_libraries replaces this one: list pg_stat_statements in it to keep it.
        "shared_preload_libraries": "pg_stat_statements",
        "pg_stat_statements.max": "5000",
        "pg_stat_statements.track": "top",
        # BEGIN, COMMIT, SET and the like would crowd out the statements that do the work.
        "pg_stat_statements.track_utility": "off",
    }
    if analytics:
        settings.update(_analytics_settings())
    settings.update({k: str(v) for k, v in sorted(spec.postgres.parameters.items())})
    lines = ["# Rendered by shopdb-operator; edit spec.postgres.parameters instead."]
    lines += [f"{name} = {_conf_value(value)}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def pg_hba_conf(spec: ClusterSpec) -> str:
    """pg_hba.conf: the postgres OS user on the socket; SCRAM from the pod network only."""
    lines = [
        "# Rendered by shopdb-operator.",
        "# TYPE  DATABASE     USER               ADDRESS          METHOD",
        f"local   all          {SUPERUSER:<18} {'':<16} peer",
    ]
    for cidr in spec.postgres.allowed_cidrs:
        lines.append(f"host    replication  {REPLICATION_USER:<18} {cidr:<16} scram-sha-256")
        lines.append(f"host    all          all                {cidr:<16} scram-sha-256")
    return "\n".join(lines) + "\n"


def _pgbouncer_database(name: str, host: str, port: int, dbname: str, pool_size: int) -> str:
    return f"{name} = host={host} port={port} dbname={dbname} pool_size={pool_size}"


def pgbouncer_ini(
    spec: ClusterSpec,
    backends: Mapping[str, tuple[str, int]],
    listen_port: int = 5432,
    *,
    listen_addr: str = "*",
    run_dir: str = PGBOUNCER_RUN_DIR,
    admin_user: str = PGBOUNCER_ADMIN_USER,
) -> str:
    """pgbouncer.ini routing `<db>` to the primary and `<db>_<route>` to each route's backend.

    `backends` maps "primary", "ro" and every replica route name to (host, port).
    The auth file is written into `run_dir` by pgbouncer-start.sh. Requires PgBouncer >= 1.21
    (max_prepared_statements; PgBouncer refuses to start on an option it does not know).
    """
    db = spec.postgres.database
    bouncer = spec.pgbouncer
    missing = [name for name in ["primary", *(r.name for r in spec.replicas)] if name not in backends]
    if bouncer.read_only_pool_size > 0 and "ro" not in backends:
        missing.append("ro")
    if missing:
        raise ValueError(f"pgbouncer_ini: no backend for {', '.join(missing)}")

    databases = [_pgbouncer_database(db, *backends["primary"], db, bouncer.primary_pool_size)]
    for replica in spec.replicas:
        databases.append(_pgbouncer_database(f"{db}_{replica.name}", *backends[replica.name], db, replica.pool_size))
    if bouncer.read_only_pool_size > 0:
        databases.append(_pgbouncer_database(f"{db}_ro", *backends["ro"], db, bouncer.read_only_pool_size))

    settings = {
        "listen_addr": listen_addr,
        "listen_port": str(listen_port),
        # No Unix socket: the container's file system may be read-only.
        "unix_socket_dir": "",
        "auth_type": "scram-sha-256",
        "auth_file": f"{run_dir}/userlist.txt",
        "admin_users": admin_user,
        "stats_users": admin_user,
        "pool_mode": bouncer.pool_mode.value,
        "max_client_conn": str(bouncer.max_client_conn),
        "default_pool_size": str(bouncer.default_pool_size),
        # Extra server connections would break the max_connections budget the spec checks.
        "reserve_pool_size": "0",
        # Used in session mode only; transaction mode never leaks session state by design.
        "server_reset_query": "DISCARD ALL",
        "server_reset_query_always": "0",
        "server_check_query": "select 1",
        "server_check_delay": "10",
        "server_lifetime": "3600",
        "server_idle_timeout": "300",
        # Fail fast and retry soon, so a failover costs seconds, not the 15 s defaults: for a
        # moment after a failover the -rw address may still lead to the vanished old
        # primary's pod (kube-proxy catching up), where a handshake never completes.
        "server_connect_timeout": "2",
        "server_login_retry": "1",
        "query_wait_timeout": "30",
        "client_login_timeout": "30",
        "idle_transaction_timeout": "600",
        # Protocol-level prepared statements in transaction mode: PgBouncer tracks each
        # client's and prepares it on whichever server connection runs it (0: off).
        "max_prepared_statements": str(bouncer.max_prepared_statements),
        # Services get new endpoints on failover; do not cache addresses for long.
        "dns_max_ttl": "5",
        "tcp_keepalive": "1",
        # JDBC sends it; PgBouncer would refuse the client. `options` is not ignored: dropping
        # a client's search_path silently would be worse than refusing it.
        "ignore_startup_parameters": "extra_float_digits",
        "application_name_add_host": "0",
        "log_connections": "0",
        "log_disconnections": "0",
        "log_pooler_errors": "1",
        "stats_period": "60",
        "logfile": "",
        "pidfile": "",
    }
    lines = ["; Rendered by shopdb-operator.", "[databases]", *databases, "", "[pgbouncer]"]
    lines += [f"{name} = {value}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"
