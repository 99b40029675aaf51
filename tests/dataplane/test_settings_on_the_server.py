"""The settings table the operator ships is what PostgreSQL 15 reports, and PostgreSQL
agrees with every verdict the operator gives on a value (ALTER SYSTEM parses a value like a
configuration file does, without applying it)."""

from __future__ import annotations

import hashlib
import time

import psycopg
import pytest

from shopdb_operator import pgsettings, postgres

SAMPLES = [
    ("work_mem", "64MB"), ("work_mem", "1.5GB"), ("work_mem", "4096"), ("work_mem", " 8 MB"),
    ("work_mem", "banana"), ("work_mem", "32kB"), ("work_mem", "10 sec"), ("work_mem", "2.5"),
    ("shared_buffers", "128MB"), ("shared_buffers", "64TB"), ("shared_buffers", "100000 B"),
    ("max_connections", "0x20"), ("max_connections", "010"), ("max_connections", "0"),
    ("max_connections", "10MB"), ("max_connections", "99999999999"), ("max_connections", "1e2"),
    ("checkpoint_timeout", "5min"), ("checkpoint_timeout", "10s"), ("checkpoint_timeout", "5 minutes"),
    ("statement_timeout", "1.5s"), ("statement_timeout", "-1"), ("log_min_duration_statement", "-1"),
    ("log_min_duration_statement", "-2"), ("random_page_cost", "1.1"), ("random_page_cost", "-1"),
    ("random_page_cost", "nan"), ("vacuum_cost_delay", "2ms"), ("vacuum_cost_delay", "500ms"),
    ("enable_seqscan", "OFF"), ("enable_seqscan", "t"), ("enable_seqscan", "ye"), ("enable_seqscan", "o"),
    ("enable_seqscan", "maybe"), ("synchronous_commit", "remote_apply"), ("synchronous_commit", "true"),
    ("synchronous_commit", "sometimes"), ("log_statement", "DDL"), ("block_size", "16384"),
    ("work_mme", "4MB"), ("huge_pages", "try"), ("huge_pages", "yes"), ("jit", "of"),
]


def test_the_shipped_table_is_what_postgresql_reports(shop_cluster):
    with psycopg.connect(**shop_cluster.primary.dsn()) as conn:
        rows = [r for r in conn.execute(pgsettings.QUERY).fetchall() if "." not in r[0]]
        major = conn.info.server_version // 10000
    shipped = (pgsettings.Path(pgsettings.__file__).parent / f"{major}.json").read_text()
    assert pgsettings.dump(rows) == shipped, "regenerate with: python -m shopdb_operator.pgsettings DSN"


@pytest.mark.parametrize("name, value", SAMPLES)
def test_postgresql_agrees_with_every_verdict(shop_cluster, name, value):
    with psycopg.connect(**shop_cluster.primary.dsn(), autocommit=True) as conn:
        try:
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            conn.execute(f"ALTER SYSTEM RESET {name}")
            server_error = None
        except psycopg.Error as error:
            server_error = str(error).splitlines()[0]
    ours = pgsettings.parameter_problems(15, {name: value})
    assert (server_error is None) == (ours == []), f"PostgreSQL: {server_error}; operator: {ours}"


def test_what_a_reload_would_refuse_and_what_waits_for_a_restart(shop_cluster):
    """The operator's reload checks (postgres.configuration_errors, pending_restart) on a
    real server: a time zone only its check hook refuses, a value the settings table
    refuses, a bad pg_hba line, and a setting that only needs a restart."""
    instance = shop_cluster.analytics
    conf, hba = instance.config_dir / "postgresql.conf", instance.config_dir / "pg_hba.conf"
    good_conf, good_hba = conf.read_text(), hba.read_text()
    try:
        conf.write_text(good_conf + "timezone = 'Mars/Olympus_Mons'\nshared_buffers = 'banana'\n"
                        "max_locks_per_transaction = 128\n")
        hba.write_text(good_hba + "host all all 10.0.0.0/33 scram-sha-256\n")
        with postgres.connect(**instance.dsn()) as conn:
            digests = postgres.file_digests(conn, [str(conf), "/nonexistent"])
            errors = postgres.configuration_errors(conn)
        assert digests == {str(conf): hashlib.md5(conf.read_bytes()).hexdigest(), "/nonexistent": None}
        assert len(errors) == 3, errors
        assert 'timezone: invalid value for parameter "TimeZone": "Mars/Olympus_Mons"' in errors[0]
        assert "shared_buffers: invalid value 'banana'" in errors[1]
        assert errors[2].startswith("pg_hba.conf:") and "invalid CIDR mask" in errors[2]
        conf.write_text(good_conf + "max_locks_per_transaction = 128\nwork_mem = '7MB'\n")
        hba.write_text(good_hba)
        with postgres.connect(**instance.dsn()) as conn:
            assert postgres.configuration_errors(conn) == []
            before = postgres.configuration_load_time(conn)
            postgres.reload_configuration(conn)
        time.sleep(0.5)
        with postgres.connect(**instance.dsn()) as conn:
            assert postgres.configuration_load_time(conn) > before
            assert postgres.pending_restart(conn) == ["max_locks_per_transaction"]
            assert conn.execute("SHOW work_mem").fetchone()[0] == "7MB"
    finally:
        conf.write_text(good_conf)
        hba.write_text(good_hba)
        with postgres.connect(**instance.dsn()) as conn:
            postgres.reload_configuration(conn)
