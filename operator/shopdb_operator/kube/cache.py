"""Watch-backed reads of what the operator looks at every few seconds.

Every cluster's failover daemon checks it every 2 s and its drift timer runs every 15 s; read
from the API server, each would cost a GET of the cluster, a LIST of its pods and a GET of its
primary Lease per check, and ~15 server-side applies per drift pass. Here, one watch per kind
and namespace keeps those objects in memory instead (the informer of Kubernetes' own
controllers), so an idle cluster costs the API server and the operator no request:

- `get` / `list` answer from memory once the kind's watch in that namespace has listed
  everything (None before, and after a broken watch until it has listed again: the caller
  then asks the API server, as it did without a cache).
- Writes go through too (`observe`): what the API server answered to a write is kept unless
  the watch has delivered a newer version already, so a daemon never reads back a status older
  than its own last write.
- `unchanged` says whether an apply can be skipped: the manifest is the one last applied, and
  the object is still at the resourceVersion that apply returned (any edit, deletion or status
  change by someone else moves it). The drift timer applies again anyway every
  REAPPLY_SECONDS.

Watches are started lazily per (kind, namespace), so the operator needs list/watch only
where it has clusters (the namespace-scoped RBAC too). Only kinds carrying the cluster label
are watched, with that label as selector, and their managedFields are dropped. Of the kinds
whose content nobody reads from here (only `unchanged` looks at them), only the metadata is
kept: an idle cluster's StatefulSets and ConfigMaps would otherwise take a megabyte of the
operator's memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import TYPE_CHECKING

from .. import GROUP, VERSION

if TYPE_CHECKING:
    from .client import Kube

log = logging.getLogger(__name__)

# Kinds watched: (apiVersion, kind) -> label selector of the watch ("" = every object).
CLUSTER_LABEL = f"{GROUP}/cluster"
WATCHED = {
    ("v1", "Pod"): CLUSTER_LABEL,
    ("coordination.k8s.io/v1", "Lease"): CLUSTER_LABEL,
    (f"{GROUP}/{VERSION}", "ShopDatabaseCluster"): "",
    ("v1", "ConfigMap"): CLUSTER_LABEL,
    ("v1", "Service"): CLUSTER_LABEL,
    ("v1", "ServiceAccount"): CLUSTER_LABEL,
    ("apps/v1", "StatefulSet"): CLUSTER_LABEL,
    ("apps/v1", "Deployment"): CLUSTER_LABEL,
    ("policy/v1", "PodDisruptionBudget"): CLUSTER_LABEL,
    ("batch/v1", "CronJob"): CLUSTER_LABEL,
    ("batch/v1", "Job"): CLUSTER_LABEL,
    ("networking.k8s.io/v1", "NetworkPolicy"): CLUSTER_LABEL,
    ("rbac.authorization.k8s.io/v1", "Role"): CLUSTER_LABEL,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): CLUSTER_LABEL,
}
# Kinds read whole from the cache (cached_get/cached_list); of the others only metadata is
# kept, and get/list of them go to the API server.
CONTENT = {("v1", "Pod"), ("coordination.k8s.io/v1", "Lease"), (f"{GROUP}/{VERSION}", "ShopDatabaseCluster"),
           ("batch/v1", "Job")}
METADATA_KEPT = ("name", "namespace", "uid", "resourceVersion", "generation", "labels", "deletionTimestamp")
WATCH_SCOPE_ENV = "SHOPDB_WATCH_SCOPE"  # "cluster" (set by `shopdb-operator run` serving every namespace) or not
WATCH_SECONDS = 60  # the API server ends each watch after this; renewed from its last version (a silent
# connection is given up WATCH_SECONDS + 30 s after its last event)
RETRY_SECONDS = 2
REAPPLY_SECONDS = 600  # a manifest is applied again after this long even when nothing seems to have moved


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


def newer(a: str | None, b: str | None) -> bool:
    """Whether resourceVersion `a` comes after `b` (both etcd revisions: integers)."""
    try:
        return int(a or 0) > int(b or 0)
    except ValueError:
        return a != b


def manifest_hash(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_hashes: dict[int, tuple[dict, str]] = {}


def _hash_of(manifest: dict) -> str:
    """manifest_hash(), once per manifest object: the builders hand out the same objects
    until the cluster's spec or topology changes (builders.common.built)."""
    entry = _hashes.get(id(manifest))
    if entry is not None and entry[0] is manifest:
        return entry[1]
    if len(_hashes) > 4096:
        _hashes.clear()
    digest = manifest_hash(manifest)
    _hashes[id(manifest)] = (manifest, digest)
    return digest


def forget_hashes(manifests) -> None:
    """Drop the hashes of manifests nobody applies any more (a cluster context evicted)."""
    for manifest in manifests:
        entry = _hashes.get(id(manifest))
        if entry is not None and entry[0] is manifest:
            del _hashes[id(manifest)]


def _slim(obj: dict, metadata_only: bool = False) -> dict:
    meta = obj.get("metadata") or {}
    if metadata_only:
        return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                "metadata": {k: meta[k] for k in METADATA_KEPT if k in meta}}
    if "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


def _key(obj: dict) -> tuple[str, str]:
    return obj["metadata"].get("namespace") or "", obj["metadata"]["name"]


class Store:
    """One kind's objects (in one namespace, or in all), by (namespace, name); the watch and
    writes both update it."""

    def __init__(self, metadata_only: bool = False) -> None:
        self.metadata_only = metadata_only
        self.lock = threading.Lock()
        self.objects: dict[tuple[str, str], dict] = {}
        # (namespace, cluster label) -> the keys of its objects: a cluster's pods are listed
        # several times per check, and in every namespace's store there are all clusters' pods.
        self.by_cluster: dict[tuple[str, str | None], set[tuple[str, str]]] = {}
        self.synced = False

    @staticmethod
    def _cluster_of(key: tuple[str, str], obj: dict) -> tuple[str, str | None]:
        return key[0], (obj["metadata"].get("labels") or {}).get(CLUSTER_LABEL)

    def _set(self, key: tuple[str, str], obj: dict | None) -> None:
        old = self.objects.get(key)
        if old is not None:
            members = self.by_cluster.get(self._cluster_of(key, old))
            if members is not None:
                members.discard(key)
                if not members:
                    del self.by_cluster[self._cluster_of(key, old)]
        if obj is None:
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
            self.by_cluster.setdefault(self._cluster_of(key, obj), set()).add(key)

    def cluster_members(self, namespace: str, cluster: str) -> list[dict]:
        with self.lock:
            return [self.objects[k] for k in sorted(self.by_cluster.get((namespace, cluster), ()))]

    def replace(self, items: list[dict]) -> None:
        with self.lock:
            fresh = {_key(i): _slim(i, self.metadata_only) for i in items}
            for key, obj in self.objects.items():  # a write answered after the list was taken
                if key in fresh and newer(obj["metadata"].get("resourceVersion"),
                                          fresh[key]["metadata"].get("resourceVersion")):
                    fresh[key] = obj
            self.objects, self.by_cluster = {}, {}
            for key, obj in fresh.items():
                self._set(key, obj)
            self.synced = True

    def put(self, obj: dict, insert: bool = True) -> None:
        """`insert` False: only a newer version of an object the watch has shown (a write's
        answer must not bring back an object whose deletion the watch delivered first)."""
        key = _key(obj)
        with self.lock:
            have = self.objects.get(key)
            if have is None and not insert:
                return
            if have is None or newer(obj["metadata"].get("resourceVersion"), have["metadata"].get("resourceVersion")):
                self._set(key, _slim(obj, self.metadata_only))

    def remove(self, obj: dict) -> None:
        key = _key(obj)
        with self.lock:
            have = self.objects.get(key)
            if have is not None and not newer(have["metadata"].get("resourceVersion"),
                                              obj["metadata"].get("resourceVersion")):
                self._set(key, None)


class Informer:
    """A LIST, then a WATCH from its resourceVersion, renewed for as long as the process runs."""

    def __init__(self, kube: "Kube", api_version: str, kind: str, namespace: str | None, selector: str):
        self.kube, self.api_version, self.kind, self.namespace, self.selector = kube, api_version, kind, namespace, selector
        self.store = Store(metadata_only=(api_version, kind) not in CONTENT)
        self.thread = threading.Thread(target=self._run, name=f"watch {kind} {namespace or '*'}", daemon=True)
        self.thread.start()

    def _query(self) -> list[tuple[str, str]]:
        return [("labelSelector", self.selector)] if self.selector else []

    def _run(self) -> None:
        while True:
            try:
                version = self._list()
                while True:
                    version = self._watch(version)
            except Gone:
                log.debug("watch of %s in %s: version too old, listing again", self.kind, self.namespace)
            except Exception as err:  # the API server restarts, a network fault: read from it meanwhile
                self.store.synced = False
                log.info("watch of %s in %s broke (%s); listing again in %d s", self.kind, self.namespace,
                         type(err).__name__, RETRY_SECONDS)
                time.sleep(RETRY_SECONDS)

    def _list(self) -> str:
        from .client import resource_path
        result = self.kube.request("GET", resource_path(self.api_version, self.kind, self.namespace),
                                   query=self._query()) or {}
        self.store.replace(result.get("items") or [])
        return (result.get("metadata") or {}).get("resourceVersion") or ""

    def _watch(self, version: str) -> str:
        from .client import resource_path
        query = self._query() + [("watch", "1"), ("resourceVersion", version), ("allowWatchBookmarks", "true"),
                                 ("timeoutSeconds", str(WATCH_SECONDS))]
        for event in self.kube.watch(resource_path(self.api_version, self.kind, self.namespace), query,
                                     WATCH_SECONDS + 30):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Gone()
                raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind in ("ADDED", "MODIFIED"):
                self.store.put(obj)
            elif kind == "DELETED":
                self.store.remove(obj)
        return version


class Cache:
    """The operator's informers, started on first use of a kind (in a namespace, or in every
    namespace when `cluster_wide`: one watch per kind however many namespaces hold clusters)."""

    def __init__(self, kube: "Kube", cluster_wide: bool = False):
        self.kube, self.cluster_wide = kube, cluster_wide
        self.lock = threading.Lock()
        self.informers: dict[tuple[str, str, str | None], Informer] = {}
        # (kind, namespace, name) -> (hash of the manifest applied, resourceVersion it got, when)
        self.applied: dict[tuple[str, str, str], tuple[str, str, float]] = {}

    def _store(self, api_version: str, kind: str, namespace: str | None, start: bool = True) -> Store | None:
        if not namespace or (api_version, kind) not in WATCHED:
            return None
        key = (api_version, kind, None if self.cluster_wide else namespace)
        informer = self.informers.get(key)
        if informer is None and start:
            with self.lock:
                informer = self.informers.get(key)
                if informer is None:
                    informer = self.informers[key] = Informer(self.kube, api_version, kind, key[2],
                                                              WATCHED[(api_version, kind)])
        return informer.store if informer is not None else None

    def get(self, api_version: str, kind: str, namespace: str, name: str,
            metadata: bool = False) -> tuple[bool, dict | None]:
        """(True, the object or None when it does not exist), or (False, None): not known yet,
        or only its metadata is kept and `metadata` (that is all the caller reads) is not set."""
        store = self._store(api_version, kind, namespace)
        if store is None or not store.synced or (store.metadata_only and not metadata):
            return False, None
        return True, store.objects.get((namespace, name))

    def list(self, api_version: str, kind: str, namespace: str, labels: dict[str, str]) -> list[dict] | None:
        store = self._store(api_version, kind, namespace)
        if store is None or not store.synced or store.metadata_only:
            return None
        if CLUSTER_LABEL in labels:
            candidates = store.cluster_members(namespace, labels[CLUSTER_LABEL])
        else:
            candidates = [o for (ns, _), o in list(store.objects.items()) if ns == namespace]
        return [o for o in candidates
                if all(((o["metadata"].get("labels") or {}).get(k)) == v for k, v in labels.items())]

    def observe(self, obj: dict | None) -> None:
        """A write's answer: kept unless the watch has delivered something newer (or the
        object's deletion)."""
        if not isinstance(obj, dict) or "metadata" not in obj:
            return
        store = self._store(obj.get("apiVersion", ""), obj.get("kind", ""), obj["metadata"].get("namespace"),
                            start=False)
        if store is not None:
            store.put(obj, insert=False)

    def unchanged(self, manifest: dict) -> bool:
        """An apply of `manifest` would change nothing (see the module's docstring)."""
        meta = manifest["metadata"]
        key = (manifest["kind"], meta.get("namespace") or "", meta["name"])
        record = self.applied.get(key)
        if record is None or time.monotonic() - record[2] > REAPPLY_SECONDS:
            return False
        known, live = self.get(manifest["apiVersion"], manifest["kind"], meta.get("namespace") or "", meta["name"],
                               metadata=True)
        return (known and live is not None and record[0] == _hash_of(manifest)
                and live["metadata"].get("resourceVersion") == record[1])

    def applied_now(self, manifest: dict, result: dict | None) -> None:
        meta = manifest["metadata"]
        version = ((result or {}).get("metadata") or {}).get("resourceVersion")
        key = (manifest["kind"], meta.get("namespace") or "", meta["name"])
        if version:
            self.applied[key] = (_hash_of(manifest), version, time.monotonic())
        else:
            self.applied.pop(key, None)
