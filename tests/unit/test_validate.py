"""Each rejection comes with a message that names the field and says why."""

import pytest

from shopdb_operator.api.validate import (InvalidSpec, applied_record, cron_problem, parse_spec,
                                          unsafe_change_problems)


def problems(raw):
    with pytest.raises(InvalidSpec) as err:
        parse_spec(raw)
    return " | ".join(err.value.problems)


def test_default_spec_is_valid():
    assert parse_spec({}).postgres.database == "shop"


def test_duplicate_replica_names():
    assert "repeated: search" in problems({"replicas": [{"name": "search"}, {"name": "search"}]})


def test_failover_needs_a_promotable_replica():
    text = problems({"replicas": [{"name": "analytics", "promotable": False}]})
    assert "failover needs at least one replica with promotable: true" in text


def test_pools_must_fit_max_connections():
    text = problems({"postgres": {"parameters": {"max_connections": "100"}}})
    assert "pools need 260 connections" in text and "max_connections is 100" in text


def test_integer_setting_must_be_a_number():
    assert ("spec.postgres.parameters.max_connections: 'many' is not valid (it is not a number); "
            "allowed: a whole number from 1 to 262143") in problems({"postgres": {"parameters": {"max_connections": "many"}}})


def test_without_a_settings_table_integers_are_still_checked():
    assert "max_connections: 'many' is not a whole number" in problems(
        {"postgres": {"version": 17, "parameters": {"max_connections": "many"}}})
    assert parse_spec({"postgres": {"version": 17, "parameters": {"work_mem": "banana"}}})  # the reload check catches it


def test_extension_settings_and_a_users_own_preload_libraries_are_accepted():
    spec = parse_spec({"postgres": {"parameters": {
        "shared_preload_libraries": "pg_stat_statements,auto_explain", "pg_stat_statements.max": "10000",
        "pg_stat_statements.track": "all", "pg_stat_statements.track_utility": "on",
        "auto_explain.log_min_duration": "250ms"}}})
    assert spec.postgres.parameters["pg_stat_statements.max"] == "10000"


def test_shared_buffers_must_fit_the_smaller_role():
    text = problems({"postgres": {"parameters": {"shared_buffers": "64GB"},
                                  "resources": {"primary": {"memory": "256Mi"}}}})
    assert "shared_buffers: 64GB is more than half the primary's memory limit (256Mi)" in text
    assert "spec.postgres.resources.primary.memory" in text
    assert parse_spec({"postgres": {"parameters": {"shared_buffers": "8GB"}}})  # replicas have 16Gi


def test_work_mem_must_be_below_the_memory_limit():
    assert "work_mem: 16GB is not below the replica's memory limit (16Gi)" in problems(
        {"postgres": {"parameters": {"work_mem": "16GB"}}})


@pytest.mark.parametrize("field", ["cpu", "memory"])
def test_resources_must_be_above_zero(field):
    assert f"spec.postgres.resources.primary.{field}: '0' must be above zero" in problems(
        {"postgres": {"resources": {"primary": {field: "0"}}}})


def test_the_lease_leaves_at_least_three_writable_seconds_per_renewal():
    assert "durationSeconds - fenceMarginSeconds must be at least 3" in problems(
        {"failover": {"lease": {"durationSeconds": 5, "fenceMarginSeconds": 3}}})
    assert "fenceMarginSeconds" in problems({"failover": {"lease": {"fenceMarginSeconds": 0}}})
    lease = parse_spec({"failover": {"lease": {"durationSeconds": 30}}}).failover.lease
    assert (lease.duration_seconds, lease.fence_margin_seconds, lease.clock_skew_seconds) == (30, 2, 1)


def test_synchronous_number_bounded_by_promotable_replicas():
    assert "synchronous.number" in problems({"postgres": {"synchronous": {"enabled": True, "number": 3}}})


@pytest.mark.parametrize("schedule, fragment", [
    ("61 * * * *", "outside 0-59"),
    ("* * *", "five fields"),
    ("0 0 1 13 *", "outside 1-12"),
    ("*/0 * * * *", "bad step"),
    ("a * * * *", "not a number"),
])
def test_bad_cron_schedules(schedule, fragment):
    assert fragment in cron_problem(schedule)
    assert fragment in problems({"maintenance": {"materializedViews": [{"name": "v", "schedule": schedule}]}})


@pytest.mark.parametrize("schedule", ["0 * * * *", "*/15 2-4 1,15 * 0-6", "@hourly", "0 0 1 * *"])
def test_good_cron_schedules(schedule):
    assert cron_problem(schedule) is None


def test_field_errors_carry_their_path():
    assert "spec.replicas[0].poolSize" in problems({"replicas": [{"name": "a", "poolSize": -1}]})


def test_unsafe_changes_are_named():
    before = applied_record(parse_spec({}))
    shrink = parse_spec({"postgres": {"storage": {"size": "500Gi"}}})
    assert "storage cannot shrink (1Ti -> 500Gi)" in unsafe_change_problems(before, shrink)[0]
    upgrade = parse_spec({"postgres": {"version": 16}})
    assert "major version cannot change in place (15 -> 16)" in unsafe_change_problems(before, upgrade)[0]
    grow = parse_spec({"postgres": {"storage": {"size": "2Ti"}}})
    assert unsafe_change_problems(before, grow) == []
    assert unsafe_change_problems(None, shrink) == []
