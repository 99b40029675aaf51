"""Prometheus alert rules for ShopDatabaseClusters, from the design's thresholds (§4).

    rule_groups(thresholds) -> {"groups": [...]}   # a Prometheus rules file
    prometheus_rule(thresholds, name=..., namespace=...)   # the same as a PrometheusRule

Label model. Every series the rules read carries `namespace` and `cluster` labels. The
scrape configuration (the PodMonitors) must relabel:

- pod label `shopdb.io/cluster` -> `cluster`;
- the pod name -> `pod` (the Prometheus Operator's PodMonitors do this themselves);
- pod label `app.kubernetes.io/component` -> `component` (`postgres`, `pgbouncer`,
  `redis`): the "target down" halves of the *Down alerts select `up` by it.

The operator's own metrics (shopdb_*: cluster phase, instances, failovers, backup times)
carry `namespace` and `cluster` themselves. Volume usage comes from the kubelet
(kubelet_volume_stats_*{namespace, persistentvolumeclaim}); its cluster is taken from the
claim's `shopdb.io/cluster` label as kube-state-metrics exports it, which needs
`--metric-labels-allowlist=persistentvolumeclaims=[shopdb.io/cluster]`.

Sources, each checked against that exporter's source at the version named:

- postgres_exporter 0.17.1 (prometheus-community), with
  `--extend.query-path=<shopdb_operator/monitoring/queries.yaml>` for the shopdb_* series
  (replication lag, WAL archive backlog, DEFAULT partition rows, statement totals, XID
  age); built-in: pg_up, pg_settings_max_connections,
  pg_settings_superuser_reserved_connections, pg_stat_database_numbackends /
  _blks_hit / _blks_read (collector stat_database, on by default),
  pg_stat_archiver_archived_count / _failed_count (default metrics).
- pgbouncer_exporter 0.10.2 (prometheus-community): pgbouncer_up,
  pgbouncer_pools_client_waiting_connections, pgbouncer_pools_client_maxwait_seconds
  {database, user}.
- redis_exporter (oliver006, 1.69): redis_up, redis_memory_used_bytes,
  redis_memory_max_bytes, redis_evicted_keys_total, redis_instance_info{maxmemory_policy}.
- kubelet: kubelet_volume_stats_used_bytes, kubelet_volume_stats_capacity_bytes;
  kube-state-metrics: kube_persistentvolumeclaim_labels.

Thresholds (camelCase keys, as a cluster's spec will give them; defaults from the design):

    connectionsPercent        80    % of max_connections - superuser_reserved_connections in use
    queryTimeMs               100   average statement execution time over 5 minutes ...
    queryMinCallsPerSecond    1     ... when at least this many statements per second ran
    replicationLagSeconds     1
    cacheHitRatio             0.9   shared-buffer hits / block requests over 5 minutes ...
    cacheMinBlocksPerSecond   100   ... when at least this many blocks per second were requested
    volumePercent             80    warning; volumeCriticalPercent 90 is critical
    walArchiveDelaySeconds    300   a finished WAL segment waits this long for archiving
    walArchiveMaxAgeSeconds   900   no WAL reached the repository for this long while WAL is written
    pgbouncerWaitingClients   0     clients queued for a server connection, sustained
    pgbouncerMaxWaitSeconds   5     the oldest queued client has waited this long
    redisMemoryPercent        90    of maxmemory, when Redis cannot or does evict
    redisEvictionsPerSecond   1
    xidAgeWarning             500000000    age(datfrozenxid): vacuum is falling behind
    xidAgeCritical            1200000000   wraparound comes at 2^31 (~2.1e9)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

RUNBOOK_BASE = "docs/runbooks.md"
BY_INSTANCE = "namespace, cluster, pod"
BY_CLUSTER = "namespace, cluster"
RATE_WINDOW = "5m"


@dataclass(frozen=True)
class Thresholds:
    connections_percent: float = 80
    query_time_ms: float = 100
    query_min_calls_per_second: float = 1
    replication_lag_seconds: float = 1
    cache_hit_ratio: float = 0.9
    cache_min_blocks_per_second: float = 100
    volume_percent: float = 80
    volume_critical_percent: float = 90
    wal_archive_delay_seconds: float = 300
    wal_archive_max_age_seconds: float = 900
    pgbouncer_waiting_clients: float = 0
    pgbouncer_max_wait_seconds: float = 5
    redis_memory_percent: float = 90
    redis_evictions_per_second: float = 1
    xid_age_warning: float = 500_000_000
    xid_age_critical: float = 1_200_000_000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"threshold {camel(f.name)} must be a number >= 0, not {value!r}")
        for name in ("connections_percent", "volume_percent", "volume_critical_percent", "redis_memory_percent"):
            if getattr(self, name) > 100:
                raise ValueError(f"threshold {camel(name)} is a percentage (0-100)")
        if not 0 < self.cache_hit_ratio <= 1:
            raise ValueError("threshold cacheHitRatio is a ratio (0-1], e.g. 0.9")


DEFAULT_THRESHOLDS = Thresholds()


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


_FIELDS = {camel(f.name): f.name for f in dataclasses.fields(Thresholds)}


def thresholds_from(values: Thresholds | Mapping[str, Any] | None) -> Thresholds:
    """Thresholds from camelCase keys (unknown keys are refused); missing ones default."""
    if values is None:
        return DEFAULT_THRESHOLDS
    if isinstance(values, Thresholds):
        return values
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown threshold(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    return Thresholds(**{_FIELDS[key]: value for key, value in values.items()})


def _n(value: float) -> str:
    """A number as PromQL reads it: 80 not 80.0, 0.1 not 0.1000000001."""
    if float(value).is_integer():
        return str(int(value))
    return repr(round(float(value), 12))


def anchor(alert: str) -> str:
    """The runbook section of an alert: its heading `## <alert>`, as GitHub anchors it."""
    return alert.lower()


def _down(up_metric: str, component: str) -> str:
    """Down: the exporter cannot reach what it watches, or Prometheus cannot scrape the pod."""
    return (f"max by ({BY_INSTANCE}) ({up_metric}) == 0\nor\n"
            f"max by ({BY_INSTANCE}) (up{{component=\"{component}\"}}) == 0")


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str,
           runbook_base: str) -> dict:
    return {
        "alert": name,
        "expr": re.sub(r"\n\s*", "\n", expr.strip()) + "\n",
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{runbook_base}#{anchor(name)}",
        },
    }


CLUSTER = "{{ $labels.namespace }}/{{ $labels.cluster }}"
INSTANCE = "{{ $labels.namespace }}/{{ $labels.cluster }} instance {{ $labels.pod }}"


def rule_groups(thresholds: Thresholds | Mapping[str, Any] | None = None, *,
                runbook_base: str = RUNBOOK_BASE) -> dict:
    """The alert rules as a Prometheus rules file ({"groups": [...]})."""
    t = thresholds_from(thresholds)
    w = RATE_WINDOW

    def a(*args: str) -> dict:
        return _alert(*args, runbook_base=runbook_base)

    availability = [
        a("ShopDBInstanceDown", _down("pg_up", "postgres"), "1m", "critical",
          f"PostgreSQL down: {INSTANCE}",
          "The exporter of {{ $labels.pod }} cannot reach its PostgreSQL, or Prometheus cannot scrape the "
          "pod, for 1 minute. A primary that stays down is failed over by the operator; a replica's route "
          "is served by the others meanwhile."),
        a("ShopDBInstancesNotReady", f"""
            max by ({BY_CLUSTER}) (shopdb_cluster_instances)
            - max by ({BY_CLUSTER}) (shopdb_cluster_instances_ready)
            > 0
            """, "10m", "warning",
          f"Instances not ready in {CLUSTER}",
          "{{ $value | printf \"%.0f\" }} of the desired database instances of " + CLUSTER + " have not been ready for 10 "
          "minutes (longer than a rolling restart keeps one down)."),
        a("ShopDBFailoverHappened", f"""
            sum by ({BY_CLUSTER}, from, to, kind) (increase(shopdb_failovers_total{{kind!="switchover"}}[15m])) > 0
            or
            sum by ({BY_CLUSTER}, from, to, kind) (
            shopdb_failovers_total{{kind!="switchover"}} unless shopdb_failovers_total{{kind!="switchover"}} offset 15m
            )
            """, "0m", "warning",
          f"Failover in {CLUSTER}: {{{{ $labels.from }}}} -> {{{{ $labels.to }}}}",
          "The operator promoted {{ $labels.to }} in place of {{ $labels.from }} ({{ $labels.kind }}) in the "
          "last 15 minutes. Find out why the old primary failed and whether it rejoined as a replica."),
        a("ShopDBFailoverBlocked", f"""
            max by ({BY_CLUSTER}) (shopdb_failover_blocked) == 1
            """, "1m", "critical",
          f"Failover blocked in {CLUSTER}",
          "The operator would fail over " + CLUSTER + " but refuses to (no safe candidate, fencing not "
          "confirmed, or failover disabled): the primary may be unavailable until someone acts."),
    ]

    performance = [
        a("ShopDBConnectionsHigh", f"""
            100 * sum by ({BY_INSTANCE}) (pg_stat_database_numbackends)
            / on ({BY_INSTANCE})
            (
            max by ({BY_INSTANCE}) (pg_settings_max_connections)
            - max by ({BY_INSTANCE}) (pg_settings_superuser_reserved_connections)
            )
            > {_n(t.connections_percent)}
            """, "5m", "warning",
          f"Connections above {_n(t.connections_percent)}% on {INSTANCE}",
          "{{ $value | printf \"%.0f\" }}% of the connections clients may open (max_connections minus "
          "superuser_reserved_connections) are in use on {{ $labels.pod }}. Past 100% new connections fail."),
        a("ShopDBSlowQueries", f"""
            sum by ({BY_INSTANCE}) (rate(shopdb_statements_exec_seconds_total[{w}]))
            / sum by ({BY_INSTANCE}) (rate(shopdb_statements_calls_total[{w}]))
            > {_n(t.query_time_ms / 1000)}
            and on ({BY_INSTANCE})
            sum by ({BY_INSTANCE}) (rate(shopdb_statements_calls_total[{w}])) > {_n(t.query_min_calls_per_second)}
            """, "10m", "warning",
          f"Average query time above {_n(t.query_time_ms)} ms on {INSTANCE}",
          "Statements on {{ $labels.pod }} took {{ $value | printf \"%.3f\" }}s on average over the last "
          f"{w} (pg_stat_statements), at more than {_n(t.query_min_calls_per_second)} statement(s) per second."),
        a("ShopDBCacheHitRatioLow", f"""
            sum by ({BY_INSTANCE}) (rate(pg_stat_database_blks_hit[{w}]))
            / (
            sum by ({BY_INSTANCE}) (rate(pg_stat_database_blks_hit[{w}]))
            + sum by ({BY_INSTANCE}) (rate(pg_stat_database_blks_read[{w}]))
            )
            < {_n(t.cache_hit_ratio)}
            and on ({BY_INSTANCE})
            (
            sum by ({BY_INSTANCE}) (rate(pg_stat_database_blks_hit[{w}]))
            + sum by ({BY_INSTANCE}) (rate(pg_stat_database_blks_read[{w}]))
            ) > {_n(t.cache_min_blocks_per_second)}
            """, "15m", "warning",
          f"Cache hit ratio below {_n(t.cache_hit_ratio * 100)}% on {INSTANCE}",
          "Only {{ $value | humanizePercentage }} of the blocks {{ $labels.pod }} read over the last "
          f"{w} were in shared buffers: the working set no longer fits in memory."),
        a("ShopDBReplicationLag", f"""
            max by ({BY_INSTANCE}) (shopdb_replication_lag_seconds) > {_n(t.replication_lag_seconds)}
            """, "2m", "warning",
          f"Replication lag above {_n(t.replication_lag_seconds)}s on {INSTANCE}",
          "Replica {{ $labels.pod }} is {{ $value | printf \"%.1f\" }}s behind its primary: reads routed "
          "to it return stale data."),
    ]

    def volume_expr(percent: float) -> str:
        return f"""
            100 * max by (namespace, persistentvolumeclaim) (kubelet_volume_stats_used_bytes)
            / max by (namespace, persistentvolumeclaim) (kubelet_volume_stats_capacity_bytes)
            * on (namespace, persistentvolumeclaim) group_left (cluster)
            max by (namespace, persistentvolumeclaim, cluster) (
            label_replace(kube_persistentvolumeclaim_labels{{label_shopdb_io_cluster!=""}},
            "cluster", "$1", "label_shopdb_io_cluster", "(.+)")
            )
            > {_n(percent)}
            """

    volume_description = ("Volume {{ $labels.persistentvolumeclaim }} of " + CLUSTER + " is "
                          "{{ $value | printf \"%.0f\" }}% full. PostgreSQL stops when it cannot write WAL.")
    storage_backup = [
        a("ShopDBVolumeFilling", volume_expr(t.volume_percent), "5m", "warning",
          f"Volume above {_n(t.volume_percent)}% in {CLUSTER}", volume_description),
        a("ShopDBVolumeAlmostFull", volume_expr(t.volume_critical_percent), "2m", "critical",
          f"Volume above {_n(t.volume_critical_percent)}% in {CLUSTER}", volume_description),
        a("ShopDBWALArchivingFailing", f"""
            (
            sum by ({BY_INSTANCE}) (increase(pg_stat_archiver_failed_count[{w}])) > 0
            unless on ({BY_INSTANCE})
            sum by ({BY_INSTANCE}) (increase(pg_stat_archiver_archived_count[{w}])) > 0
            )
            or
            max by ({BY_INSTANCE}) (shopdb_wal_archive_oldest_ready_seconds) > {_n(t.wal_archive_delay_seconds)}
            """, "5m", "critical",
          f"WAL archiving failing on {INSTANCE}",
          "archive_command fails on {{ $labels.pod }} without succeeding in between, or a finished WAL "
          f"segment has waited more than {_n(t.wal_archive_delay_seconds)}s: point-in-time recovery falls "
          "behind and WAL piles up on the volume."),
        a("ShopDBWALArchiveStale", f"""
            time() - max by ({BY_CLUSTER}) (shopdb_wal_archive_last_success_timestamp_seconds)
            > {_n(t.wal_archive_max_age_seconds)}
            and on ({BY_CLUSTER})
            sum by ({BY_CLUSTER}) (increase(shopdb_wal_archive_written_bytes_total[15m])) > 0
            """, "5m", "critical",
          f"No WAL archived for {CLUSTER}",
          "No WAL segment reached the backup repository for {{ $value | printf \"%.0f\" }}s while the "
          "primary writes WAL: the recovery point objective is no longer met."),
        a("ShopDBBackupTooOld", f"""
            time() - max by ({BY_CLUSTER}) (shopdb_backup_last_success_timestamp_seconds)
            > on ({BY_CLUSTER})
            max by ({BY_CLUSTER}) (shopdb_backup_max_age_seconds)
            """, "15m", "warning",
          f"Last backup of {CLUSTER} too old",
          "The last successful backup of " + CLUSTER + " finished {{ $value | printf \"%.0f\" }}s ago, "
          "longer than its schedule allows."),
        a("ShopDBDefaultPartitionNotEmpty", """
            max by (namespace, cluster, schema, table, partition) (shopdb_default_partition_rows) > 0
            """, "30m", "warning",
          f"Rows in DEFAULT partition {{{{ $labels.schema }}}}.{{{{ $labels.partition }}}} of {CLUSTER}",
          "{{ $value | printf \"%.0f\" }} row(s) of {{ $labels.schema }}.{{ $labels.table }} fell outside every monthly "
          "partition (counted up to 10001): partitions were not created ahead of time."),
        a("ShopDBTransactionIDAgeHigh", f"""
            max by ({BY_CLUSTER}, datname) (shopdb_database_xid_age) > {_n(t.xid_age_warning)}
            """, "30m", "warning",
          f"Transaction ID age high in {CLUSTER} database {{{{ $labels.datname }}}}",
          "age(datfrozenxid) of {{ $labels.datname }} is {{ $value | printf \"%.0f\" }}: (auto)vacuum is not "
          "freezing fast enough."),
        a("ShopDBTransactionIDWraparoundRisk", f"""
            max by ({BY_CLUSTER}, datname) (shopdb_database_xid_age) > {_n(t.xid_age_critical)}
            """, "5m", "critical",
          f"Transaction ID wraparound approaching in {CLUSTER} database {{{{ $labels.datname }}}}",
          "age(datfrozenxid) of {{ $labels.datname }} is {{ $value | printf \"%.0f\" }} of ~2.1e9: PostgreSQL "
          "refuses writes before wraparound."),
    ]

    pooling_cache = [
        a("ShopDBPgBouncerDown", _down("pgbouncer_up", "pgbouncer"), "2m", "critical",
          f"PgBouncer down: {INSTANCE}",
          "The exporter of {{ $labels.pod }} cannot query PgBouncer, or Prometheus cannot scrape the pod."),
        a("ShopDBPgBouncerClientsWaiting", f"""
            sum by ({BY_INSTANCE}, database) (pgbouncer_pools_client_waiting_connections)
            > {_n(t.pgbouncer_waiting_clients)}
            """, "5m", "warning",
          f"Clients waiting in PgBouncer {{{{ $labels.pod }}}} of {CLUSTER}",
          "{{ $value | printf \"%.0f\" }} client(s) of database {{ $labels.database }} have been queued for a server "
          "connection for 5 minutes: its pool is too small for the load, or the server is slow."),
        a("ShopDBPgBouncerMaxWaitHigh", f"""
            max by ({BY_INSTANCE}, database) (pgbouncer_pools_client_maxwait_seconds)
            > {_n(t.pgbouncer_max_wait_seconds)}
            """, "2m", "critical",
          f"PgBouncer clients wait over {_n(t.pgbouncer_max_wait_seconds)}s in {CLUSTER}",
          "The oldest queued client of database {{ $labels.database }} on {{ $labels.pod }} has waited "
          "{{ $value | printf \"%.0f\" }}s for a server connection (at query_wait_timeout it gets an error)."),
        a("ShopDBRedisDown", _down("redis_up", "redis"), "2m", "critical",
          f"Redis down: {INSTANCE}",
          "The cache of " + CLUSTER + " does not answer: every read falls through to the database."),
        a("ShopDBRedisMemoryNearLimit", f"""
            100 * max by ({BY_INSTANCE}) (redis_memory_used_bytes)
            / max by ({BY_INSTANCE}) (redis_memory_max_bytes > 0)
            > {_n(t.redis_memory_percent)}
            and on ({BY_INSTANCE})
            (
            max by ({BY_INSTANCE}) (redis_instance_info{{maxmemory_policy=~"noeviction|volatile-.*"}})
            or
            sum by ({BY_INSTANCE}) (rate(redis_evicted_keys_total[10m])) > {_n(t.redis_evictions_per_second)}
            )
            """, "15m", "warning",
          f"Redis near its memory limit: {INSTANCE}",
          "Redis uses {{ $value | printf \"%.0f\" }}% of maxmemory and either cannot evict (its policy) or "
          "evicts keys before they expire: the cache is too small."),
    ]

    return {"groups": [
        {"name": "shopdb.availability", "rules": availability},
        {"name": "shopdb.performance", "rules": performance},
        {"name": "shopdb.storage-backup", "rules": storage_backup},
        {"name": "shopdb.pooling-cache", "rules": pooling_cache},
    ]}


def alert_names(groups: Mapping) -> list[str]:
    return [rule["alert"] for group in groups["groups"] for rule in group["rules"] if "alert" in rule]


def prometheus_rule(thresholds: Thresholds | Mapping[str, Any] | None = None, *, name: str = "shopdb-alerts",
                    namespace: str | None = None, labels: Mapping[str, str] | None = None,
                    runbook_base: str = RUNBOOK_BASE) -> dict:
    """The rules as a monitoring.coreos.com/v1 PrometheusRule (Prometheus Operator)."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {"app.kubernetes.io/name": "shopdb-operator", **(labels or {})}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": rule_groups(thresholds, runbook_base=runbook_base),
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: Any, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(document: Mapping, header: str = "") -> str:
    return header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120, default_flow_style=False)


GENERATED_HEADER = ("# Generated by `python -m shopdb_operator.api.generate` from "
                    "shopdb_operator/monitoring/rules.py (default thresholds); do not edit.\n")


def rules_file_yaml() -> str:
    return to_yaml(rule_groups(), GENERATED_HEADER)


def prometheus_rule_yaml() -> str:
    return to_yaml(prometheus_rule(), GENERATED_HEADER)
