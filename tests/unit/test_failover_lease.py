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
