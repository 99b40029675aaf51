"""The Lease rule itself (renew, acquire, wait); the Lease against the API server, races
included, is tests/e2e/test_lease.py."""

from __future__ import annotations

import datetime

from shopdb_operator.kube.lease import lease_action

T0 = datetime.datetime(2026, 11, 24, 22, 0, 0, tzinfo=datetime.timezone.utc)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def test_lease_action():
    spec = {"holderIdentity": "op-a", "renewTime": "2026-11-24T22:00:00.000000Z", "leaseDurationSeconds": 15}
    assert lease_action(spec, "op-a", at(100)) == "renew"
    assert lease_action(spec, "op-b", at(14)) == "wait"
    assert lease_action(spec, "op-b", at(15)) == "acquire"
    assert lease_action({}, "op-b", at(0)) == "acquire"
    assert lease_action({**spec, "renewTime": "2026-11-24T22:00:00Z"}, "op-b", at(1)) == "wait"


def test_a_lease_is_fresh_for_a_third_of_its_duration_after_its_renewal():
    """What light checks ask (kube.lease.Lease.fresh): held() would answer without the API
    server; past a third of the duration, a full check renews it."""
    from shopdb_operator.kube.lease import Lease

    lease = Lease(kube=None, namespace="shopdb-system", me="op-a", duration=15)
    assert not lease.fresh(at(0))  # never held
    lease._renewed = at(0)
    assert lease.fresh(at(4.9)) and lease.held(at(4.9))  # no API call: kube is None
    assert not lease.fresh(at(5))
