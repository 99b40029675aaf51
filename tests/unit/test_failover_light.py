"""Light checks (handlers/failover.light_check): between full checks, a cluster where nothing
moved is checked through its kept connections alone; anything that differs makes the
check full, given what the light one observed."""

from __future__ import annotations

import asyncio
import datetime
import time
from types import SimpleNamespace

import pytest

from shopdb_operator.failover.decide import HealthTracker, Observation
from shopdb_operator.handlers import failover as handler

PRIMARY = Observation("shop-1", pod_exists=True, container_running=True, pod_ready=True, reachable=True,
                      in_recovery=False, current_lsn=0x3000060)
REPLICA = Observation("shop-2", pod_exists=True, container_running=True, pod_ready=True, reachable=True,
                      in_recovery=True, streaming=True, received_lsn=0x3000000)
TARGETS = (("shop-1", "10.0.0.1", 5432, {}), ("shop-2", "10.0.0.2", 5432, {}))


class Cache:
    def __init__(self):
        self.cluster = {"metadata": {"name": "shop", "resourceVersion": "100"}}
        self.pods = [{"metadata": {"name": "shop-1-0", "resourceVersion": "10"}},
                     {"metadata": {"name": "shop-2-0", "resourceVersion": "11"}}]
        self.lease = None

    def get(self, api_version, kind, namespace, name):
        return True, (self.cluster if kind == "ShopDatabaseCluster" else self.lease)

    def list(self, api_version, kind, namespace, labels):
        return list(self.pods)


class World:
    def __init__(self, monkeypatch):
        self.cache = Cache()
        self.kube = SimpleNamespace(cache=self.cache)
        self.fresh = True
        self.found = {"shop-1": PRIMARY, "shop-2": REPLICA}
        self.observed_calls = 0
        monkeypatch.setattr(handler, "kube", lambda: self.kube)
        monkeypatch.setattr(handler, "lease", lambda kube: SimpleNamespace(fresh=lambda now: self.fresh))

        async def observe_kept(targets, password, connections):
            self.observed_calls += 1
            return dict(self.found)

        monkeypatch.setattr(handler.monitor, "observe_kept", observe_kept)

    def memory(self, **settled) -> handler.Memory:
        now = datetime.datetime.now(datetime.timezone.utc)
        memory = handler.Memory(tracker=HealthTracker().record("shop-1", PRIMARY), password=("secret", time.monotonic()),
                                fenced=(False, "nobody"), health_written=now, partitions_checked=now)
        memory.settled = handler.Settled(**{
            "fingerprint": handler.fingerprint(self.kube, "shop", "shop", self.cache.cluster), "targets": TARGETS,
            "observed": handler._observed({"shop-1": PRIMARY, "shop-2": REPLICA}), "primary": "shop-1",
            "lease_name": "shop-primary", "clock_skew": 1, "at": time.monotonic(), **settled})
        return memory

    def light(self, memory):
        return asyncio.run(handler.light_check(memory, "shop", "shop"))


@pytest.fixture
def world(monkeypatch) -> World:
    return World(monkeypatch)


def test_a_cluster_where_nothing_moved_is_checked_through_its_kept_connections_alone(world):
    memory = world.memory()
    world.found["shop-1"] = Observation(**{**PRIMARY.__dict__, "current_lsn": 0x4000000})  # writes go on
    assert world.light(memory) == (True, None)
    assert world.observed_calls == 1
    assert memory.tracker.failures == 0 and memory.tracker.last_lsn == 0x4000000  # the primary's position kept


@pytest.mark.parametrize("move", [
    lambda w: w.cache.pods[1]["metadata"].update(resourceVersion="12"),  # a pod changed (ready, restarted, ...)
    lambda w: w.cache.pods.pop(),  # a pod went away
    lambda w: w.cache.cluster["metadata"].update(resourceVersion="101"),  # spec, status or annotation
    lambda w: setattr(w, "fresh", False),  # the operator's own Lease is due for renewal
])
def test_anything_that_moved_makes_the_check_full_before_any_query(world, move):
    memory = world.memory()
    move(world)
    assert world.light(memory) == (False, None)
    assert world.observed_calls == 0


@pytest.mark.parametrize("memory_change", [
    {"settled": None},  # the last check was not settled
    {"tracker": HealthTracker(failures=1)},  # the primary failed a check
    {"password": None},  # to be read again
    {"partitions_checked": None},  # a chore is due
    {"health_written": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},  # the lags are due
    {"fenced": (True, "shop-1")},  # the fence changed since (see the lease below)
])
def test_a_due_chore_or_an_unsettled_memory_makes_the_check_full(world, memory_change):
    memory = world.memory()
    for key, value in memory_change.items():
        setattr(memory, key, value)
    assert world.light(memory) == (False, None)


def test_every_check_is_full_again_after_the_full_check_interval(world):
    memory = world.memory(at=time.monotonic() - handler.FULL_CHECK_SECONDS)
    assert world.light(memory) == (False, None)


@pytest.mark.parametrize("found", [
    {"shop-1": PRIMARY, "shop-2": Observation(**{**REPLICA.__dict__, "streaming": False})},  # replication stopped
    {"shop-1": Observation("shop-1", error="ConnectionTimeout"), "shop-2": REPLICA},  # the primary hangs
    {"shop-2": REPLICA},  # the primary's kept session failed at once: a fresh check tells why
])
def test_an_instance_found_otherwise_makes_the_check_full_with_what_was_found(world, found):
    memory = world.memory()
    world.found = found
    assert world.light(memory) == (False, found)
    assert memory.tracker.last_lsn == PRIMARY.current_lsn  # the full check records it, not the light one


def check_of(observations, status=None) -> handler.Check:
    spec = SimpleNamespace(failover=SimpleNamespace(lease=SimpleNamespace(clock_skew_seconds=1)))
    topology = SimpleNamespace(primary="shop-1")
    return handler.Check("shop", "shop", spec, status or {}, {}, topology, observations, {}, TARGETS)


ACTOR = SimpleNamespace(cluster=SimpleNamespace(lease_name="shop-primary"), in_flight=False)


def test_a_full_check_that_found_everything_well_settles():
    memory = handler.Memory(tracker=HealthTracker().record("shop-1", PRIMARY), fenced=(False, "shop-1"))
    handler.settle(memory, check_of({"shop-1": PRIMARY, "shop-2": REPLICA}), ACTOR, ("100", ()))
    assert memory.settled is not None and memory.settled.targets == TARGETS and memory.settled.primary == "shop-1"


@pytest.mark.parametrize("observations, status, tracker", [
    ({"shop-1": PRIMARY, "shop-2": Observation("shop-2", error="ConnectionRefused")}, None, None),
    ({"shop-1": PRIMARY, "shop-2": REPLICA}, {"rollout": {"current": {"instance": "shop-2"}}}, None),
    ({"shop-1": PRIMARY, "shop-2": REPLICA}, None, HealthTracker(failures=1)),
])
def test_a_full_check_with_anything_in_flight_does_not_settle(observations, status, tracker):
    memory = handler.Memory(tracker=tracker or HealthTracker().record("shop-1", PRIMARY), fenced=(False, "shop-1"))
    handler.settle(memory, check_of(observations, status), ACTOR, ("100", ()))
    assert memory.settled is None


def test_a_full_check_that_left_a_configuration_change_under_way_does_not_settle():
    """A reload waiting for the kubelet to swap the file writes nothing: without this, light
    checks would hold it back until the next full check."""
    memory = handler.Memory(tracker=HealthTracker().record("shop-1", PRIMARY), fenced=(False, "shop-1"))
    busy = SimpleNamespace(cluster=ACTOR.cluster, in_flight=True)
    handler.settle(memory, check_of({"shop-1": PRIMARY, "shop-2": REPLICA}), busy, ("100", ()))
    assert memory.settled is None
