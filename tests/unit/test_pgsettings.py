"""Parameter values are judged as PostgreSQL 15 judges them (its pg_settings table and the
parsing rules of guc.c), with a message that says what is allowed."""

import pytest

from shopdb_operator import pgsettings
from shopdb_operator.pgsettings import in_bytes, needs_restart, parameter_problems


@pytest.mark.parametrize("name, value", [
    ("work_mem", "64MB"), ("work_mem", "1.5GB"), ("work_mem", "4096"), ("work_mem", " 8 MB"),
    ("shared_buffers", "128MB"), ("shared_buffers", "16384"), ("max_connections", "0x20"),
    ("checkpoint_timeout", "5min"), ("checkpoint_timeout", "300"), ("statement_timeout", "1.5s"),
    ("log_min_duration_statement", "-1"), ("random_page_cost", "1.1"), ("vacuum_cost_delay", "2ms"),
    ("enable_seqscan", "OFF"), ("enable_seqscan", "t"), ("enable_seqscan", "ye"), ("enable_seqscan", "0"),
    ("synchronous_commit", "remote_apply"), ("synchronous_commit", "true"), ("log_statement", "DDL"),
    ("timezone", "Europe/Paris"), ("pg_stat_statements.max", "anything"),
])
def test_accepted(name, value):
    assert parameter_problems(15, {name: value}) == []


@pytest.mark.parametrize("name, value, message", [
    ("work_mem", "banana", "work_mem: 'banana' is not valid (it is not a number); allowed: an amount of memory "
                           "from 64kB to 2147483647kB (units B, kB, MB, GB, TB)"),
    ("work_mem", "32kB", "allowed: an amount of memory from 64kB"),
    ("work_mem", "10 sec", "(valid units are B, kB, MB, GB and TB)"),
    ("shared_buffers", "64TB", "allowed: an amount of memory from 128kB to"),
    ("checkpoint_timeout", "10s", "allowed: a duration from 30s to 1d (units us, ms, s, min, h, d)"),
    ("checkpoint_timeout", "5 minutes", "(valid units are us, ms, s, min, h and d)"),
    ("max_connections", "0", "allowed: a whole number from 1 to 262143"),
    ("max_connections", "10MB", "(it takes no unit)"),
    ("max_connections", "99999999999", "allowed: a whole number"),
    ("enable_seqscan", "o", "allowed: on or off"),
    ("enable_seqscan", "maybe", "allowed: on or off"),
    ("synchronous_commit", "sometimes", "allowed: one of local, remote_write, remote_apply, on, off"),
    ("random_page_cost", "nan", "(it is not a number)"),
    ("block_size", "16384", "block_size: is fixed when PostgreSQL is built or initialized"),
    ("work_mme", "4MB", "work_mme: PostgreSQL 15 has no such setting"),
])
def test_refused_with_what_is_allowed(name, value, message):
    problems = parameter_problems(15, {name: value})
    assert len(problems) == 1 and message in problems[0], problems


def test_memory_in_bytes_and_restart_context():
    assert in_bytes(15, "shared_buffers", "1GB") == 1024 ** 3
    assert in_bytes(15, "shared_buffers", "16384") == 16384 * 8192  # a bare number counts in 8kB pages
    assert in_bytes(15, "work_mem", "banana") is None and in_bytes(15, "max_connections", "5") is None
    assert needs_restart(15, "shared_buffers") and needs_restart(15, "max_connections")
    assert not needs_restart(15, "work_mem") and not needs_restart(15, "log_min_duration_statement")


def test_only_versions_with_a_table_are_checked():
    assert pgsettings.shipped_majors() == [15]
    assert parameter_problems(16, {"work_mem": "banana"}) == []
