"""Status writes against the real API server, with the CRD and no operator running (so no
other writer interferes, except the ones each test makes on purpose).

A merge patch replaces a list whole. Conditions are written by three writers (reconcile,
the drift timer, the failover daemon; and by each operator replica), so each computes its
list from the live one and writes it with that resourceVersion as a precondition. And a
failover record carries its FailoverBlocked condition in the same write, so no reader sees
a refused or completed failover with a condition that says otherwise (CI once read a
Completed failover whose condition still said blocked, between two separate writes)."""

from __future__ import annotations

import datetime
import json

import pytest
import yaml
from support import REPO, example_cluster

from shopdb_operator import GROUP, KIND, VERSION
from shopdb_operator.failover import decide
from shopdb_operator.failover.adapters import KubeCluster
from shopdb_operator.kube.client import Kube, KubeError, resource_path
from shopdb_operator.status import FAILOVER_BLOCKED, READY, RECONCILED, condition, set_condition

pytestmark = pytest.mark.e2e

API_VERSION = f"{GROUP}/{VERSION}"
NOW = "2026-11-25T10:00:00Z"


@pytest.fixture(scope="module")
def crd(kubectl):
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl.wait("--for=condition=Established", "crd/shopdatabaseclusters.shopdb.io", timeout=60)
    yield
    # Helm tests install their own CRD and refuse to adopt one that kubectl created.
    kubectl("delete", "-f", str(REPO / "crds"), "--ignore-not-found", "--wait=true", "--timeout=120s", check=False,
            timeout=180)


@pytest.fixture
def shop(kubectl, crd, namespace, images) -> str:
    kubectl.apply(yaml.safe_dump(example_cluster(images, namespace)))
    return namespace


def conditions_of(kube: Kube, namespace: str) -> list[dict]:
    return (kube.get(API_VERSION, KIND, namespace, "shop").get("status") or {}).get("conditions") or []


def watch_from(kube: Kube, namespace: str, resource_version: str, seconds: int = 2) -> list[dict]:
    """The objects of every change to the cluster after `resource_version` (a real watch)."""
    path = resource_path(API_VERSION, KIND, namespace)
    query = [("watch", "1"), ("resourceVersion", resource_version), ("timeoutSeconds", str(seconds)),
             ("fieldSelector", "metadata.name=shop")]
    _, url, headers, _, _ = kube.api.param_serialize(method="GET", resource_path=path, query_params=query,
                                                     header_params={"Accept": "application/json"},
                                                     auth_settings=["BearerToken"])
    response = kube.api.call_api("GET", url, header_params=headers, _request_timeout=seconds + 10)
    events = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    return [e["object"] for e in events if e["type"] == "MODIFIED"]


def test_a_condition_written_between_read_and_write_is_kept(kube, shop):
    """Writer A reads the conditions; writer B sets FailoverBlocked before A writes. A's
    write is refused by the API server (409), A reads again, and both conditions stay."""
    kube.update_status(API_VERSION, KIND, shop, "shop", {},
                       lambda live, gen: set_condition(live, READY, True, "AllInstancesReady", "", gen, NOW))
    reads = []

    def writer_a(live, generation):
        reads.append(sorted(c["type"] for c in live))
        if len(reads) == 1:  # writer B, between A's read and A's write
            kube.update_status(API_VERSION, KIND, shop, "shop", {}, lambda lv, g: set_condition(
                lv, FAILOVER_BLOCKED, True, "CandidateTooFarBehind", "lag", g, NOW))
        return set_condition(live, RECONCILED, True, "Applied", "", generation, NOW)

    assert kube.update_status(API_VERSION, KIND, shop, "shop", {"phase": "Ready"}, writer_a)
    assert reads == [[READY], [FAILOVER_BLOCKED, READY]]  # the conflict made A read again
    stored = kube.get(API_VERSION, KIND, shop, "shop")["status"]
    assert sorted(c["type"] for c in stored["conditions"]) == [FAILOVER_BLOCKED, READY, RECONCILED]
    assert condition(stored["conditions"], FAILOVER_BLOCKED)["status"] == "True"
    assert stored["phase"] == "Ready"


def test_a_stale_conditions_list_is_refused_not_written(kube, shop):
    """The precondition is what protects: a list computed from an old read is refused (409)
    every time, and after the attempts the error reaches the caller; nothing is written."""
    kube.update_status(API_VERSION, KIND, shop, "shop", {},
                       lambda live, gen: set_condition(live, READY, True, "AllInstancesReady", "", gen, NOW))
    before = conditions_of(kube, shop)

    overtaken = []

    def always_overtaken(live, generation):
        overtaken.append(live)  # another writer changes the object each time, after this read
        kube.update_status(API_VERSION, KIND, shop, "shop", {"readyInstances": f"{len(overtaken)}/4"})
        return set_condition(live, RECONCILED, True, "Applied", "", generation, NOW)

    with pytest.raises(KubeError) as refused:
        kube.update_status(API_VERSION, KIND, shop, "shop", {}, always_overtaken, attempts=3)
    assert refused.value.status == 409 and len(overtaken) == 3
    assert conditions_of(kube, shop) == before


def test_each_failover_record_carries_its_blocked_condition_in_the_same_write(kube, shop):
    cluster = KubeCluster(kube, shop, "shop", lambda *event: None)
    start = datetime.datetime(2026, 11, 25, 10, 0, 0, tzinfo=datetime.timezone.utc)
    state = decide.start(decide.FAILOVER, "shop-0", "primary shop-0 is down", start)
    cluster.record({"failover": None})
    since = kube.get(API_VERSION, KIND, shop, "shop")["metadata"]["resourceVersion"]

    refused = decide.refuse(state, decide.Refusal("CandidateTooFarBehind", "shop-1 lags 4096 bytes"))
    cluster.record({"failover": refused})
    cluster.record({"failover": refused, "health": {"primary": "shop-0"}})  # same condition: not rewritten
    chosen = decide.mark_step(refused, decide.CHOOSE, start, to="shop-1")
    cluster.record({"failover": chosen})
    done = decide.complete(chosen, start + datetime.timedelta(seconds=2))
    cluster.record({"failover": done})

    changes = watch_from(kube, shop, since)
    seen = [(o["status"]["failover"]["phase"], condition(o["status"].get("conditions"), FAILOVER_BLOCKED))
            for o in changes]
    assert [phase for phase, _ in seen] == [decide.REFUSED, decide.REFUSED, decide.RUNNING, decide.COMPLETED]
    for phase, blocked in seen:  # every change anyone could read: the condition agrees with the phase
        assert blocked is not None
        assert blocked["status"] == ("True" if phase == decide.REFUSED else "False"), (phase, blocked)
    assert seen[0][1]["reason"] == "CandidateTooFarBehind" and seen[0][1]["message"] == "shop-1 lags 4096 bytes"
    assert seen[2][1]["reason"] == "NotBlocked"
    assert seen[1][1]["lastTransitionTime"] == seen[0][1]["lastTransitionTime"]


def test_a_cancelled_failover_clears_the_condition_a_previous_operator_set(kube, shop):
    """The condition is compared with the live object, not with what this writer last wrote:
    a new operator replica (fresh memory) still clears what its predecessor set."""
    start = datetime.datetime(2026, 11, 25, 10, 0, 0, tzinfo=datetime.timezone.utc)
    state = decide.refuse(decide.start(decide.FAILOVER, "shop-0", "down", start),
                          decide.Refusal("NoPromotableReplica", "none ready"))
    KubeCluster(kube, shop, "shop", lambda *event: None).record({"failover": state})
    assert condition(conditions_of(kube, shop), FAILOVER_BLOCKED)["status"] == "True"
    KubeCluster(kube, shop, "shop", lambda *event: None).record({"failover": decide.cancel(state, start)})
    blocked = condition(conditions_of(kube, shop), FAILOVER_BLOCKED)
    assert (blocked["status"], blocked["reason"]) == ("False", "NotBlocked")
