"""The pure parts of the operator's watch-backed reads and of what it no longer recomputes:
the store's ordering by resourceVersion, the status-write skip's merge-patch arithmetic, and
the memoized contexts and manifests. (The watches themselves run against the real API server
in tests/e2e/test_kube_cache_live.py.)"""

from __future__ import annotations

import dataclasses
import importlib

from contexts import make_context

from shopdb_operator.builders import desired_objects
from shopdb_operator.builders.postgres import instance_statefulset
from shopdb_operator.handlers import _unchanged, merged
from shopdb_operator.handlers.reconcile import cluster_context
from shopdb_operator.kube.cache import Store, newer
from shopdb_operator.topology import plan_topology


def obj(name: str, version: int, **data) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(version),
                         "managedFields": [{"manager": "x"}]}, "data": data}


def test_versions_compare_as_numbers():
    assert newer("10", "9") and not newer("9", "10") and not newer("5", "5") and newer("1", None)


def test_the_store_keeps_the_newest_version_whoever_brings_it():
    store = Store()
    store.replace([obj("a", 5, k="list")])
    assert store.synced and "managedFields" not in store.objects[("ns", "a")]["metadata"]
    store.put(obj("a", 7, k="write"), insert=False)  # a write's answer
    store.put(obj("a", 6, k="older event"))  # the watch catching up
    assert store.objects[("ns", "a")]["data"] == {"k": "write"}
    store.replace([obj("a", 6, k="relist")])  # a list taken before the write was answered
    assert store.objects[("ns", "a")]["data"] == {"k": "write"}
    store.remove(obj("a", 6))  # a deletion older than what is held does not remove it
    assert ("ns", "a") in store.objects
    store.remove(obj("a", 8))
    store.put(obj("a", 7, k="late answer"), insert=False)  # never brings back a deleted object
    assert store.objects == {}
    store.put(obj("b", 1))
    assert store.objects[("ns", "b")]["data"] == {}


def test_a_status_write_that_changes_nothing_is_skipped():
    status = {"phase": "Ready", "backup": {"lastJob": "j1", "repositories": {"r": {"n": 1}}},
              "conditions": [{"type": "Ready", "status": "True"}]}
    current = {"metadata": {"generation": 3}, "status": status}
    same = lambda live, gen: live  # noqa: E731
    assert merged(status, {"backup": {"lastJob": "j1"}, "maxLagBytes": None}) == status
    assert _unchanged(current, {"phase": "Ready", "backup": {"repositories": {"r": {"n": 1}}}, "maxLagBytes": None}, same)
    assert not _unchanged(current, {"phase": "Degraded"}, same)
    assert not _unchanged(current, {"backup": {"lastJob": None}}, same)
    assert not _unchanged(current, {"phase": "Ready"}, lambda live, gen: live + [{"type": "Other"}])


def test_contexts_and_their_manifests_are_built_once_per_input():
    spec = make_context().spec.model_dump(by_alias=True, exclude_none=True)
    status = {"topology": make_context().topology.to_status()}
    first = cluster_context("shop", "ns", "uid-1", spec, status)
    assert cluster_context("shop", "ns", "uid-1", spec, dict(status)) is first
    assert desired_objects(first) is desired_objects(first)
    moved = cluster_context("shop", "ns", "uid-1", spec, {"topology": {**status["topology"], "currentPrimary": "shop-2"}})
    assert moved is not first and moved.topology.primary == "shop-2"
    instance = next(i for i in first.topology.instances if i.name == "shop-2")
    labels = lambda ctx: instance_statefulset(ctx, instance)["spec"]["template"]["metadata"]["labels"]  # noqa: E731
    assert labels(first)["shopdb.io/role"] == "replica" and labels(moved)["shopdb.io/role"] == "primary"
    # a copy of a context starts with nothing built: never the manifests of the one it came from
    copied = dataclasses.replace(first, topology=plan_topology("shop", first.spec, moved.topology.to_status()))
    assert labels(copied)["shopdb.io/role"] == "primary"


def test_a_metadata_only_store_keeps_what_unchanged_reads_and_no_content():
    store = Store(metadata_only=True)
    store.replace([{**obj("a", 5, k="x" * 10000), "apiVersion": "v1", "kind": "ConfigMap"}])
    kept = store.objects[("ns", "a")]
    assert kept == {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "a", "namespace": "ns", "resourceVersion": "5"}}
    store.put(obj("a", 6, k="y"))
    assert store.objects[("ns", "a")]["metadata"]["resourceVersion"] == "6" and "data" not in store.objects[("ns", "a")]


def test_an_evicted_contexts_manifests_lose_their_hashes():
    """The hashes kept by manifest would otherwise keep every old context's manifests alive."""
    reconcile = importlib.import_module("shopdb_operator.handlers.reconcile")
    from shopdb_operator.kube import cache

    spec = make_context().spec.model_dump(by_alias=True, exclude_none=True)
    topology = make_context().topology.to_status()
    old = cluster_context("shop", "ns-evict", "uid-e", spec, {"topology": topology})
    manifests = desired_objects(old)
    for manifest in manifests:
        cache._hash_of(manifest)
    assert all(id(m) in cache._hashes for m in manifests)
    for n in range(reconcile.CONTEXTS_PER_CLUSTER):  # newer statuses of the same cluster
        desired_objects(cluster_context("shop", "ns-evict", "uid-e", spec,
                                        {"topology": topology, "configuration": {"n": n}}))
    assert cluster_context("shop", "ns-evict", "uid-e", spec, {"topology": topology}) is not old
    assert not any(id(m) in cache._hashes and cache._hashes[id(m)][0] is m for m in manifests)


def test_the_store_indexes_objects_by_cluster_through_relabels_and_deletions():
    def pod(name, version, cluster, namespace="ns"):
        return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": str(version),
                             "labels": {"shopdb.io/cluster": cluster} if cluster else {}}}

    store = Store()
    store.replace([pod("a-0", 1, "a"), pod("b-0", 1, "b"), pod("a-1", 1, "a"), pod("a-0", 1, "a", "other")])
    names = lambda ns, c: [o["metadata"]["name"] for o in store.cluster_members(ns, c)]  # noqa: E731
    assert names("ns", "a") == ["a-0", "a-1"] and names("ns", "b") == ["b-0"] and names("other", "a") == ["a-0"]
    store.put(pod("a-1", 2, "b"))  # relabelled
    assert names("ns", "a") == ["a-0"] and names("ns", "b") == ["a-1", "b-0"]
    store.remove(pod("a-0", 3, "a"))
    assert names("ns", "a") == [] and ("ns", "a") not in store.by_cluster
    store.replace([pod("c-0", 4, "c")])
    assert names("ns", "b") == [] and names("ns", "c") == ["c-0"]
