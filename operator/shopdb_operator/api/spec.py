"""The ShopDatabaseCluster spec: types, defaults, docs and schema rules in one place.

The CRD in crds/ and in the Helm chart is generated from these models (api/crd.py);
the operator parses every object with them, so the API server and the operator agree
on every default. Numbers come from the design document
(shared/design/database-scalability-architecture.md).
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.alias_generators import to_camel

from .quantity import QUANTITY_PATTERN, parse_quantity

# A PostgreSQL identifier we create or touch: lower case, no quoting needed.
SQL_IDENTIFIER_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
# Replica names become parts of object names (<cluster>-<name>) and PgBouncer databases.
REPLICA_NAME_PATTERN = r"^[a-z]([a-z0-9-]{0,13}[a-z0-9])?$"
# Five cron fields, each made of digits, '*', ',', '-' and '/'; ranges are checked in Python.
CRON_PATTERN = r"^(\S+\s+){4}\S+$|^@(hourly|daily|weekly|monthly|yearly|annually)$"
CIDR_PATTERN = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"
# Names a replica may not take: they are the suffixes of our other children.
RESERVED_REPLICA_NAMES = ["rw", "ro", "r", "pgbouncer", "redis", "instances", "config",
                          "scripts", "cache", "superuser", "replication", "app", "primary"]
# Settings the operator owns; a user value would break replication or failover.
OPERATOR_OWNED_PARAMETERS = [
    "listen_addresses", "port", "data_directory", "hba_file", "ident_file", "config_file",
    "wal_level", "hot_standby", "primary_conninfo", "primary_slot_name", "restore_command",
    "recovery_target_timeline", "synchronous_standby_names", "wal_log_hints",
    "max_wal_senders", "max_replication_slots", "unix_socket_directories",
    "password_encryption", "ssl", "archive_mode", "archive_command", "archive_timeout",
]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


def _quantity(default: str, doc: str) -> str:
    return Field(default, description=doc, pattern=QUANTITY_PATTERN)


def _positive_quantity(default: str, doc: str) -> str:
    return Field(default, description=doc, pattern=QUANTITY_PATTERN, json_schema_extra={
        "x-kubernetes-validations": [{"rule": "quantity(self).isGreaterThan(quantity('0'))",
                                      "message": "must be above zero"}]})


class ComputeResources(_Model):
    """CPU and memory for one container; used as both request and limit (Guaranteed QoS)."""

    cpu: str = _positive_quantity("1", "CPU cores, e.g. '4' or '500m'.")
    memory: str = _positive_quantity("1Gi", "Memory, e.g. '16Gi'.")

    @field_validator("cpu", "memory")
    @classmethod
    def _above_zero(cls, value: str) -> str:
        if parse_quantity(value) <= 0:
            raise ValueError(f"{value!r} must be above zero")
        return value


class PostgresResources(_Model):
    primary: ComputeResources = Field(
        default_factory=lambda: ComputeResources(cpu="8", memory="32Gi"),
        description="Resources of the instance that is primary.",
    )
    replica: ComputeResources = Field(
        default_factory=lambda: ComputeResources(cpu="4", memory="16Gi"),
        description="Resources of each read replica.",
    )


class Storage(_Model):
    size: str = Field(
        "1Ti", pattern=QUANTITY_PATTERN,
        description="Volume size of every instance (a replica holds a full copy). May grow, never shrink.",
        json_schema_extra={"x-kubernetes-validations": [{
            "rule": "!quantity(self).isLessThan(quantity(oldSelf))",
            "message": "storage cannot shrink: volumes only grow",
        }]},
    )
    storage_class_name: Optional[str] = Field(
        None, description="StorageClass of the volumes; the cluster default when unset."
    )


class SynchronousReplication(_Model):
    enabled: bool = Field(False, description="Commit waits for promotable replicas (RPO 0 on failover).")
    number: int = Field(
        1, ge=1, le=8,
        description="How many promotable replicas must confirm each commit (ANY n).",
    )


class InitSQL(_Model):
    config_map_name: str = Field(description="ConfigMap holding SQL run once, as the owner, when the primary is first created.")
    key: str = Field("init.sql", description="Key of the SQL in that ConfigMap.")


class PostgresSpec(_Model):
    image: str = Field("postgres:15", min_length=1, description="PostgreSQL server image (official `postgres` layout).")
    version: int = Field(
        15, ge=13, le=17,
        description="PostgreSQL major version of the image; cannot change in place.",
        json_schema_extra={"x-kubernetes-validations": [{
            "rule": "self == oldSelf",
            "message": "the PostgreSQL major version cannot change in place; create a new cluster and migrate",
        }]},
    )
    database: str = Field("shop", pattern=SQL_IDENTIFIER_PATTERN, description="Application database.")
    owner: str = Field("shop", pattern=SQL_IDENTIFIER_PATTERN, description="Application role that owns the database.")
    resources: PostgresResources = Field(default_factory=PostgresResources)
    storage: Storage = Field(default_factory=Storage)
    parameters: dict[str, str] = Field(
        default_factory=dict,
        description="postgresql.conf settings merged over the operator's tuned defaults "
                    "(max_connections defaults to 500).",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(k, !(k in " + repr(OPERATOR_OWNED_PARAMETERS).replace("'", '"') + "))",
                    "message": "parameters may not set settings the operator manages "
                               "(replication, listening, files, authentication)",
                },
                {
                    "rule": "!('max_connections' in self) || self['max_connections'].matches('^[0-9]{1,5}$')",
                    "message": "max_connections must be a whole number",
                },
            ]
        },
    )
    synchronous: SynchronousReplication = Field(default_factory=SynchronousReplication)
    allowed_cidrs: list[Annotated[str, StringConstraints(pattern=CIDR_PATTERN, max_length=64)]] = Field(
        default_factory=lambda: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
        alias="allowedCIDRs", max_length=16,
        description="Networks pg_hba.conf accepts (scram-sha-256); the pod network. "
                    "NetworkPolicies narrow this further to PgBouncer, peers, the operator and Jobs.",
    )
    init_sql: Optional[InitSQL] = Field(None, alias="initSQL", description="SQL to run once on a new cluster.")

    @field_validator("parameters")
    @classmethod
    def _parameter_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.match(r"^[a-z_][a-z0-9_.]*$", name):
                raise ValueError(f"{name!r} is not a PostgreSQL setting name")
        return value


class ReplicaSpec(_Model):
    name: str = Field(pattern=REPLICA_NAME_PATTERN, description="Route name: Service <cluster>-<name>, PgBouncer database <db>_<name>.")
    purpose: str = Field("", max_length=200, description="What this replica's readers do.")
    pool_size: int = Field(25, ge=1, le=1000, description="PgBouncer server connections per PgBouncer instance for this route.")
    promotable: bool = Field(True, description="May become primary on failover (false: like Patroni's nofailover).")
    analytics: bool = Field(False, description="Tuned for long read queries (hot_standby_feedback, no query cancellation).")


def _default_replicas() -> list[ReplicaSpec]:
    return [
        ReplicaSpec(name="search", purpose="product searches", pool_size=25),
        ReplicaSpec(name="orders", purpose="order queries", pool_size=25),
        ReplicaSpec(name="analytics", purpose="analytics and vendor dashboards", pool_size=20,
                    promotable=False, analytics=True),
    ]


class PoolMode(str, Enum):
    session = "session"
    transaction = "transaction"
    statement = "statement"


class PgBouncerSpec(_Model):
    instances: int = Field(2, ge=1, le=20, description="PgBouncer pods.")
    pool_mode: PoolMode = Field(PoolMode.transaction, description="PgBouncer pool_mode.")
    default_pool_size: int = Field(100, ge=1, le=10000, description="Server connections per instance across all routes (the design's pool of 100).")
    max_client_conn: int = Field(1000, ge=1, le=100000, description="Client connections per instance.")
    primary_pool_size: int = Field(30, ge=1, le=1000, description="Server connections per instance to the primary.")
    read_only_pool_size: int = Field(20, ge=0, le=1000, description="Server connections per instance for the read-only route across promotable replicas (0: no such route).")
    max_prepared_statements: int = Field(
        200, ge=0,
        description="PgBouncer max_prepared_statements: makes protocol-level prepared statements work in "
                    "transaction mode, PgBouncer preparing each on whichever server connection runs it "
                    "(PgBouncer >= 1.21; 0 disables).",
    )
    image: str = Field("edoburu/pgbouncer:v1.24.1-p1", min_length=1, description="PgBouncer image (needs /bin/sh; PgBouncer >= 1.21).")
    resources: ComputeResources = Field(default_factory=lambda: ComputeResources(cpu="1", memory="512Mi"))


class EvictionPolicy(str, Enum):
    allkeys_lru = "allkeys-lru"
    allkeys_lfu = "allkeys-lfu"
    volatile_lru = "volatile-lru"
    volatile_lfu = "volatile-lfu"
    volatile_ttl = "volatile-ttl"
    noeviction = "noeviction"


class CacheTTLs(_Model):
    """Cache lifetimes from the design, published for applications in a ConfigMap."""

    listings_seconds: int = Field(300, ge=1, description="L1: product listings.")
    shop_info_seconds: int = Field(300, ge=1, description="L1: shop info.")
    aggregations_seconds: int = Field(900, ge=1, description="L2: complex aggregations.")
    search_results_seconds: int = Field(900, ge=1, description="L2: search results.")


class RedisSpec(_Model):
    enabled: bool = Field(True, description="Run the Redis cache tier.")
    image: str = Field("redis:7.4", min_length=1)
    resources: ComputeResources = Field(default_factory=lambda: ComputeResources(cpu="2", memory="8Gi"))
    maxmemory: Optional[str] = Field(
        None, pattern=QUANTITY_PATTERN,
        description="Redis maxmemory; 75% of the memory limit when unset.",
    )
    maxmemory_policy: EvictionPolicy = Field(EvictionPolicy.allkeys_lru)
    cache_ttls: CacheTTLs = Field(default_factory=CacheTTLs, alias="cacheTTLs")


class PartitionedTable(_Model):
    table: str = Field(pattern=SQL_IDENTIFIER_PATTERN, description="Table partitioned by RANGE on `column`.")
    schema_name: str = Field("public", pattern=SQL_IDENTIFIER_PATTERN, alias="schema")
    column: str = Field("created_at", pattern=SQL_IDENTIFIER_PATTERN)
    premake_months: int = Field(3, ge=1, le=36, description="Monthly partitions kept ready ahead of the current month.")
    retention_months: Optional[int] = Field(
        None, ge=1, le=1200,
        description="Detach and drop partitions wholly older than this many months; kept forever when unset.",
    )
    schedule: str = Field("0 0 1 * *", pattern=CRON_PATTERN, description="Cron schedule of the maintenance Job.")


class MaterializedView(_Model):
    name: str = Field(pattern=SQL_IDENTIFIER_PATTERN)
    schema_name: str = Field("public", pattern=SQL_IDENTIFIER_PATTERN, alias="schema")
    schedule: str = Field("0 * * * *", pattern=CRON_PATTERN, description="Cron schedule of the refresh Job.")


class MaintenanceSpec(_Model):
    image: Optional[str] = Field(None, description="Image the CronJobs run; the operator's own image when unset.")
    partitioned_tables: list[PartitionedTable] = Field(
        default_factory=lambda: [PartitionedTable(table="orders")],
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["table"]},
    )
    materialized_views: list[MaterializedView] = Field(
        default_factory=lambda: [MaterializedView(name="shop_analytics")],
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class PrimaryLeaseSpec(_Model):
    """The lease a primary must hold to accept writes (renewed by its instance-agent)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "!has(self.durationSeconds) || !has(self.fenceMarginSeconds) || "
                "self.durationSeconds - self.fenceMarginSeconds >= 3",
        "message": "durationSeconds - fenceMarginSeconds must be at least 3 (the agent renews every third of it)",
    }]})

    duration_seconds: int = Field(
        8, ge=4, le=300,
        description="How long one renewal of the primary lease lasts. A primary that cannot renew it (cut off from "
                    "the API server) stops accepting writes after durationSeconds - fenceMarginSeconds; a node cut "
                    "off altogether is failed over after durationSeconds + clockSkewSeconds. Longer: more tolerance "
                    "of API server outages, a longer RTO when a whole node is cut off.")
    fence_margin_seconds: int = Field(
        2, ge=1, le=60,
        description="How long before the lease ends the primary fences itself: covers the fence's own time and a "
                    "starved agent.")
    clock_skew_seconds: int = Field(
        1, ge=0, le=60,
        description="Allowance for the difference between the primary's node clock and the operator's, added "
                    "before an unrenewed lease counts as expired.")


class FailoverSpec(_Model):
    enabled: bool = Field(True, description="Promote a replica automatically when the primary fails.")
    check_interval_seconds: int = Field(2, ge=1, le=300, description="How often the operator checks the primary.")
    failure_threshold: int = Field(3, ge=1, le=100, description="Consecutive failed checks before failover starts.")
    max_lag_bytes: int = Field(
        16 * 1024 * 1024, ge=0,
        description="A candidate further behind than this is not promoted (raise it to accept more loss).",
    )
    lease: PrimaryLeaseSpec = Field(default_factory=PrimaryLeaseSpec)


REPOSITORY_NAME_PATTERN = r"^[a-z]([a-z0-9-]{0,13}[a-z0-9])?$"
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
REPOSITORY_PATH_PATTERN = r"^(/[A-Za-z0-9._-]+)+$"
# An S3 endpoint host name (no scheme, no port: `port` is separate).
ENDPOINT_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
DEFAULT_FIRST_FULL_SCHEDULE = "0 2 * * *"  # the design: a full backup daily at 2 AM
DEFAULT_OTHER_FULL_SCHEDULE = "0 */6 * * *"  # the design: cross-region copy every 6 hours


class SecretKeyRef(_Model):
    name: str = Field(min_length=1, max_length=253, description="Secret in the cluster's namespace.")
    key: str = Field(min_length=1, max_length=253, description="Key in that Secret.")


class S3Credentials(_Model):
    secret_name: str = Field(min_length=1, max_length=253,
                             description="Secret holding the access key pair (never logged, never in status).")
    access_key_id_key: str = Field("accessKeyId", min_length=1, description="Key of the access key id.")
    secret_access_key_key: str = Field("secretAccessKey", min_length=1, description="Key of the secret access key.")


class UriStyle(str, Enum):
    host = "host"
    path = "path"


class S3Repository(_Model):
    endpoint: str = Field(pattern=ENDPOINT_PATTERN, description="S3 endpoint host, e.g. s3.eu-west-1.amazonaws.com.")
    port: int = Field(443, ge=1, le=65535, description="HTTPS port of the endpoint (pgBackRest speaks S3 over TLS only).")
    bucket: str = Field(pattern=BUCKET_PATTERN, description="Bucket; it must exist.")
    region: str = Field("us-east-1", min_length=1, max_length=64, description="S3 region.")
    uri_style: UriStyle = Field(UriStyle.host, description="host (bucket.endpoint) or path (endpoint/bucket) addressing.")
    credentials: S3Credentials
    ca: Optional[SecretKeyRef] = Field(
        None, description="CA bundle that signed the endpoint's certificate, when not a public CA. "
                          "TLS is always verified.")


class RepositoryRetention(_Model):
    full_days: int = Field(30, ge=1, le=3650,
                           description="Full backups are kept this many days (with the WAL they need), then pruned.")
    full_count: Optional[int] = Field(
        None, ge=1, le=1000,
        description="Keep this many full backups instead (fullDays is then ignored); their WAL goes with them.")


class BackupSchedules(_Model):
    full: Optional[str] = Field(
        None, pattern=CRON_PATTERN,
        description=f"Full backups (UTC). Unset: '{DEFAULT_FIRST_FULL_SCHEDULE}' for the first repository, "
                    f"'{DEFAULT_OTHER_FULL_SCHEDULE}' for the others (the second region).")
    differential: Optional[str] = Field(None, pattern=CRON_PATTERN, description="Differential backups (UTC).")
    incremental: Optional[str] = Field(None, pattern=CRON_PATTERN, description="Incremental backups (UTC).")


class BackupRepository(_Model):
    name: str = Field(pattern=REPOSITORY_NAME_PATTERN, description="Repository name (status, Jobs, `--repo`).")
    s3: S3Repository
    path: Optional[str] = Field(
        None, pattern=REPOSITORY_PATH_PATTERN, max_length=256,
        description="Path in the bucket; /shopdb/<namespace>/<cluster> when unset.")
    retention: RepositoryRetention = Field(default_factory=RepositoryRetention)
    schedules: BackupSchedules = Field(default_factory=BackupSchedules)

    def path_for(self, namespace: str, cluster: str) -> str:
        return self.path or f"/shopdb/{namespace}/{cluster}"


class RestoreVerification(_Model):
    enabled: bool = Field(True, description="Restore the latest backup on a schedule and check it.")
    schedule: str = Field("0 4 * * 0", pattern=CRON_PATTERN,
                          description="When (UTC); weekly by default, after the night's full backup.")
    repository: Optional[str] = Field(None, description="The repository to verify; the first when unset.")


class BackupSpec(_Model):
    repositories: list[BackupRepository] = Field(
        min_length=1, max_length=4,
        description="pgBackRest repositories; WAL goes to every one. More than one: the others are other "
                    "regions (their full backups default to every 6 hours).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    archive_timeout_seconds: int = Field(
        60, ge=10, le=3600,
        description="A WAL segment is archived at least this often, even on an idle database (bounds the RPO).")
    archive_push_queue_max: str = Field(
        "4Gi", pattern=QUANTITY_PATTERN,
        description="WAL waiting to be archived beyond this is dropped (and reported) rather than filling the "
                    "volume: the database keeps running, but point-in-time recovery has a gap until the next backup.")
    process_max: int = Field(2, ge=1, le=32, description="Parallel processes for backup and restore.")
    resources: ComputeResources = Field(
        default_factory=lambda: ComputeResources(cpu="1", memory="256Mi"),
        description="The pgBackRest sidecar of each instance and the backup Jobs (which run spec.postgres.image: "
                    "pgBackRest needs one version at both ends).")
    verify: RestoreVerification = Field(
        default_factory=RestoreVerification,
        description="Restore verification: a Job restores the latest backup into a scratch volume as large as an "
                    "instance's, starts PostgreSQL on it and checks every table and index (pg_amcheck).")


class RecoveryTarget(_Model):
    time: Optional[str] = Field(
        None, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)$",
        description="Recover to this moment (RFC 3339 with a zone, e.g. 2026-05-01T10:00:00Z).")
    lsn: Optional[str] = Field(None, pattern=r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$", description="Recover to this WAL position.")
    backup_set: Optional[str] = Field(
        None, pattern=r"^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$",
        description="Restore this backup set (a label from `shopdb-operator backups`) and stop at its end.")


class RecoverySource(_Model):
    cluster_name: str = Field(min_length=1, max_length=63, description="The cluster whose backups are restored (its stanza).")
    namespace: Optional[str] = Field(None, max_length=63, description="Its namespace; this cluster's when unset.")
    repository: BackupRepository = Field(description="Where its backups are (the path defaults as for that cluster).")


class Recovery(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "!has(self.target) || [has(self.target.time), has(self.target.lsn), "
                "has(self.target.backupSet)].filter(x, x).size() <= 1",
        "message": "recovery.target takes one of time, lsn or backupSet (none: the latest point)",
    }]})

    source: RecoverySource
    target: RecoveryTarget = Field(default_factory=RecoveryTarget,
                                   description="Where recovery stops; the latest archived point when empty.")


class BootstrapSpec(_Model):
    recovery: Optional[Recovery] = Field(
        None, description="Create the cluster from a backup instead of an empty database (used only at creation).")


class PrimaryUpdateMethod(str, Enum):
    switchover = "switchover"
    restart = "restart"


class PrimaryUpdateStrategy(str, Enum):
    unsupervised = "unsupervised"
    supervised = "supervised"


class OperatorChanges(str, Enum):
    rolling = "rolling"
    deferred = "deferred"


class UpdatesSpec(_Model):
    """How changes that need a restart (settings, image, pod template) roll out: replicas
    one at a time, each back and streaming before the next, then the primary."""

    primary_update_method: PrimaryUpdateMethod = Field(
        PrimaryUpdateMethod.switchover,
        description="switchover: the primary's role moves to the most up-to-date promotable replica (already "
                    "updated; a pause of writes of seconds), then the old primary restarts as a replica. restart: "
                    "the primary restarts in place (writes wait until it is back).")
    primary_update_strategy: PrimaryUpdateStrategy = Field(
        PrimaryUpdateStrategy.unsupervised,
        description="supervised: when the primary's turn comes the rollout waits for `shopdb-operator promote "
                    "NAME --to INSTANCE` (or the shopdb.io/switchover-to annotation).")
    operator_changes: OperatorChanges = Field(
        OperatorChanges.rolling,
        description="deferred: a pod template a new operator version changed (the spec did not) waits for each "
                    "pod's next restart instead of rolling now.")


class ReclaimPolicy(str, Enum):
    retain = "Retain"
    delete = "Delete"


class ClusterSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # has() guards: the API server also checks these rules against the
                    # spec's own default `{}`, before inner defaults exist
                    "rule": "!has(self.failover) || !has(self.replicas) || !self.failover.enabled || "
                            "self.replicas.exists(r, r.promotable)",
                    "message": "failover needs at least one replica with promotable: true",
                },
                {
                    "rule": "!has(self.postgres) || !has(self.replicas) || !self.postgres.synchronous.enabled || "
                            "self.replicas.filter(r, r.promotable).size() >= self.postgres.synchronous.number",
                    "message": "synchronous.number is larger than the number of promotable replicas",
                },
                {
                    "rule": "!has(self.pgbouncer) || !has(self.postgres) || !has(self.replicas) || "
                            "self.pgbouncer.instances * (self.pgbouncer.primaryPoolSize + "
                            "self.pgbouncer.readOnlyPoolSize + "
                            "self.replicas.map(r, r.poolSize).sum()) + 20 <= "
                            "('max_connections' in self.postgres.parameters ? "
                            "int(self.postgres.parameters['max_connections']) : 500)",
                    "message": "PgBouncer pools do not fit max_connections: instances x (primary + "
                               "read-only + every replica pool) + 20 reserved must be <= max_connections",
                },
            ]
        }
    )

    postgres: PostgresSpec = Field(default_factory=PostgresSpec)
    replicas: list[ReplicaSpec] = Field(
        default_factory=_default_replicas,
        max_length=8,
        description="Named read replicas; each gets its own Service and PgBouncer route.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(r, !(r.name in " + repr(RESERVED_REPLICA_NAMES).replace("'", '"') + "))",
                    "message": "replica names may not be one of " + ", ".join(RESERVED_REPLICA_NAMES),
                },
            ],
        },
    )
    pgbouncer: PgBouncerSpec = Field(default_factory=PgBouncerSpec)
    redis: RedisSpec = Field(default_factory=RedisSpec)
    maintenance: MaintenanceSpec = Field(default_factory=MaintenanceSpec)
    failover: FailoverSpec = Field(default_factory=FailoverSpec)
    updates: UpdatesSpec = Field(default_factory=UpdatesSpec)
    backup: Optional[BackupSpec] = Field(
        None, description="Continuous WAL archiving and scheduled backups with pgBackRest; none when unset.")
    bootstrap: Optional[BootstrapSpec] = Field(None, description="How a new cluster gets its data.")
    reclaim_policy: ReclaimPolicy = Field(
        ReclaimPolicy.retain,
        description="Retain keeps volumes and credentials when the cluster is deleted; Delete removes them.",
    )

    @field_validator("replicas")
    @classmethod
    def _unique_names(cls, value: list[ReplicaSpec]) -> list[ReplicaSpec]:
        names = [r.name for r in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"replica names must be unique; repeated: {', '.join(dupes)}")
        return value

    @property
    def promotable_replicas(self) -> list[ReplicaSpec]:
        return [r for r in self.replicas if r.promotable]
