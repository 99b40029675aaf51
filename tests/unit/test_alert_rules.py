"""The alert rules: promtool accepts them and their unit tests pass, every alert is tested and
has a runbook section, thresholds change the expressions, and the exporter queries are well formed.

The promtool tests need promtool: $PROMTOOL, or where tests/bootstrap.sh puts Debian trixie's
(/var/cache/shopdb/prometheus-<PROMETHEUS_TRIXIE_DEB>/bin/promtool); without one they skip,
except under CI (env CI set) where they fail.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from shopdb_operator.api import generate
from shopdb_operator.monitoring import QUERIES_FILE, prometheus_rule, rule_groups, thresholds_from
from shopdb_operator.monitoring.rules import DEFAULT_THRESHOLDS, alert_names, anchor

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "manifests" / "monitoring" / "prometheus-rules.yaml"
PROMETHEUS_RULE_FILE = REPO / "manifests" / "monitoring" / "prometheus-rule.yaml"
TESTS_DIR = REPO / "tests" / "monitoring"
RUNBOOKS = REPO / "docs" / "runbooks.md"
VERSIONS = REPO / "tests" / "cluster" / "lib" / "versions.sh"


def promtool_tests() -> list[Path]:
    return sorted(TESTS_DIR.glob("*.yaml"))


@pytest.fixture(scope="session")
def promtool() -> str:
    deb = re.search(r"^PROMETHEUS_TRIXIE_DEB=(\S+)$", VERSIONS.read_text(), re.M).group(1)
    cache = os.environ.get("SHOPDB_CACHE", "/var/cache/shopdb")
    for candidate in (os.environ.get("PROMTOOL"), f"{cache}/prometheus-{deb}/bin/promtool"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = f"no promtool ($PROMTOOL, {cache}/prometheus-{deb}/bin/promtool); run tests/bootstrap.sh"
    pytest.fail(message)  # `make test` runs tests/bootstrap.sh, which installs it


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_promtool_checks_the_generated_rules(promtool, tmp_path):
    run(promtool, "check", "rules", str(RULES_FILE))
    # The PrometheusRule's spec is the same rules file.
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(yaml.safe_load(PROMETHEUS_RULE_FILE.read_text())["spec"]))
    run(promtool, "check", "rules", str(spec))


@pytest.mark.parametrize("test_file", promtool_tests(), ids=lambda p: p.name)
def test_promtool_unit_tests_pass(promtool, test_file):
    run(promtool, "test", "rules", test_file.name, cwd=test_file.parent)


def test_the_tests_read_the_generated_rules_file():
    assert promtool_tests(), "no promtool tests in tests/monitoring/"
    for path in promtool_tests():
        files = [(path.parent / f).resolve() for f in yaml.safe_load(path.read_text())["rule_files"]]
        assert files == [RULES_FILE], path


def test_generated_rules_files_are_up_to_date():
    artifacts = generate.artifacts()
    assert RULES_FILE in artifacts and PROMETHEUS_RULE_FILE in artifacts
    for path in (RULES_FILE, PROMETHEUS_RULE_FILE):
        assert path.read_text() == artifacts[path], f"{path.name} is stale: run python -m shopdb_operator.api.generate"
    assert yaml.safe_load(RULES_FILE.read_text()) == rule_groups()
    document = yaml.safe_load(PROMETHEUS_RULE_FILE.read_text())
    assert (document["apiVersion"], document["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert document["spec"] == rule_groups()


def test_every_alert_has_a_firing_case_and_a_pending_case():
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in promtool_tests():
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = alert_names(rule_groups())
    assert len(names) == len(set(names)), "alert names must be unique"
    assert not set(names) - firing, f"alerts without a firing test case: {sorted(set(names) - firing)}"
    assert not set(names) - quiet, f"alerts without a case before `for:` / below threshold: {sorted(set(names) - quiet)}"
    assert not (firing | quiet) - set(names), "tests of alerts that do not exist"


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook's headings."""
    anchors = set()
    for line in RUNBOOKS.read_text().splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def test_every_alert_is_complete_and_has_a_runbook_section():
    anchors = runbook_anchors()
    for group in rule_groups()["groups"]:
        for rule in group["rules"]:
            name = rule["alert"]
            assert re.fullmatch(r"ShopDB[A-Za-z]+", name)
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name
            assert rule["labels"]["severity"] in {"warning", "critical"}, name
            annotations = rule["annotations"]
            assert annotations["summary"] and annotations["description"], name
            assert "{{ $labels.namespace }}/{{ $labels.cluster }}" in annotations["summary"], name
            url = annotations["runbook_url"]
            assert url == f"docs/runbooks.md#{anchor(name)}", name
            assert anchor(name) in anchors, f"docs/runbooks.md has no section `## {name}`"


def test_instance_alerts_name_the_instance():
    for group in rule_groups()["groups"]:
        for rule in group["rules"]:
            if re.search(r"by \(namespace, cluster, pod", rule["expr"]):
                text = rule["annotations"]["summary"] + rule["annotations"]["description"]
                assert "$labels.pod" in text, rule["alert"]


def expressions(groups: dict) -> dict[str, str]:
    return {rule["alert"]: rule["expr"] for group in groups["groups"] for rule in group["rules"]}


def test_thresholds_default_to_the_design():
    exprs = expressions(rule_groups())
    assert exprs["ShopDBConnectionsHigh"].rstrip().endswith("> 80")
    assert "> 0.1\n" in exprs["ShopDBSlowQueries"]  # 100 ms
    assert "rate(shopdb_statements_calls_total[5m])) > 1" in exprs["ShopDBSlowQueries"]
    assert exprs["ShopDBReplicationLag"].rstrip().endswith("> 1")
    assert "< 0.9\n" in exprs["ShopDBCacheHitRatioLow"]
    assert exprs["ShopDBVolumeFilling"].rstrip().endswith("> 80")
    assert (DEFAULT_THRESHOLDS.connections_percent, DEFAULT_THRESHOLDS.query_time_ms,
            DEFAULT_THRESHOLDS.replication_lag_seconds, DEFAULT_THRESHOLDS.cache_hit_ratio,
            DEFAULT_THRESHOLDS.volume_percent) == (80, 100, 1, 0.9, 80)


def test_overridden_thresholds_change_the_expressions_and_nothing_else():
    default = rule_groups()
    custom = rule_groups({"queryTimeMs": 50, "connectionsPercent": 70, "cacheHitRatio": 0.95,
                          "replicationLagSeconds": 2.5, "volumePercent": 75})
    before, after = expressions(default), expressions(custom)
    assert "> 0.05\n" in after["ShopDBSlowQueries"] and "> 0.1\n" not in after["ShopDBSlowQueries"]
    assert after["ShopDBConnectionsHigh"].rstrip().endswith("> 70")
    assert "< 0.95\n" in after["ShopDBCacheHitRatioLow"]
    assert after["ShopDBReplicationLag"].rstrip().endswith("> 2.5")
    assert after["ShopDBVolumeFilling"].rstrip().endswith("> 75")
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"ShopDBSlowQueries", "ShopDBConnectionsHigh", "ShopDBCacheHitRatioLow",
                       "ShopDBReplicationLag", "ShopDBVolumeFilling"}
    assert "50 ms" in next(r for g in custom["groups"] for r in g["rules"]
                           if r["alert"] == "ShopDBSlowQueries")["annotations"]["summary"]
    assert prometheus_rule({"queryTimeMs": 50})["spec"] == rule_groups({"queryTimeMs": 50})


def test_overridden_thresholds_still_pass_promtool(promtool, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups({"queryTimeMs": 50, "cacheHitRatio": 0.95, "xidAgeWarning": 2e8})))
    run(promtool, "check", "rules", str(path))


@pytest.mark.parametrize("bad, message", [
    ({"queryTimeMS": 50}, "unknown threshold"),
    ({"connectionsPercent": 180}, "percentage"),
    ({"cacheHitRatio": 90}, "ratio"),
    ({"replicationLagSeconds": -1}, ">= 0"),
    ({"queryTimeMs": "50"}, "number"),
])
def test_bad_thresholds_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        thresholds_from(bad)


# --- postgres_exporter queries --------------------------------------------------------------------

COLUMN_USAGES = {"LABEL", "GAUGE", "COUNTER", "DISCARD", "MAPPEDMETRIC", "DURATION"}


def queries() -> dict:
    return yaml.safe_load(QUERIES_FILE.read_text())


def test_queries_file_has_the_exporters_shape():
    for namespace, query in queries().items():
        assert re.fullmatch(r"shopdb_[a-z_]+", namespace), namespace
        assert set(query) <= {"query", "metrics", "master", "cache_seconds", "runonserver"}, namespace
        assert isinstance(query["query"], str) and query["query"].lstrip().upper().startswith("SELECT"), namespace
        assert isinstance(query["metrics"], list) and query["metrics"], namespace
        for metric in query["metrics"]:
            assert isinstance(metric, dict) and len(metric) == 1, (namespace, metric)
            (column, mapping), = metric.items()
            assert re.fullmatch(r"[a-z_]+", column), (namespace, column)
            assert mapping["usage"] in COLUMN_USAGES, (namespace, column)
            assert mapping.get("description"), (namespace, column)
            if mapping["usage"] == "COUNTER":
                assert column.endswith("_total"), (namespace, column)
            # every column the mapping names is one the query selects
            assert re.search(rf'\bAS "?{column}"?\b|^\s*{column},?$|\b{column}\b', query["query"], re.M), (namespace, column)


def exported_metrics() -> set[str]:
    return {f"{namespace}_{column}" for namespace, query in queries().items()
            for metric in query["metrics"] for column, mapping in metric.items() if mapping["usage"] != "LABEL"}


def test_rules_use_only_metrics_the_queries_export_among_the_shopdb_exporter_ones():
    exported = exported_metrics()
    operator_metrics = {"shopdb_reconcile_total", "shopdb_cluster_phase", "shopdb_cluster_instances",
                        "shopdb_cluster_instances_ready", "shopdb_failovers_total", "shopdb_failover_step_seconds",
                        "shopdb_failover_blocked", "shopdb_rollout_pending_instances",
                        "shopdb_backup_last_success_timestamp_seconds",
                        "shopdb_wal_archive_last_success_timestamp_seconds", "shopdb_backup_max_age_seconds"}
    used = set()
    for expr in expressions(rule_groups()).values():
        used |= set(re.findall(r"\bshopdb_[a-z_]+", expr))
    assert used - operator_metrics <= exported, sorted(used - operator_metrics - exported)
    assert "shopdb_replication_lag_seconds" in exported


def test_replication_lag_query_is_zero_on_a_primary_and_on_a_caught_up_replica():
    sql = " ".join(queries()["shopdb_replication"]["query"].split())
    assert "WHEN NOT pg_is_in_recovery() THEN 0" in sql
    assert "pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()" in sql
    assert "now() - pg_last_xact_replay_timestamp()" in sql


def test_default_partitions_are_found_by_catalog_not_by_name():
    sql = queries()["shopdb_default_partition"]["query"]
    assert "partdefid" in sql and "_default" not in sql
