"""The instance-agent: a sidecar of every database pod (fencing/agent_main.py), its
ServiceAccount and the Role that lets it read and renew the cluster's primary Lease, by
name, and nothing else. Only the agent's container gets the account's token (a projected
volume); the pod itself mounts none, so PostgreSQL never sees it."""

from __future__ import annotations

import datetime

from ..api.spec import ClusterSpec
from ..fencing.lease import Timing, lease_name, new_lease
from ..topology import Instance
from .common import (POSTGRES, ClusterContext, container_security_context, metadata)

AGENT = "instance-agent"
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_VOLUME = "agent-token"
TOKEN_SECONDS = 3600  # the kubelet rotates it at 80%
RESOURCES = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}}


def service_account_name(ctx: ClusterContext) -> str:
    return ctx.child("instance")


def primary_lease_name(ctx: ClusterContext) -> str:
    return lease_name(ctx.name)


def lease_timing(spec: ClusterSpec) -> Timing:
    lease = spec.failover.lease
    return Timing(lease.duration_seconds, lease.fence_margin_seconds, lease.clock_skew_seconds)


def primary_lease(ctx: ClusterContext, holder: str, now: datetime.datetime) -> dict:
    """The Lease naming `holder` the primary, as created (never applied: the agent renews it)."""
    return new_lease(primary_lease_name(ctx), ctx.namespace, holder, lease_timing(ctx.spec), now,
                     metadata(ctx, primary_lease_name(ctx), POSTGRES))


def agent_service_account(ctx: ClusterContext) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(ctx, service_account_name(ctx), POSTGRES),
        "automountServiceAccountToken": False,
    }


def agent_role(ctx: ClusterContext) -> dict:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(ctx, service_account_name(ctx), POSTGRES),
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                   "resourceNames": [primary_lease_name(ctx)], "verbs": ["get", "patch"]}],
    }


def agent_role_binding(ctx: ClusterContext) -> dict:
    name = service_account_name(ctx)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(ctx, name, POSTGRES),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ctx.namespace}],
    }


def agent_objects(ctx: ClusterContext) -> list[dict]:
    return [agent_service_account(ctx), agent_role(ctx), agent_role_binding(ctx)]


def token_volume() -> dict:
    """What automounting would give, for one container only."""
    return {"name": TOKEN_VOLUME, "projected": {"defaultMode": 0o444, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_SECONDS}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    ]}}


def agent_container(ctx: ClusterContext, instance: Instance, pgdata: str, lease_file: str,
                    data_mount: str, run_mount: str) -> dict:
    """Runs as the database's user (the pod's), so that it may signal the postmaster in the
    pod's shared PID namespace; reads the data directory (postmaster.pid, standby.signal)
    read-only and writes the lease file into the `run` volume."""
    return {
        "name": AGENT,
        "image": ctx.operator_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["shopdb-operator", AGENT],
        "env": [
            {"name": "SHOPDB_INSTANCE", "value": instance.name},
            {"name": "SHOPDB_PRIMARY_LEASE", "value": primary_lease_name(ctx)},
            {"name": "SHOPDB_LEASE_FILE", "value": lease_file},
            {"name": "PGDATA", "value": pgdata},
            {"name": "HOME", "value": "/tmp"},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "resources": RESOURCES,
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "data", "mountPath": data_mount, "readOnly": True},
            {"name": "run", "mountPath": run_mount},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT, "readOnly": True},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
