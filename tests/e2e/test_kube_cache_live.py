"""The operator's watch-backed reads (kube/cache.py) against the real API server: what
another client creates, edits and deletes shows up in them, a write's answer is never
overtaken by an older version, and an apply is skipped only while the object is as this
same manifest's last apply left it. No operator and no database: just the API server."""

from __future__ import annotations

import time

import pytest
from shopdb_operator.kube.client import Kube

pytestmark = pytest.mark.e2e

LABEL = {"shopdb.io/cluster": "cache-test"}


@pytest.fixture
def cached(kube: Kube) -> Kube:
    return Kube(kube.api.configuration, cached="namespace")


def eventually(predicate, what: str, seconds: float = 10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not seen within {seconds} s: {what}")


def config_map(namespace: str, name: str, value: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or LABEL}, "data": {"k": value}}


LEASE_API = "coordination.k8s.io/v1"


def lease(namespace: str, name: str, holder: str, labels: dict | None = None) -> dict:
    """A kind the operator reads whole from its cache (a cluster's primary Lease)."""
    metadata = {"name": name, "namespace": namespace}
    if labels is not None:
        metadata["labels"] = labels
    return {"apiVersion": LEASE_API, "kind": "Lease", "metadata": metadata, "spec": {"holderIdentity": holder}}


def in_cache(kube: Kube, namespace: str, name: str):
    return kube.cache.get(LEASE_API, "Lease", namespace, name)


def holder(kube: Kube, namespace: str, name: str) -> str | None:
    return ((kube.cached_get(LEASE_API, "Lease", namespace, name) or {}).get("spec") or {}).get("holderIdentity")


def test_the_cache_follows_what_others_do(cached, kube, namespace):
    assert in_cache(cached, namespace, "a") == (False, None)  # the first read starts the watch
    eventually(lambda: in_cache(cached, namespace, "a")[0], "the watch's first list")
    assert in_cache(cached, namespace, "a") == (True, None)
    assert cached.cached_get(LEASE_API, "Lease", namespace, "a") is None

    kube.create(lease(namespace, "a", "one"))  # another client, unlabelled at first
    kube.merge_patch(LEASE_API, "Lease", namespace, "a", {"metadata": {"labels": LABEL}})
    eventually(lambda: holder(cached, namespace, "a") == "one", "a labelled Lease another client created")
    kube.create(lease(namespace, "unlabelled", "one"))
    kube.merge_patch(LEASE_API, "Lease", namespace, "a", {"spec": {"holderIdentity": "two"}})
    eventually(lambda: holder(cached, namespace, "a") == "two", "an edit")
    # the watch selects the cluster label: what lacks it is not in the cache
    assert in_cache(cached, namespace, "unlabelled") == (True, None)
    assert [o["metadata"]["name"] for o in cached.cached_list(LEASE_API, "Lease", namespace, LABEL)] == ["a"]
    assert cached.cached_list(LEASE_API, "Lease", namespace, {"shopdb.io/cluster": "other"}) == []
    assert "managedFields" not in cached.cached_get(LEASE_API, "Lease", namespace, "a")["metadata"]

    kube.delete(LEASE_API, "Lease", namespace, "a")
    eventually(lambda: in_cache(cached, namespace, "a") == (True, None), "a deletion")


def test_of_kinds_nobody_reads_whole_only_metadata_is_kept(cached, kube, namespace):
    """ConfigMaps (and StatefulSets, Services...) are watched for `unchanged` alone: their
    content is not held, and reads of them go to the API server."""
    kube.apply(config_map(namespace, "m", "1"))
    cached.cache.unchanged(config_map(namespace, "m", "1"))  # starts the watch
    store = lambda: cached.cache._store("v1", "ConfigMap", namespace)  # noqa: E731
    eventually(lambda: store().synced and (namespace, "m") in store().objects, "the list")
    kept = store().objects[(namespace, "m")]
    assert "data" not in kept and kept["metadata"]["labels"] == LABEL and kept["metadata"]["resourceVersion"]
    assert cached.cache.get("v1", "ConfigMap", namespace, "m") == (False, None)
    assert cached.cached_get("v1", "ConfigMap", namespace, "m")["data"] == {"k": "1"}  # from the API server
    assert cached.cached_list("v1", "ConfigMap", namespace, LABEL)[0]["data"] == {"k": "1"}


def test_a_write_is_seen_at_once_and_never_overtaken(cached, kube, namespace):
    cached.apply(lease(namespace, "b", "1", LABEL))
    eventually(lambda: in_cache(cached, namespace, "b")[1] is not None, "the watch's first list")
    for value in range(2, 40):  # each answer is in the cache when the call returns
        written = cached.merge_patch(LEASE_API, "Lease", namespace, "b", {"spec": {"holderIdentity": str(value)}})
        seen = cached.cached_get(LEASE_API, "Lease", namespace, "b")
        assert int(seen["metadata"]["resourceVersion"]) >= int(written["metadata"]["resourceVersion"])
        assert seen["spec"]["holderIdentity"] == str(value)


def test_an_apply_is_skipped_only_while_nothing_moved(cached, kube, kubectl, namespace):
    manifest = config_map(namespace, "c", "1")
    eventually(lambda: cached.cache.get("v1", "ConfigMap", namespace, "c", metadata=True)[0], "the watch's first list")
    assert cached.apply(manifest, skip_unchanged=True) is not None  # never applied by this process
    eventually(lambda: cached.cache.unchanged(manifest), "the apply to be seen by the watch")
    assert cached.apply(manifest, skip_unchanged=True) is None

    kubectl("-n", namespace, "patch", "configmap", "c", "-p", '{"data": {"k": "drifted"}}')
    eventually(lambda: not cached.cache.unchanged(manifest), "someone else's edit")
    assert cached.apply(manifest, skip_unchanged=True) is not None
    assert kube.get("v1", "ConfigMap", namespace, "c")["data"] == {"k": "1"}  # the drift is undone

    changed = config_map(namespace, "c", "2")  # a new manifest is applied whatever the cache says
    eventually(lambda: cached.cache.unchanged(manifest), "the apply to be seen by the watch")
    assert not cached.cache.unchanged(changed)
    assert cached.apply(changed, skip_unchanged=True) is not None

    kubectl("-n", namespace, "delete", "configmap", "c")
    eventually(lambda: not cached.cache.unchanged(changed), "the deletion")
    cached.apply(changed, skip_unchanged=True)
    assert kube.get("v1", "ConfigMap", namespace, "c")["data"] == {"k": "2"}  # the deleted one is back
