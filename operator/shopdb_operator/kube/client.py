"""The only code that talks to the Kubernetes API.

A thin layer over the official client's authenticated transport: objects stay plain
dicts (as builders make them), writes are server-side apply so that drift is undone and
no-op applies are free, and errors carry the API server's own message.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any, Callable, Iterable, Iterator

import kubernetes
from kubernetes.client import ApiClient, Configuration

log = logging.getLogger(__name__)

FIELD_MANAGER = "shopdb-operator"

# Kinds we manage: kind -> resource plural. A fixed map (not discovery) keeps RBAC tight.
PLURALS = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "Pod": "pods",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Event": "events",
    "StatefulSet": "statefulsets",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "CronJob": "cronjobs",
    "Job": "jobs",
    "NetworkPolicy": "networkpolicies",
    "Lease": "leases",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "ShopDatabaseCluster": "shopdatabaseclusters",
}


class KubeError(Exception):
    def __init__(self, status: int, message: str, reason: str = ""):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def load_configuration() -> Configuration:
    config = Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)
    return config


def resource_path(api_version: str, kind: str, namespace: str | None, name: str | None = None,
                  subresource: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    path = f"{base}/{PLURALS[kind]}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class Kube:
    def __init__(self, configuration: Configuration | None = None, timeout: float = 30,
                 cached: str | None = None):
        self.api = ApiClient(configuration or load_configuration())
        self.timeout = timeout
        # Watch-backed reads (kube/cache.py) for the operator's periodic work, `cached` being
        # "cluster" (one watch per kind) or "namespace" (one per kind and namespace); a plain
        # Kube (tests, the CLI) reads from the API server every time.
        self.cache = None
        if cached:
            from .cache import Cache
            watching = copy.copy(self.api.configuration)
            watching.connection_pool_maxsize = 64  # a connection per watch, held open
            self.cache = Cache(Kube(watching, timeout), cluster_wide=cached == "cluster")

    def request(self, method: str, path: str, body: Any = None, query: Iterable[tuple[str, str]] = (),
                content_type: str | None = None) -> dict | None:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        elif body is not None:
            headers["Content-Type"] = "application/json"
        _, url, headers, body, _ = self.api.param_serialize(
            method=method, resource_path=path, query_params=list(query),
            header_params=headers, body=body, auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, header_params=headers, body=body,
                                     _request_timeout=self.timeout)
        data = response.read()
        payload = json.loads(data) if data else None
        if response.status >= 400:
            message = payload.get("message", "") if isinstance(payload, dict) else str(data)
            reason = payload.get("reason", "") if isinstance(payload, dict) else ""
            raise KubeError(response.status, message, reason)
        return payload

    def watch(self, path: str, query: Iterable[tuple[str, str]], read_timeout: float) -> Iterator[dict]:
        """The events of a watch request, one JSON object per line, as they arrive."""
        _, url, headers, _, _ = self.api.param_serialize(
            method="GET", resource_path=path, query_params=list(query), header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        response = self.api.call_api("GET", url, header_params=headers, _request_timeout=(10, read_timeout))
        raw = response.response
        try:
            if response.status >= 400:
                raise KubeError(response.status, raw.data.decode(errors="replace")[:500])
            pending = b""
            for chunk in raw.stream(None, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            raw.release_conn()

    def cached_get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        """get(), answered from the operator's watches when they know the object's kind
        there: for periodic reads that a version some milliseconds old serves as well."""
        if self.cache is not None:
            known, obj = self.cache.get(api_version, kind, namespace, name)
            if known:
                return obj
        return self.get(api_version, kind, namespace, name)

    def cached_list(self, api_version: str, kind: str, namespace: str, label_selector: dict[str, str]) -> list[dict]:
        if self.cache is not None:
            items = self.cache.list(api_version, kind, namespace, label_selector)
            if items is not None:
                return items
        return self.list(api_version, kind, namespace, label_selector)

    def _observe(self, obj: dict | None) -> dict | None:
        if self.cache is not None:
            self.cache.observe(obj)
        return obj

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return self.request("GET", resource_path(api_version, kind, namespace, name))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None, label_selector: dict[str, str]) -> list[dict]:
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in sorted(label_selector.items())))]
        result = self.request("GET", resource_path(api_version, kind, namespace), query=query)
        return (result or {}).get("items", [])

    def log(self, namespace: str, pod: str, container: str, tail_lines: int = 200) -> str:
        """The last lines of a container's log (text, not JSON)."""
        _, url, headers, _, _ = self.api.param_serialize(
            method="GET", resource_path=resource_path("v1", "Pod", namespace, pod, "log"),
            query_params=[("container", container), ("tailLines", str(tail_lines))],
            header_params={"Accept": "*/*"}, auth_settings=["BearerToken"])
        response = self.api.call_api("GET", url, header_params=headers, _request_timeout=self.timeout)
        data = response.read()
        if response.status >= 400:
            raise KubeError(response.status, data.decode(errors="replace")[:500])
        return data.decode(errors="replace")

    def apply(self, obj: dict, force: bool = True, skip_unchanged: bool = False) -> dict | None:
        """Server-side apply: fields we set are ours; drift in them is undone. With
        `skip_unchanged`, nothing is sent when the watches show the object as this same
        manifest's last apply left it (None is returned then)."""
        if skip_unchanged and self.cache is not None and self.cache.unchanged(obj):
            return None
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        try:
            result = self.request("PATCH", path, body=obj, content_type="application/apply-patch+yaml",
                                  query=[("fieldManager", FIELD_MANAGER), ("force", str(force).lower())])
        except KubeError:
            if self.cache is not None:
                self.cache.applied_now(obj, None)
            raise
        if self.cache is not None:
            self.cache.applied_now(obj, result)
        return self._observe(result)

    def create(self, obj: dict) -> dict | None:
        """Create, or return None when the object already exists (never overwrite)."""
        meta = obj["metadata"]
        try:
            return self._observe(self.request("POST", resource_path(obj["apiVersion"], obj["kind"],
                                                                    meta.get("namespace")),
                                              body=obj, query=[("fieldManager", FIELD_MANAGER)]))
        except KubeError as err:
            if err.status == 409:
                return None
            raise

    def merge_patch(self, api_version: str, kind: str, namespace: str | None, name: str, patch: dict,
                    subresource: str | None = None, strategic: bool = False) -> dict:
        """A JSON merge patch; `strategic` for a built-in kind's lists merged by key (a pod's
        containers by name), which a merge patch would replace whole."""
        path = resource_path(api_version, kind, namespace, name, subresource)
        content_type = "application/strategic-merge-patch+json" if strategic else "application/merge-patch+json"
        return self._observe(self.request("PATCH", path, body=patch, content_type=content_type))

    def update_status(self, api_version: str, kind: str, namespace: str, name: str, fields: dict,
                      conditions: Callable[[list[dict], int | None], list[dict]] | None = None,
                      attempts: int = 5) -> bool:
        """Merge `fields` into the object's status; False when the object is gone.

        A merge patch replaces a list whole, so `conditions` (the live conditions and the
        live generation -> the new list) is computed from what the API server holds now and
        written with that resourceVersion as a precondition: a condition that another writer
        (another handler, another operator replica) set in between is never overwritten.
        A 409 Conflict reads again and recomputes.
        """
        if conditions is None:
            try:
                self.merge_patch(api_version, kind, namespace, name, {"status": fields}, subresource="status")
            except KubeError as err:
                if err.status == 404:
                    return False
                raise
            return True
        attempt = 0
        while True:
            attempt += 1
            current = self.get(api_version, kind, namespace, name)
            if current is None:
                return False
            meta = current["metadata"]
            live = (current.get("status") or {}).get("conditions") or []
            wanted = conditions(live, meta.get("generation"))
            if wanted == live and not fields:
                return True
            patch = {"metadata": {"resourceVersion": meta["resourceVersion"]},
                     "status": {**fields, "conditions": wanted}}
            try:
                self.merge_patch(api_version, kind, namespace, name, patch, subresource="status")
                return True
            except KubeError as err:
                if err.status == 404:
                    return False
                if err.status != 409 or attempt >= attempts:
                    raise
                log.debug("status of %s/%s changed meanwhile: reading it again", namespace, name)

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str,
               propagation: str = "Background", grace_seconds: int | None = None) -> bool:
        body: dict = {"propagationPolicy": propagation}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            self.request("DELETE", resource_path(api_version, kind, namespace, name), body=body)
            return True
        except KubeError as err:
            if err.status == 404:
                return False
            raise
