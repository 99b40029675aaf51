"""The operator's /metrics: what each function records, read back the way Prometheus reads it
(the text exposition, served over loopback and parsed), failovers counted once, a deleted
cluster's series gone, and the backup age a schedule allows."""

from __future__ import annotations

import datetime
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import shopdb_operator
from shopdb_operator import metrics
from shopdb_operator.cli import parser as cli_parser
from shopdb_operator.failover import decide
from shopdb_operator.metrics import OperatorMetrics

T0 = datetime.datetime(2026, 11, 24, 22, 0, 0, tzinfo=datetime.timezone.utc)
HOUR = 3600
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def m() -> OperatorMetrics:
    return OperatorMetrics()  # a registry of its own: tests never see each other's series


def samples(m: OperatorMetrics) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, from the text exposition."""
    found = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(m: OperatorMetrics, name: str, **labels) -> float | None:
    return samples(m).get((name, tuple(sorted(labels.items()))))


def series(m: OperatorMetrics, name: str, **labels) -> list[dict]:
    """The label sets of `name` that include `labels`."""
    return [dict(key) for (sample, key), _ in samples(m).items()
            if sample == name and labels.items() <= dict(key).items()]


def completed_failover(kind: str = decide.FAILOVER, start: datetime.datetime = T0, old: str = "shop-1",
                       new: str = "shop-2") -> dict:
    """status.failover of a failover that ran every step, 0.5 s apart, as execute.py records it."""
    state = decide.start(kind, old, "primary shop-1 is down: its pod is gone", start,
                         new if kind == decide.SWITCHOVER else None)
    moment = start
    for step in decide.STEPS:
        moment += datetime.timedelta(seconds=0.5)
        state = decide.mark_step(state, step, moment, **({"to": new} if step == decide.CHOOSE else {}))
    return decide.complete(state, moment)


def status_after(*failovers: dict, **fields) -> dict:
    """A status with `failovers` completed, in order, as history and last record."""
    history = []
    for state in failovers:
        history = decide.with_history(history, state)
    return {"failover": failovers[-1] if failovers else None, "failoverHistory": history, **fields}


BACKUP_SPEC = {"backup": {"repositories": [
    {"name": "eu", "s3": {"endpoint": "s3.eu.example.com", "bucket": "shop-backups",
                          "credentials": {"secretName": "s3-eu"}}},
    {"name": "us", "s3": {"endpoint": "s3.us.example.com", "bucket": "shop-backups-us",
                          "credentials": {"secretName": "s3-us"}}},
]}}


# --- exposition over HTTP ---------------------------------------------------------------------

def test_served_over_http_with_process_metrics_and_version(m):
    m.observe_reconcile("shop", "shop", metrics.OK, 0.3)
    server, thread = metrics.serve("127.0.0.1:0", m)
    try:
        port = server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["shopdb_operator_info"].samples[0].labels == {"version": shopdb_operator.__version__}
    assert families["shopdb_operator_info"].samples[0].value == 1
    assert families["process_cpu_seconds"].type == "counter"
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert "python_info" in families  # the platform collector
    reconciled = [s for s in families["shopdb_reconcile"].samples if s.name == "shopdb_reconcile_total"]
    assert [(s.labels, s.value) for s in reconciled] == [
        ({"namespace": "shop", "cluster": "shop", "result": "ok"}, 1.0)]


def test_registry_is_not_the_global_default():
    from prometheus_client import REGISTRY

    assert metrics.METRICS.registry is not REGISTRY
    assert OperatorMetrics().registry is not metrics.METRICS.registry


def test_address_parsing():
    assert metrics.parse_address("0.0.0.0:9560") == ("0.0.0.0", 9560)
    assert metrics.parse_address(":9560") == ("0.0.0.0", 9560)
    assert metrics.parse_address("[::]:9560") == ("::", 9560)
    for bad in ("9560", "host:port", "0.0.0.0:70000"):
        with pytest.raises(ValueError):
            metrics.parse_address(bad)


def test_cli_serves_on_9560_by_default_and_can_turn_it_off():
    assert cli_parser().parse_args(["run"]).metrics_address == metrics.DEFAULT_ADDRESS == "0.0.0.0:9560"
    assert cli_parser().parse_args(["run", "--metrics-address", ""]).metrics_address == ""
    assert cli_parser().parse_args(["run", "--metrics-address", "127.0.0.1:9000"]).metrics_address == "127.0.0.1:9000"
    with pytest.raises(SystemExit):
        cli_parser().parse_args(["run", "--metrics-address", "nonsense"])


def test_the_deployment_names_the_metrics_port_the_cli_serves():
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "30-deployment.yaml").read_text()) if d]
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == metrics.parse_address(cli_parser().parse_args(["run"]).metrics_address)[1] == 9560
    assert ports["healthz"] == 8080  # kopf's liveness stays where it was


# --- reconciliation ---------------------------------------------------------------------------

def test_reconcile_counter_and_histogram(m):
    m.observe_reconcile("shop", "a", metrics.OK, 0.2)
    m.observe_reconcile("shop", "a", metrics.OK, 3.0)
    m.observe_reconcile("shop", "a", metrics.ERROR, 0.1)
    assert value(m, "shopdb_reconcile_total", namespace="shop", cluster="a", result="ok") == 2
    assert value(m, "shopdb_reconcile_total", namespace="shop", cluster="a", result="error") == 1
    assert value(m, "shopdb_reconcile_total", namespace="shop", cluster="a", result="invalid") is None
    assert value(m, "shopdb_reconcile_duration_seconds_count", namespace="shop", cluster="a") == 3
    assert value(m, "shopdb_reconcile_duration_seconds_sum", namespace="shop", cluster="a") == pytest.approx(3.3)
    assert value(m, "shopdb_reconcile_duration_seconds_bucket", namespace="shop", cluster="a", le="0.25") == 2
    assert value(m, "shopdb_reconcile_duration_seconds_bucket", namespace="shop", cluster="a", le="+Inf") == 3
    with pytest.raises(ValueError):
        m.observe_reconcile("shop", "a", "maybe", 1)


def test_reconciling_counts_ok_error_invalid_and_skips(m):
    with m.reconciling("shop", "a"):
        pass
    with pytest.raises(RuntimeError):
        with m.reconciling("shop", "a"):
            raise RuntimeError("the API server refused")
    with pytest.raises(RuntimeError):
        with m.reconciling("shop", "a") as measured:
            measured.result = metrics.INVALID
            raise RuntimeError("InvalidSpec")
    with m.reconciling("shop", "a") as measured:
        measured.skip = True  # deleted meanwhile: nothing counted
    assert {r["result"]: value(m, "shopdb_reconcile_total", **r)
            for r in series(m, "shopdb_reconcile_total", cluster="a")} == {"ok": 1, "error": 1, "invalid": 1}
    assert value(m, "shopdb_reconcile_duration_seconds_count", namespace="shop", cluster="a") == 3


# --- status-derived gauges --------------------------------------------------------------------

def test_phase_gauge_switches(m):
    m.set_cluster_status("shop", "a", {"phase": "Creating"}, {})
    phases = {p: value(m, "shopdb_cluster_phase", namespace="shop", cluster="a", phase=p)
              for p in ("Creating", "Ready", "Degraded", "InvalidSpec")}
    assert phases == {"Creating": 1, "Ready": 0, "Degraded": 0, "InvalidSpec": 0}
    m.set_cluster_status("shop", "a", {"phase": "Ready"}, {})
    assert value(m, "shopdb_cluster_phase", namespace="shop", cluster="a", phase="Creating") == 0
    assert value(m, "shopdb_cluster_phase", namespace="shop", cluster="a", phase="Ready") == 1
    m.set_cluster_status("shop", "a", {"phase": "InvalidSpec"}, {})
    assert value(m, "shopdb_cluster_phase", namespace="shop", cluster="a", phase="Ready") == 0
    assert value(m, "shopdb_cluster_phase", namespace="shop", cluster="a", phase="InvalidSpec") == 1
    assert len(series(m, "shopdb_cluster_phase", cluster="a")) == 4


def test_instances_desired_from_spec_and_ready_from_status(m):
    status = {"phase": "Degraded", "instances": [
        {"name": "a-1", "ready": True}, {"name": "a-2", "ready": True},
        {"name": "a-3", "ready": False}, {"name": "a-analytics", "ready": True}]}
    m.set_cluster_status("shop", "a", status, {})  # the default spec: primary + 3 replicas
    assert value(m, "shopdb_cluster_instances", namespace="shop", cluster="a") == 4
    assert value(m, "shopdb_cluster_instances_ready", namespace="shop", cluster="a") == 3
    m.set_cluster_status("shop", "a", status, {"replicas": [{"name": "search"}]})
    assert value(m, "shopdb_cluster_instances", namespace="shop", cluster="a") == 2


def test_invalid_spec_leaves_desired_instances_as_they_were(m):
    m.set_cluster_status("shop", "a", {"phase": "Ready"}, {})
    m.set_cluster_status("shop", "a", {"phase": "InvalidSpec"}, {"replicas": "not a list"})
    assert value(m, "shopdb_cluster_instances", namespace="shop", cluster="a") == 4
    assert value(m, "shopdb_cluster_phase", namespace="shop", cluster="a", phase="InvalidSpec") == 1


def test_rollout_pending_instances(m):
    m.set_cluster_status("shop", "a", {}, {})
    assert value(m, "shopdb_rollout_pending_instances", namespace="shop", cluster="a") == 0
    rollout = {"pending": {"a-analytics": "a new pod template", "a-1": "a new pod template",
                           "a-3": "settings wait for a restart: shared_buffers"},
               "deferred": {"a-2": "the pod template of a new operator version"},
               "current": {"action": "restart-replica", "instance": "a-analytics", "podUID": "u1"}}
    m.set_cluster_status("shop", "a", {"rollout": rollout}, {})
    assert value(m, "shopdb_rollout_pending_instances", namespace="shop", cluster="a") == 3
    # a-analytics' new pod is up to date but not back yet: still counted until it is
    rollout = {"pending": {"a-1": "a new pod template"}, "current": {"instance": "a-analytics"}}
    m.set_cluster_status("shop", "a", {"rollout": rollout}, {})
    assert value(m, "shopdb_rollout_pending_instances", namespace="shop", cluster="a") == 2
    m.set_cluster_status("shop", "a", {"rollout": {"pending": {}, "current": None, "done": ["a-1"]}}, {})
    assert value(m, "shopdb_rollout_pending_instances", namespace="shop", cluster="a") == 0


# --- failovers ----------------------------------------------------------------------------------

def test_completed_failover_counts_once_and_sets_step_seconds(m):
    state = completed_failover()
    m.set_cluster_status("shop", "a", {"phase": "Ready"}, {})  # before: nothing completed
    assert m.failover_completed("shop", "a", state) is True
    assert m.failover_completed("shop", "a", state) is False  # reported twice
    m.set_cluster_status("shop", "a", status_after(state), {})  # and seen in status after
    labels = dict(namespace="shop", cluster="a", **{"from": "shop-1", "to": "shop-2", "kind": "failover"})
    assert value(m, "shopdb_failovers_total", **labels) == 1
    assert len(series(m, "shopdb_failovers_total", cluster="a")) == 1
    steps = {s["step"]: value(m, "shopdb_failover_step_seconds", **s)
             for s in series(m, "shopdb_failover_step_seconds", cluster="a")}
    assert steps == {step: 0.5 for step in decide.STEPS}


def test_a_running_failover_is_not_counted(m):
    state = decide.mark_step(decide.start(decide.FAILOVER, "shop-1", "down", T0), decide.CHOOSE, T0, to="shop-2")
    assert m.failover_completed("shop", "a", state) is False
    m.set_cluster_status("shop", "a", {"failover": state}, {})
    assert series(m, "shopdb_failovers_total") == []


def test_a_new_completion_seen_in_status_counts_once(m):
    first = completed_failover()
    m.set_cluster_status("shop", "a", {"phase": "Ready"}, {})
    switchover = completed_failover(decide.SWITCHOVER, T0 + datetime.timedelta(hours=1), old="shop-2", new="shop-3")
    # completed by another path than run_failover: counted from status.failoverHistory
    m.set_cluster_status("shop", "a", status_after(first, switchover), {})
    m.set_cluster_status("shop", "a", status_after(first, switchover), {})
    assert value(m, "shopdb_failovers_total", namespace="shop", cluster="a",
                 **{"from": "shop-1", "to": "shop-2", "kind": "failover"}) == 1
    assert value(m, "shopdb_failovers_total", namespace="shop", cluster="a",
                 **{"from": "shop-2", "to": "shop-3", "kind": "switchover"}) == 1
    # a stale read (the older record again) counts nothing
    m.set_cluster_status("shop", "a", status_after(first), {})
    assert m.failover_completed("shop", "a", first) is False
    assert sum(value(m, "shopdb_failovers_total", **s) for s in series(m, "shopdb_failovers_total")) == 2


def test_a_restarted_operator_does_not_count_an_old_failover_again(m):
    # the first status this process sees already holds a completed failover
    old = completed_failover()
    m.set_cluster_status("shop", "a", status_after(old), {})
    assert m.failover_completed("shop", "a", old) is False
    assert series(m, "shopdb_failovers_total") == []
    # ... but the step gauges show the last failover's steps
    assert value(m, "shopdb_failover_step_seconds", namespace="shop", cluster="a", step="promote") == 0.5
    newer = completed_failover(start=T0 + datetime.timedelta(days=1), old="shop-2", new="shop-1")
    assert m.failover_completed("shop", "a", newer) is True
    assert value(m, "shopdb_failovers_total", namespace="shop", cluster="a",
                 **{"from": "shop-2", "to": "shop-1", "kind": "failover"}) == 1


def test_failover_blocked_while_refused(m):
    running = decide.start(decide.FAILOVER, "shop-1", "primary shop-1 is down", T0)
    m.set_cluster_status("shop", "a", {"failover": running}, {})
    assert value(m, "shopdb_failover_blocked", namespace="shop", cluster="a") == 0
    for reason in (decide.TOO_FAR_BEHIND, decide.NO_CANDIDATE):
        refused = decide.refuse(running, decide.Refusal(reason, "no promotion"))
        m.set_cluster_status("shop", "a", {"failover": refused}, {})
        assert value(m, "shopdb_failover_blocked", namespace="shop", cluster="a") == 1, reason
    m.set_cluster_status("shop", "a", {"failover": decide.cancel(refused, T0)}, {})
    assert value(m, "shopdb_failover_blocked", namespace="shop", cluster="a") == 0
    # a refused switchover that fenced nothing simply ends: nothing is needed
    switchover = decide.refuse(decide.start(decide.SWITCHOVER, "shop-1", "requested", T0, "shop-9"),
                               decide.Refusal(decide.TARGET_NOT_ELIGIBLE, "no such replica"))
    m.set_cluster_status("shop", "a", {"failover": switchover}, {})
    assert value(m, "shopdb_failover_blocked", namespace="shop", cluster="a") == 0
    m.set_cluster_status("shop", "a", {"failover": completed_failover()}, {})
    assert value(m, "shopdb_failover_blocked", namespace="shop", cluster="a") == 0


# --- backups --------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedules, interval", [
    (["0 2 * * *"], 24 * HOUR),
    (["0 */6 * * *"], 6 * HOUR),
    (["0 2 * * *", "0 * * * *"], HOUR),
    (["*/15 * * * *"], 15 * 60),
    (["0 4 * * 0"], 7 * 24 * HOUR),
    (["30 1 * * 1-5"], 3 * 24 * HOUR),  # Friday 01:30 to Monday 01:30
    (["0 0 1 * *"], 31 * 24 * HOUR),
    (["@daily"], 24 * HOUR),
    (["0 0 13 * 5"], 7 * 24 * HOUR),  # both day fields restricted: the 13th or any Friday
    (["0 0 * * 5"], 7 * 24 * HOUR),
    (["5/20 3 * * *"], 23 * HOUR + 20 * 60),  # 03:05, 03:25, 03:45 daily
])
def test_longest_interval_of_schedules(schedules, interval):
    assert metrics.longest_interval(tuple(schedules)) == interval


def test_a_schedule_that_never_runs_has_no_interval():
    assert metrics.longest_interval(("0 0 30 2 *",)) is None
    assert metrics.backup_max_age(["0 0 30 2 *"]) is None


def test_backup_max_age_from_a_schedule():
    assert metrics.backup_max_age(["0 2 * * *"]) == 30 * HOUR  # 24 h + a quarter
    assert metrics.backup_max_age(["0 */6 * * *"]) == 7.5 * HOUR
    assert metrics.backup_max_age(["0 2 * * *", "0 * * * *"]) == 2 * HOUR  # 1 h + the 1 h minimum margin


def epoch(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_backup_gauges_from_status_and_spec(m):
    # spec defaults: eu (the first) full daily at 02:00, us every 6 hours
    m.set_cluster_status("shop", "a", {"backup": {}}, BACKUP_SPEC)
    assert value(m, "shopdb_backup_max_age_seconds", namespace="shop", cluster="a") == 7.5 * HOUR
    assert value(m, "shopdb_backup_last_success_timestamp_seconds", namespace="shop", cluster="a") is None
    assert value(m, "shopdb_wal_archive_last_success_timestamp_seconds", namespace="shop", cluster="a") is None

    backup = {
        "repositories": {
            "eu": {"lastSuccessfulBackup": {"label": "x", "finishedAt": "2026-11-24T02:20:00Z"}},
            "us": {"lastSuccessfulBackup": {"label": "y", "finishedAt": "2026-11-24T18:10:00Z"}},
        },
        "archiving": {"lastArchivedWal": "000000010000000000000042", "lastArchivedAt": "2026-11-24T22:01:00Z"},
    }
    m.set_cluster_status("shop", "a", {"backup": backup}, BACKUP_SPEC)
    # due soonest: us at 18:10 + 7.5 h = 01:40, before eu at 02:20 + 30 h
    assert value(m, "shopdb_backup_last_success_timestamp_seconds", namespace="shop", cluster="a") == \
        epoch("2026-11-24T18:10:00Z")
    assert value(m, "shopdb_backup_max_age_seconds", namespace="shop", cluster="a") == 7.5 * HOUR
    assert value(m, "shopdb_wal_archive_last_success_timestamp_seconds", namespace="shop", cluster="a") == \
        epoch("2026-11-24T22:01:00Z")

    backup["repositories"]["eu"]["lastSuccessfulBackup"]["finishedAt"] = "2026-11-22T02:20:00Z"  # eu stalls
    m.set_cluster_status("shop", "a", {"backup": backup}, BACKUP_SPEC)
    assert value(m, "shopdb_backup_last_success_timestamp_seconds", namespace="shop", cluster="a") == \
        epoch("2026-11-22T02:20:00Z")
    assert value(m, "shopdb_backup_max_age_seconds", namespace="shop", cluster="a") == 30 * HOUR

    # archiving unknown for a pass (the primary did not answer): the last known success stays
    m.set_cluster_status("shop", "a", {"backup": {**backup, "archiving": None}}, BACKUP_SPEC)
    assert value(m, "shopdb_wal_archive_last_success_timestamp_seconds", namespace="shop", cluster="a") == \
        epoch("2026-11-24T22:01:00Z")

    # backups turned off: the series go
    m.set_cluster_status("shop", "a", {"backup": backup}, {})
    for name in ("shopdb_backup_last_success_timestamp_seconds", "shopdb_backup_max_age_seconds",
                 "shopdb_wal_archive_last_success_timestamp_seconds"):
        assert series(m, name) == [], name


def test_backup_alert_expression_fires_exactly_when_a_repository_is_overdue(m):
    spec = {"backup": {"repositories": [
        {**BACKUP_SPEC["backup"]["repositories"][0], "schedules": {"full": "0 2 * * *", "incremental": "0 * * * *"}},
        BACKUP_SPEC["backup"]["repositories"][1]]}}
    backup = {"repositories": {"eu": {"lastSuccessfulBackup": {"finishedAt": "2026-11-24T21:05:00Z"}},
                               "us": {"lastSuccessfulBackup": {"finishedAt": "2026-11-24T18:30:00Z"}}}}
    m.set_cluster_status("shop", "a", {"backup": backup}, spec)
    last = value(m, "shopdb_backup_last_success_timestamp_seconds", namespace="shop", cluster="a")
    max_age = value(m, "shopdb_backup_max_age_seconds", namespace="shop", cluster="a")
    deadlines = {"eu": epoch("2026-11-24T21:05:00Z") + 2 * HOUR, "us": epoch("2026-11-24T18:30:00Z") + 7.5 * HOUR}
    for now in (epoch("2026-11-24T22:00:00Z"), epoch("2026-11-24T23:06:00Z"), epoch("2026-11-25T02:01:00Z")):
        assert (now - last > max_age) == any(now > d for d in deadlines.values()), now


# --- deletion ---------------------------------------------------------------------------------------

def test_forget_cluster_removes_its_series_only(m):
    for cluster in ("a", "b"):
        m.observe_reconcile("shop", cluster, metrics.OK, 0.1)
        m.set_cluster_status("shop", cluster, {"phase": "Ready", "instances": [{"ready": True}],
                                               "backup": {"archiving": {"lastArchivedAt": "2026-11-24T22:01:00Z"}}},
                             BACKUP_SPEC)
        m.failover_completed("shop", cluster, completed_failover())
    m.forget_cluster("shop", "a")
    names = {name for name, _ in samples(m)}
    for name in ("shopdb_reconcile_total", "shopdb_reconcile_duration_seconds_count", "shopdb_cluster_phase",
                 "shopdb_cluster_instances", "shopdb_cluster_instances_ready", "shopdb_failovers_total",
                 "shopdb_failover_step_seconds", "shopdb_failover_blocked", "shopdb_rollout_pending_instances",
                 "shopdb_backup_max_age_seconds", "shopdb_wal_archive_last_success_timestamp_seconds"):
        assert name in names, name
        assert series(m, name, cluster="a") == [], name
        assert series(m, name, cluster="b"), name
    # a cluster of that name made again starts over
    m.failover_completed("shop", "a", completed_failover())
    assert value(m, "shopdb_failovers_total", namespace="shop", cluster="a",
                 **{"from": "shop-1", "to": "shop-2", "kind": "failover"}) == 1


def test_same_name_in_another_namespace_is_another_cluster(m):
    m.set_cluster_status("shop", "a", {"phase": "Ready"}, {})
    m.set_cluster_status("staging", "a", {"phase": "Degraded"}, {})
    m.forget_cluster("staging", "a")
    assert value(m, "shopdb_cluster_phase", namespace="shop", cluster="a", phase="Ready") == 1
    assert series(m, "shopdb_cluster_phase", namespace="staging") == []


def test_module_functions_never_raise_into_a_handler(caplog):
    metrics.set_cluster_status("shop", "broken-status", {"instances": "not a list", "failoverHistory": 7}, {})
    metrics.set_cluster_status("shop", "broken-status", {"backup": {"repositories": []}}, BACKUP_SPEC)
    assert metrics.failover_completed("shop", "broken-status", None) is False
    metrics.forget_cluster("shop", "broken-status")


def test_module_functions_log_instead_of_raising(caplog):
    assert metrics.observe_reconcile("shop", "guarded", "maybe", 1) is None
    assert "metrics of shop/guarded not updated" in caplog.text


# --- the handlers' calls ------------------------------------------------------------------------

def global_value(name: str, **labels) -> float | None:
    return value(metrics.METRICS, name, **labels)


class FakeClient:
    def __init__(self, body=None, error=None):
        self.body, self.error = body, error

    def cached_get(self, *_):
        if self.error:
            raise self.error
        return self.body


def test_each_failover_check_reports_the_status_it_left():
    from shopdb_operator.handlers import failover as handler
    from shopdb_operator.kube.client import KubeError

    refused = decide.refuse(decide.start(decide.FAILOVER, "shop-1", "down", T0),
                            decide.Refusal(decide.NO_CANDIDATE, "no promotable replica"))
    body = {"metadata": {"name": "a"}, "spec": {}, "status": {"phase": "Degraded", "failover": refused}}
    try:
        handler.report_status(FakeClient(body), "a", "wiring-check")
        assert global_value("shopdb_failover_blocked", namespace="wiring-check", cluster="a") == 1
        assert global_value("shopdb_cluster_phase", namespace="wiring-check", cluster="a", phase="Degraded") == 1
        handler.report_status(FakeClient(error=KubeError(500, "boom")), "a", "wiring-check")  # no raise
        deleting = {**body, "metadata": {"name": "a", "deletionTimestamp": "2026-11-24T22:00:00Z"},
                    "status": {"phase": "Ready"}}
        handler.report_status(FakeClient(deleting), "a", "wiring-check")
        assert global_value("shopdb_cluster_phase", namespace="wiring-check", cluster="a", phase="Degraded") == 1
    finally:
        metrics.forget_cluster("wiring-check", "a")


@pytest.mark.parametrize("deleted", [True, False])
def test_the_daemon_forgets_a_deleted_cluster(deleted):
    import asyncio
    import logging

    import kopf

    from shopdb_operator.handlers import failover as handler

    class Stopped:  # kopf's DaemonStopped, already set
        reason = kopf.DaemonStoppingReason.RESOURCE_DELETED if deleted else kopf.DaemonStoppingReason.OPERATOR_EXITING

        def __bool__(self):
            return True

    metrics.set_cluster_status("wiring-daemon", "a", {"phase": "Ready"}, {})
    try:
        asyncio.run(handler.failover_daemon(name="a", namespace="wiring-daemon", body={}, stopped=Stopped(),
                                            logger=logging.getLogger("test")))
        left = global_value("shopdb_cluster_phase", namespace="wiring-daemon", cluster="a", phase="Ready")
        assert left == (None if deleted else 1)
    finally:
        metrics.forget_cluster("wiring-daemon", "a")
