"""The daemon's check against a fake API server: threshold, Lease gate, failover.enabled,
the switchover annotation, status and Events written, no secret anywhere."""

from __future__ import annotations

import base64
import copy
import json
import logging

import pytest

from shopdb_operator.failover import decide
from shopdb_operator.failover.decide import Observation
from shopdb_operator.handlers import failover as handler
from shopdb_operator.kube.client import KubeError

SECRET = "s3cret-superuser-password"


class FakeKube:
    def __init__(self, body: dict):
        self.body = body
        self.patches: list[tuple[str, str, dict, str | None]] = []
        self.deleted: list[str] = []

    def get(self, api_version, kind, namespace, name):
        if kind == "Secret":
            return {"data": {"password": base64.b64encode(SECRET.encode()).decode()}}
        if kind == "Pod":
            return {"metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
                    "status": {"podIP": "10.0.0.1"}}
        return None

    def list(self, api_version, kind, namespace, selector):
        if selector.get("app.kubernetes.io/component") == "postgres":
            return [{"metadata": {"name": f"{n}-0", "labels": {"shopdb.io/instance": n}},
                     "status": {"podIP": f"10.0.0.{i}"}} for i, n in enumerate(["shop-1", "shop-2", "shop-3"])]
        return []

    def merge_patch(self, api_version, kind, namespace, name, patch, subresource=None):
        self.patches.append((kind, name, copy.deepcopy(patch), subresource))
        if kind == "ShopDatabaseCluster" and subresource == "status":
            self.body["status"].update(patch["status"])
        return {}

    def delete(self, api_version, kind, namespace, name, propagation="Background", grace_seconds=None):
        self.deleted.append(name)
        return True


class FakeDatabases:
    promoted: list[str] = []

    def __init__(self, *args, **kwargs):
        pass

    def promote(self, instance):
        FakeDatabases.promoted.append(instance)
        return True

    def prepare_primary(self, instance, slots):
        return []

    def current_lsn(self, instance):
        return 100


class FakePoolers:
    def __init__(self, *args, **kwargs):
        pass

    def hold(self, database, graceful):
        return []

    def release(self, database, graceful):
        return []


class FakeLease:
    def __init__(self, held=True):
        self._held = held

    def held(self):
        return self._held


@pytest.fixture
def world(monkeypatch):
    body = {"metadata": {"name": "shop", "namespace": "shop", "annotations": {}},
            "spec": {},
            "status": {"applied": {}, "currentPrimary": "shop-1",
                       "topology": {"currentPrimary": "shop-1", "pool": ["shop-1", "shop-2", "shop-3"],
                                    "routes": {"search": "shop-2", "orders": "shop-3"}}}}
    kube = FakeKube(body)
    observations = {"shop-1": Observation("shop-1", reachable=True, in_recovery=False, current_lsn=1000),
                    "shop-2": Observation("shop-2", reachable=True, in_recovery=True, received_lsn=1000, streaming=True),
                    "shop-3": Observation("shop-3", reachable=True, in_recovery=True, received_lsn=900, streaming=True)}
    monkeypatch.setattr(handler.monitor, "observe_all", lambda targets, password: dict(observations))
    monkeypatch.setattr(handler, "SqlDatabases", FakeDatabases)
    monkeypatch.setattr(handler, "PgBouncerPoolers", FakePoolers)
    monkeypatch.setattr(handler, "_lease", FakeLease(True))
    FakeDatabases.promoted = []
    events: list[tuple[str, str, str]] = []
    memory = handler.Memory()

    def check():
        handler.check_cluster(kube, memory, "shop", "shop", body, lambda *e: events.append(e),
                              logging.getLogger("test"))

    return {"body": body, "kube": kube, "obs": observations, "events": events, "check": check, "memory": memory}


def kill_primary(world):
    """Unanswering while its container runs (a hang): the threshold applies."""
    world["obs"]["shop-1"] = Observation("shop-1", pod_exists=True, container_running=True, error="OperationalError")
    for name in ("shop-2", "shop-3"):
        world["obs"][name] = Observation(name, reachable=True, in_recovery=True,
                                         received_lsn=world["obs"][name].received_lsn)


def test_health_is_recorded_and_nothing_else_while_the_primary_answers(world):
    world["check"]()
    status = world["body"]["status"]
    assert status["health"]["instances"]["shop-3"]["lagBytes"] == 100
    assert "failover" not in status and world["events"] == []


def test_failover_after_the_threshold_then_waits_for_its_own_record(world):
    world["check"]()
    kill_primary(world)
    world["check"]()
    world["check"]()
    assert "failover" not in world["body"]["status"]  # two failures: a blip so far
    world["check"]()
    status = world["body"]["status"]
    assert status["failover"]["phase"] == decide.COMPLETED and status["failover"]["to"] == "shop-2"
    assert status["currentPrimary"] == "shop-2" and status["failoverHistory"][-1]["from"] == "shop-1"
    assert FakeDatabases.promoted == ["shop-2"] and world["kube"].deleted == ["shop-1-0"]
    assert world["events"][0][:2] == ("Warning", "FailoverStarted")
    assert SECRET not in json.dumps(world["kube"].patches) + json.dumps(world["events"])


def test_no_action_without_the_lease(world, monkeypatch):
    monkeypatch.setattr(handler, "_lease", FakeLease(False))
    kill_primary(world)
    for _ in range(5):
        world["check"]()
    assert world["kube"].patches == [] and FakeDatabases.promoted == []


def test_disabled_failover_only_warns_once(world):
    world["body"]["spec"] = {"failover": {"enabled": False}}
    kill_primary(world)
    for _ in range(6):
        world["check"]()
    assert "failover" not in world["body"]["status"]
    assert [e[1] for e in world["events"]] == ["PrimaryUnhealthy"]


def test_refusal_sets_the_condition_and_a_recovered_primary_cancels(world):
    world["body"]["spec"] = {"failover": {"maxLagBytes": 10}}
    world["check"]()  # the primary reports LSN 1000
    world["obs"]["shop-2"] = Observation("shop-2", reachable=True, in_recovery=True, received_lsn=500)
    world["obs"]["shop-3"] = Observation("shop-3", reachable=True, in_recovery=True, received_lsn=400)
    world["obs"]["shop-1"] = Observation("shop-1", error="OperationalError")
    for _ in range(3):
        world["check"]()
    status = world["body"]["status"]
    assert status["failover"]["phase"] == decide.REFUSED
    blocked = [c for c in status["conditions"] if c["type"] == handler.FAILOVER_BLOCKED][0]
    assert blocked["status"] == "True" and blocked["reason"] == decide.TOO_FAR_BEHIND
    assert world["kube"].deleted == []  # refused before the fence: the primary is untouched
    world["obs"]["shop-1"] = Observation("shop-1", reachable=True, in_recovery=False, current_lsn=1000)
    world["check"]()
    assert status["failover"]["phase"] == decide.CANCELLED
    assert [c for c in status["conditions"] if c["type"] == handler.FAILOVER_BLOCKED][0]["status"] == "False"


def test_switchover_annotation_is_consumed_and_started(world):
    world["body"]["metadata"]["annotations"][handler.ANNOTATION_SWITCHOVER] = "shop-3"
    world["obs"]["shop-3"] = Observation("shop-3", reachable=True, in_recovery=True, received_lsn=1000)
    world["check"]()
    consumed = [p for p in world["kube"].patches if p[0] == "ShopDatabaseCluster" and p[3] is None]
    assert consumed[0][2] == {"metadata": {"annotations": {handler.ANNOTATION_SWITCHOVER: None}}}
    state = world["body"]["status"]["failover"]
    assert state["kind"] == decide.SWITCHOVER and state["to"] == "shop-3"
    # the old primary is still up, so the promote step waits until shop-3 holds its last WAL
    assert decide.next_step(state) in (decide.PROMOTE, decide.RELABEL, None)


def test_an_api_error_on_a_step_propagates_for_the_daemon_to_retry(world, monkeypatch):
    kill_primary(world)

    def refuse(*args, **kwargs):
        raise KubeError(500, "etcd down")

    world["check"]()
    world["check"]()
    monkeypatch.setattr(world["kube"], "delete", refuse)
    with pytest.raises(KubeError):
        world["check"]()
    assert decide.next_step(world["body"]["status"]["failover"]) == decide.FENCE


def test_cli_switchover_request_checks_the_target_then_annotates(world):
    from shopdb_operator.failover.adapters import request_switchover

    kube = world["kube"]
    kube.get = lambda api_version, kind, namespace, name: world["body"]
    with pytest.raises(ValueError, match="not a promotable instance"):
        request_switchover(kube, "shop", "shop", "shop-analytics")
    with pytest.raises(ValueError, match="already the primary"):
        request_switchover(kube, "shop", "shop", "shop-1")
    request_switchover(kube, "shop", "shop", "shop-3")
    assert kube.patches[-1][2] == {"metadata": {"annotations": {"shopdb.io/switchover-to": "shop-3"}}}


def test_an_operator_that_reaches_no_instance_does_not_fail_over(world):
    for name in ("shop-1", "shop-2", "shop-3"):
        world["obs"][name] = Observation(name, error="OperationalError")
    for _ in range(5):
        world["check"]()
    assert "failover" not in world["body"]["status"] and world["memory"].tracker.failures == 0


def test_the_daemon_checks_at_the_spec_interval_and_survives_errors(monkeypatch):
    import asyncio

    calls = []

    def check(kube, memory, name, namespace, body, post_event, logger):
        calls.append(memory)
        if len(calls) == 1:
            raise KubeError(503, "unavailable")
        if len(calls) == 2:
            raise ValueError("a bug")

    class Stopped:
        def __init__(self, checks):
            self.checks, self.waits = checks, []

        def __bool__(self):
            return len(self.waits) >= self.checks

        async def wait(self, timeout):
            self.waits.append(timeout)

    monkeypatch.setattr(handler, "check_cluster", check)
    monkeypatch.setattr(handler, "kube", lambda: None)
    stopped = Stopped(3)
    body = {"spec": {"failover": {"checkIntervalSeconds": 5}}}
    asyncio.run(handler.failover_daemon(name="shop", namespace="shop", body=body, stopped=stopped,
                                        logger=logging.getLogger("t")))
    assert stopped.waits == [5, 5, 5] and len(calls) == 3
    assert calls[0] is calls[2]  # one memory (failure count) for the daemon's life
