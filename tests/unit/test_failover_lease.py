"""The operator Lease: one holder at a time, renewal, takeover only after expiry, and
optimistic concurrency (a lost race is not a hold)."""

from __future__ import annotations

import copy
import datetime

from shopdb_operator.kube.client import KubeError
from shopdb_operator.kube.lease import Lease, lease_action

T0 = datetime.datetime(2026, 11, 24, 22, 0, 0, tzinfo=datetime.timezone.utc)


class FakeKube:
    """Just enough of Kube for one Lease, with resourceVersion checks like the API server."""

    def __init__(self):
        self.lease: dict | None = None
        self.version = 0

    def get(self, api_version, kind, namespace, name):
        return copy.deepcopy(self.lease)

    def create(self, obj):
        if self.lease is not None:
            return None
        self.version += 1
        self.lease = {**copy.deepcopy(obj), "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}
        return self.lease

    def merge_patch(self, api_version, kind, namespace, name, patch, subresource=None):
        if patch["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise KubeError(409, "the object has been modified", "Conflict")
        self.version += 1
        self.lease["spec"].update(patch["spec"])
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return self.lease


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def test_first_replica_creates_and_holds_it():
    kube = FakeKube()
    assert Lease(kube, "ns", me="op-a").held(at(0))
    assert kube.lease["spec"]["holderIdentity"] == "op-a"
    assert kube.lease["spec"]["leaseDurationSeconds"] == 15


def test_another_replica_waits_while_it_is_renewed_and_takes_over_after_expiry():
    kube = FakeKube()
    a, b = Lease(kube, "ns", me="op-a"), Lease(kube, "ns", me="op-b")
    assert a.held(at(0))
    assert not b.held(at(5))
    assert a.held(at(4))  # a recent renewal is trusted without asking
    assert kube.lease["spec"]["renewTime"].startswith("2026-11-24T22:00:00.")
    assert a.held(at(10))  # renewed
    assert not b.held(at(20))  # 10 s after renewal: still valid
    assert b.held(at(26))  # expired: b takes over
    assert kube.lease["spec"]["holderIdentity"] == "op-b" and kube.lease["spec"]["leaseTransitions"] == 1
    assert not a.held(at(27))  # a lost it and must not act


def test_a_lost_race_is_not_a_hold():
    kube = FakeKube()
    Lease(kube, "ns", me="op-a").held(at(0))
    stale = kube.get(None, None, None, None)
    Lease(kube, "ns", me="op-b").held(at(30))  # b wins the expired Lease

    class Racing(FakeKube):
        def get(self, *args):
            return copy.deepcopy(stale)  # c read before b's update

    racing = Racing()
    racing.lease, racing.version = kube.lease, kube.version
    assert not Lease(racing, "ns", me="op-c").held(at(30))


def test_lease_action():
    spec = {"holderIdentity": "op-a", "renewTime": "2026-11-24T22:00:00.000000Z", "leaseDurationSeconds": 15}
    assert lease_action(spec, "op-a", at(100)) == "renew"
    assert lease_action(spec, "op-b", at(14)) == "wait"
    assert lease_action(spec, "op-b", at(15)) == "acquire"
    assert lease_action({}, "op-b", at(0)) == "acquire"
    assert lease_action({**spec, "renewTime": "2026-11-24T22:00:00Z"}, "op-b", at(1)) == "wait"


def test_a_replica_that_lost_the_lease_stops_trusting_its_cache():
    kube = FakeKube()
    a, b = Lease(kube, "ns", me="op-a"), Lease(kube, "ns", me="op-b")
    assert a.held(at(0))
    assert b.held(at(16))
    assert not a.held(at(16))
    assert not a.held(at(17))  # no cached hold after a refusal
