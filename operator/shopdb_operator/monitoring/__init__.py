"""Monitoring: Prometheus alert rules (rules.py) and the postgres_exporter custom queries
(queries.yaml) they read."""

from pathlib import Path

from .rules import DEFAULT_THRESHOLDS, Thresholds, prometheus_rule, rule_groups, thresholds_from

QUERIES_FILE = Path(__file__).with_name("queries.yaml")

__all__ = ["DEFAULT_THRESHOLDS", "QUERIES_FILE", "Thresholds", "prometheus_rule", "rule_groups", "thresholds_from"]
