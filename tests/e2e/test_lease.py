"""The operator's Lease against the real API server: one holder at a time, renewal, takeover
only after expiry, and the API server's optimistic concurrency deciding every race (a lost
race is never a hold). Time is passed in (`held(now)`), so expiry needs no waiting; the
writes, reads and conflicts are the API server's."""

from __future__ import annotations

import datetime
import threading

import pytest

from shopdb_operator.kube.client import Kube
from shopdb_operator.kube.lease import API_VERSION, LEASE_DURATION_SECONDS, Lease

pytestmark = pytest.mark.e2e

T0 = datetime.datetime(2026, 11, 24, 22, 0, 0, tzinfo=datetime.timezone.utc)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def stored(kube: Kube, namespace: str, name: str = "shopdb-operator") -> dict:
    return kube.get(API_VERSION, "Lease", namespace, name)["spec"]


def test_first_replica_creates_and_holds_it(kube, namespace):
    assert Lease(kube, namespace, me="op-a").held(at(0))
    spec = stored(kube, namespace)
    assert spec["holderIdentity"] == "op-a" and spec["leaseDurationSeconds"] == LEASE_DURATION_SECONDS
    assert spec["leaseTransitions"] == 0


def test_another_replica_waits_while_it_is_renewed_and_takes_over_after_expiry(kube, namespace):
    a, b = Lease(kube, namespace, me="op-a"), Lease(kube, namespace, me="op-b")
    assert a.held(at(0))
    assert not b.held(at(5))
    assert a.held(at(4))  # renewed moments ago: trusted without asking
    assert stored(kube, namespace)["renewTime"].startswith("2026-11-24T22:00:00.")
    assert a.held(at(10))  # renewed now
    assert stored(kube, namespace)["renewTime"].startswith("2026-11-24T22:00:10.")
    assert not b.held(at(20))  # 10 s after the renewal: still valid
    assert b.held(at(26))  # expired: b takes over
    spec = stored(kube, namespace)
    assert spec["holderIdentity"] == "op-b" and spec["leaseTransitions"] == 1
    assert not a.held(at(27))  # a lost it and must not act


def test_a_replica_that_lost_the_lease_stops_trusting_its_cache(kube, namespace):
    a, b = Lease(kube, namespace, me="op-a"), Lease(kube, namespace, me="op-b")
    assert a.held(at(0))
    assert b.held(at(16))
    assert not a.held(at(16))
    assert not a.held(at(17))  # no cached hold after a refusal


def race(leases: list[Lease], now: datetime.datetime) -> list[str]:
    """Every Lease asks at the same moment, from its own thread; returns the winners."""
    start, winners, errors = threading.Barrier(len(leases)), [], []

    def ask(lease: Lease) -> None:
        try:
            start.wait(10)
            if lease.held(now):
                winners.append(lease.me)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    return winners


def test_racing_replicas_never_both_win(kube, kubectl, namespace):
    """Creation races (409 AlreadyExists) and takeover races (409 Conflict on the stale
    resourceVersion) are both decided by the API server: exactly one winner each round."""
    names = [f"op-{i}" for i in range(6)]
    winners = race([Lease(kube, namespace, me=n) for n in names], at(0))
    assert len(winners) == 1 and stored(kube, namespace)["holderIdentity"] == winners[0]
    for round_ in range(1, 6):
        now = at(round_ * (LEASE_DURATION_SECONDS + 1))  # the last holder stopped renewing: expired
        contenders = [Lease(kube, namespace, me=n) for n in names if n not in winners[-1:]]
        won = race(contenders, now)
        assert len(won) == 1, f"round {round_}: {won} all believe they hold the Lease"
        assert stored(kube, namespace)["holderIdentity"] == won[0]
        winners += won
    assert stored(kube, namespace)["leaseTransitions"] == 5
