"""postgresql.conf, pg_hba.conf and pgbouncer.ini rendered from the spec."""

from __future__ import annotations

import configparser
import re

import pytest
from pydantic import ValidationError

from shopdb_operator.api.spec import ClusterSpec, ComputeResources
from shopdb_operator.builders import config_files

BACKENDS = {
    "primary": ("shop-rw", 5432),
    "ro": ("shop-ro", 5432),
    "search": ("shop-search", 5432),
    "orders": ("shop-orders", 5432),
    "analytics": ("shop-analytics", 5432),
}


def spec(**postgres) -> ClusterSpec:
    return ClusterSpec.model_validate({"postgres": postgres})


def settings(conf: str) -> dict[str, str]:
    found = {}
    for line in conf.splitlines():
        if line and not line.startswith("#"):
            match = re.fullmatch(r"(\w+(?:\.\w+)?) = '(.*)'", line)
            assert match, f"not a quoted setting: {line!r}"
            assert match.group(1) not in found, f"{match.group(1)} set twice"
            found[match.group(1)] = match.group(2)
    return found


def kb(value: str) -> int:
    match = re.fullmatch(r"(\d+)(kB|MB|GB)", value)
    assert match, value
    return int(match.group(1)) * {"kB": 1, "MB": 1024, "GB": 1024 * 1024}[match.group(2)]


def test_memory_is_tuned_from_the_instance_resources():
    conf = settings(config_files.postgresql_conf(spec(), ComputeResources(cpu="8", memory="32Gi"), False))
    assert conf["shared_buffers"] == "4GB"  # a quarter of the smaller role's (replicas: 16Gi)
    assert kb(conf["effective_cache_size"]) == 24 * 1024 * 1024
    assert kb(conf["maintenance_work_mem"]) == 2 * 1024 * 1024  # capped
    # 500 connections x 3 sort nodes must fit in what shared_buffers leaves.
    assert 4 * 1024 <= kb(conf["work_mem"]) <= 28 * 1024 * 1024 // 1500
    assert conf["max_parallel_workers"] == "8"
    small = settings(config_files.postgresql_conf(spec(), ComputeResources(cpu="500m", memory="1Gi"), False))
    assert small["shared_buffers"] == "4GB"
    assert small["max_parallel_workers"] == "1"


def test_settings_only_a_restart_changes_are_the_same_in_both_roles():
    """A failover swaps the roles' resources in place: nothing may then wait for a restart,
    and a standby needs at least the primary's max_worker_processes."""
    cluster = spec(resources={"primary": {"cpu": "16", "memory": "2Gi"}, "replica": {"cpu": "2", "memory": "1Gi"}})
    primary = settings(config_files.postgresql_conf(cluster, cluster.postgres.resources.primary, False))
    replica = settings(config_files.postgresql_conf(cluster, cluster.postgres.resources.replica, False))
    assert primary["shared_buffers"] == replica["shared_buffers"] == "256MB"
    assert primary["max_worker_processes"] == replica["max_worker_processes"] == "16"
    assert primary["max_parallel_workers"] == "16" and replica["max_parallel_workers"] == "2"
    assert kb(primary["effective_cache_size"]) == 2 * kb(replica["effective_cache_size"])


def test_max_connections_defaults_to_500_and_parameters_override_defaults():
    resources = ComputeResources(cpu="4", memory="16Gi")
    assert settings(config_files.postgresql_conf(spec(), resources, False))["max_connections"] == "500"
    conf = settings(config_files.postgresql_conf(
        spec(parameters={"max_connections": "800", "work_mem": "64MB", "pg_stat_statements.max": "5000"}),
        resources, False))
    assert conf["max_connections"] == "800"
    assert conf["work_mem"] == "64MB"
    assert conf["pg_stat_statements.max"] == "5000"


def test_replication_and_rewind_prerequisites():
    conf = settings(config_files.postgresql_conf(spec(), ComputeResources(), False))
    assert conf["wal_level"] == "replica"
    assert conf["wal_log_hints"] == "on"
    assert conf["hot_standby"] == "on"
    assert conf["password_encryption"] == "scram-sha-256"
    # Four instances stream, one may clone (2 senders) and one may rewind at the same time.
    assert int(conf["max_wal_senders"]) >= 4 + 3
    assert int(conf["max_replication_slots"]) >= 4
    # A lost replica's slot cannot fill the 1Ti volume.
    assert kb(conf["max_slot_wal_keep_size"]) <= 1024 ** 3 // 4
    assert "synchronous_standby_names" in conf and conf["synchronous_standby_names"] == ""
    for operator_owned in ("listen_addresses", "port", "primary_conninfo", "hba_file"):
        assert operator_owned not in conf  # instance.sh sets these per pod


def test_analytics_replica_settings_only_on_the_analytics_replica():
    plain = settings(config_files.postgresql_conf(spec(), ComputeResources(), False))
    analytics = settings(config_files.postgresql_conf(spec(), ComputeResources(), True))
    assert "hot_standby_feedback" not in plain
    assert analytics["hot_standby_feedback"] == "on"
    assert analytics["max_standby_streaming_delay"] == "15min"
    assert kb(analytics["work_mem"]) > kb(plain["work_mem"])


def test_pg_stat_statements_is_loaded_everywhere_unless_the_user_lists_libraries():
    for analytics in (False, True):
        conf = settings(config_files.postgresql_conf(spec(), ComputeResources(), analytics))
        assert conf["shared_preload_libraries"] == "pg_stat_statements"
        assert conf["pg_stat_statements.max"] == "5000"
        assert conf["pg_stat_statements.track"] == "top"
        assert conf["pg_stat_statements.track_utility"] == "off"
    own = settings(config_files.postgresql_conf(
        spec(parameters={"shared_preload_libraries": "auto_explain", "pg_stat_statements.track": "all",
                         "auto_explain.log_min_duration": "1s"}), ComputeResources(), False))
    assert own["shared_preload_libraries"] == "auto_explain"  # replaces ours, not added to it
    assert own["pg_stat_statements.track"] == "all"
    assert own["auto_explain.log_min_duration"] == "1s"


def test_synchronous_replication_waits_for_any_n_promotable_instances():
    sync = spec(synchronous={"enabled": True, "number": 2})
    conf = settings(config_files.postgresql_conf(sync, ComputeResources(), False, ["shop-1", "shop-2", "shop-3"]))
    assert conf["synchronous_standby_names"] == 'ANY 2 ("shop-1", "shop-2", "shop-3")'
    with pytest.raises(ValueError, match="needs 2 standby names"):
        config_files.postgresql_conf(sync, ComputeResources(), False, ["shop-1"])


def test_values_are_quoted_for_postgresql_conf():
    conf = config_files.postgresql_conf(spec(parameters={"application_name": "it's \\ here"}),
                                        ComputeResources(), False)
    assert "application_name = 'it''s \\\\ here'" in conf


def test_rendering_is_pure():
    s = spec(parameters={"b_setting": "1", "a_setting": "2"})
    assert config_files.postgresql_conf(s, ComputeResources(), True) == \
        config_files.postgresql_conf(s, ComputeResources(), True)


def test_pg_hba_allows_only_scram_from_the_pod_network():
    hba = config_files.pg_hba_conf(spec(allowedCIDRs=["10.0.0.0/8", "fd00::/8"]))
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert ["local", "all", "postgres", "peer"] in rules
    assert ["host", "replication", "streaming_replica", "10.0.0.0/8", "scram-sha-256"] in rules
    assert ["host", "all", "all", "fd00::/8", "scram-sha-256"] in rules
    assert all(rule[-1] in ("peer", "scram-sha-256") for rule in rules)
    assert len(rules) == 1 + 2 * 2
    assert not any(rule[0] == "host" and rule[3] in ("0.0.0.0/0", "::/0") for rule in rules)


def ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(delimiters=("=",), comment_prefixes=(";", "#"), interpolation=None)
    parser.read_string(text)
    return parser


def test_pgbouncer_routes_each_virtual_database_with_its_pool():
    parsed = ini(config_files.pgbouncer_ini(ClusterSpec(), BACKENDS))
    databases = dict(parsed["databases"])
    assert databases == {
        "shop": "host=shop-rw port=5432 dbname=shop pool_size=30",
        "shop_search": "host=shop-search port=5432 dbname=shop pool_size=25",
        "shop_orders": "host=shop-orders port=5432 dbname=shop pool_size=25",
        "shop_analytics": "host=shop-analytics port=5432 dbname=shop pool_size=20",
        "shop_ro": "host=shop-ro port=5432 dbname=shop pool_size=20",
    }
    bouncer = parsed["pgbouncer"]
    assert bouncer["pool_mode"] == "transaction"
    assert bouncer["max_client_conn"] == "1000"
    assert bouncer["default_pool_size"] == "100"
    assert bouncer["auth_type"] == "scram-sha-256"
    assert bouncer["auth_file"] == "/var/run/pgbouncer/userlist.txt"
    assert bouncer["admin_users"] == bouncer["stats_users"] == config_files.PGBOUNCER_ADMIN_USER
    assert bouncer["listen_port"] == "5432"
    assert bouncer["reserve_pool_size"] == "0"
    assert bouncer["ignore_startup_parameters"] == "extra_float_digits"
    assert bouncer["max_prepared_statements"] == "200"


@pytest.mark.parametrize("value", [0, 1, 5000])
def test_pgbouncer_max_prepared_statements_from_the_spec_0_disables(value):
    spec = ClusterSpec.model_validate({"pgbouncer": {"maxPreparedStatements": value}})
    assert spec.pgbouncer.max_prepared_statements == value
    assert ini(config_files.pgbouncer_ini(spec, BACKENDS))["pgbouncer"]["max_prepared_statements"] == str(value)


def test_pgbouncer_max_prepared_statements_is_not_negative():
    with pytest.raises(ValidationError, match="maxPreparedStatements"):
        ClusterSpec.model_validate({"pgbouncer": {"maxPreparedStatements": -1}})


def test_pgbouncer_without_read_only_route_and_with_other_settings():
    custom = ClusterSpec.model_validate({
        "postgres": {"database": "market"},
        "pgbouncer": {"readOnlyPoolSize": 0, "poolMode": "session", "maxClientConn": 50},
        "replicas": [{"name": "reports", "poolSize": 7, "promotable": False, "analytics": True}],
        "failover": {"enabled": False},
    })
    backends = {"primary": ("m-rw", 5432), "reports": ("m-reports", 6543)}
    parsed = ini(config_files.pgbouncer_ini(custom, backends, 6432, listen_addr="127.0.0.1", run_dir="/run/x"))
    assert dict(parsed["databases"]) == {
        "market": "host=m-rw port=5432 dbname=market pool_size=30",
        "market_reports": "host=m-reports port=6543 dbname=market pool_size=7",
    }
    assert parsed["pgbouncer"]["pool_mode"] == "session"
    assert parsed["pgbouncer"]["listen_port"] == "6432"
    assert parsed["pgbouncer"]["auth_file"] == "/run/x/userlist.txt"


def test_pgbouncer_needs_a_backend_for_every_route():
    backends = {k: v for k, v in BACKENDS.items() if k not in ("orders", "ro")}
    with pytest.raises(ValueError, match="no backend for orders, ro"):
        config_files.pgbouncer_ini(ClusterSpec(), backends)
