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


def in_cache(kube: Kube, namespace: str, name: str):
    known, obj = kube.cache.get("v1", "ConfigMap", namespace, name)
    return known, obj


def test_the_cache_follows_what_others_do(cached, kubectl, namespace):
    assert in_cache(cached, namespace, "a") == (False, None)  # the first read starts the watch
    eventually(lambda: in_cache(cached, namespace, "a")[0], "the watch's first list")
    assert in_cache(cached, namespace, "a") == (True, None)
    assert cached.cached_get("v1", "ConfigMap", namespace, "a") is None

    kubectl("-n", namespace, "create", "configmap", "a", "--from-literal=k=1")
    kubectl("-n", namespace, "label", "configmap", "a", "shopdb.io/cluster=cache-test")
    eventually(lambda: (cached.cached_get("v1", "ConfigMap", namespace, "a") or {}).get("data") == {"k": "1"},
               "a labelled ConfigMap another client created")
    kubectl("-n", namespace, "create", "configmap", "unlabelled", "--from-literal=k=1")
    kubectl("-n", namespace, "patch", "configmap", "a", "-p", '{"data": {"k": "2"}}')
    eventually(lambda: cached.cached_get("v1", "ConfigMap", namespace, "a")["data"] == {"k": "2"}, "an edit")
    # the watch selects the cluster label: what lacks it is not in the cache, and is read from the API server
    assert in_cache(cached, namespace, "unlabelled") == (True, None)
    assert [o["metadata"]["name"] for o in cached.cached_list("v1", "ConfigMap", namespace, LABEL)] == ["a"]
    assert cached.cached_list("v1", "ConfigMap", namespace, {"shopdb.io/cluster": "other"}) == []
    assert "managedFields" not in cached.cached_get("v1", "ConfigMap", namespace, "a")["metadata"]

    kubectl("-n", namespace, "delete", "configmap", "a")
    eventually(lambda: in_cache(cached, namespace, "a") == (True, None), "a deletion")


def test_a_write_is_seen_at_once_and_never_overtaken(cached, kube, namespace):
    cached.apply(config_map(namespace, "b", "1"))
    eventually(lambda: in_cache(cached, namespace, "b")[1] is not None, "the watch's first list")
    for value in range(2, 40):  # each answer is in the cache when the call returns
        written = cached.merge_patch("v1", "ConfigMap", namespace, "b", {"data": {"k": str(value)}})
        seen = cached.cached_get("v1", "ConfigMap", namespace, "b")
        assert int(seen["metadata"]["resourceVersion"]) >= int(written["metadata"]["resourceVersion"])
        assert seen["data"] == {"k": str(value)}


def test_an_apply_is_skipped_only_while_nothing_moved(cached, kube, kubectl, namespace):
    manifest = config_map(namespace, "c", "1")
    eventually(lambda: cached.cache.get("v1", "ConfigMap", namespace, "c")[0], "the watch's first list")
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
