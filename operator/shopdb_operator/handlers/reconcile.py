"""Reconciliation: apply what the builders return, observe what is running.

Kept free of kopf so that it can be driven directly in tests; handlers/__init__.py wires
it to kopf's create/update/resume handlers and timer.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from .. import backup, certs
from ..api.validate import (InvalidSpec, applied_record, parse_spec, recovery_overlap_problem,
                            unsafe_change_problems)
from ..builders import ClusterContext, desired_objects, instance_objects
from ..builders.agent import lease_timing, primary_lease, primary_lease_name
from ..builders.common import LABEL_CLUSTER, LABEL_ROLE
from ..builders.secrets import CREDENTIALS, credential_secret
from ..failover.adapters import database_pods
from ..fencing import lease as fencing_lease
from ..kube.cache import forget_hashes
from ..kube.client import Kube, KubeError
from ..rollout import config as rollout_config
from ..status import summarize_instances
from ..topology import plan_topology

log = logging.getLogger(__name__)

DEFAULT_OPERATOR_IMAGE = "shopdb/operator:0.1.0"
# Kinds the operator creates (besides Secrets, which it never deletes by itself).
PRUNABLE = [
    ("v1", "ConfigMap"), ("v1", "Service"), ("apps/v1", "StatefulSet"), ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"), ("batch/v1", "CronJob"), ("networking.k8s.io/v1", "NetworkPolicy"),
]


def operator_image() -> str:
    return os.environ.get("SHOPDB_OPERATOR_IMAGE", DEFAULT_OPERATOR_IMAGE)


def operator_namespace() -> str:
    return os.environ.get("SHOPDB_OPERATOR_NAMESPACE", "shopdb-system")


@dataclass
class Outcome:
    """What one reconciliation did, for status and Events (never any secret value)."""

    status: dict = field(default_factory=dict)
    created_secrets: list[str] = field(default_factory=list)
    applied: int = 0
    pruned: list[str] = field(default_factory=list)


def cluster_context(name: str, namespace: str, uid: str, spec_raw: dict | None, status: dict | None,
                    last_good_parameters: bool = False, generation: int | None = None) -> ClusterContext:
    """Parse and check the spec against what was applied before; raises InvalidSpec.

    Parameters PostgreSQL refused after they were applied (status.configuration.rejected)
    make the spec invalid, or, with `last_good_parameters`, give way to the parameters every
    instance last loaded: what the instances' ConfigMaps hold meanwhile.

    The same inputs give the same context object (and so the manifests built from it, see
    builders.common.built) for as long as they stay among the last few used for that cluster
    (CONTEXTS_PER_CLUSTER).

    `generation`: the cluster's metadata.generation, when `spec_raw` is the spec the API
    server gave with it; it stands for the spec in the key (no need to serialize it again)."""
    status = status or {}
    spec_key = {"generation": generation} if generation is not None else spec_raw or {}
    key = json.dumps([name, namespace, uid, spec_key, status.get("configuration"), status.get("applied"),
                      status.get("topology"), last_good_parameters, operator_image(), operator_namespace()],
                     sort_keys=True, separators=(",", ":"), default=str)
    return _CONTEXTS.get((namespace, name, uid), key, lambda k: _cluster_context(k, spec_raw))


# A context with every manifest built from it takes ~0.4 MiB. A cluster's checks, drift
# passes and rollout use two or three at a time (its spec as given and with the last good
# parameters); older ones (each earlier status.configuration or topology) are dropped.
CONTEXTS_PER_CLUSTER = 4
CLUSTERS_REMEMBERED = 1024


class ContextCache:
    """key -> context, at most `per_cluster` per cluster, least recently used dropped first;
    at most `clusters` clusters (a deleted cluster's contexts go when they are the oldest)."""

    def __init__(self, per_cluster: int = CONTEXTS_PER_CLUSTER, clusters: int = CLUSTERS_REMEMBERED,
                 on_evict=lambda ctx: None) -> None:
        self.per_cluster, self.clusters, self.on_evict = per_cluster, clusters, on_evict
        self.lock = threading.Lock()
        self.entries: OrderedDict[tuple, OrderedDict[str, ClusterContext]] = OrderedDict()

    def get(self, cluster: tuple, key: str, build) -> ClusterContext:
        with self.lock:
            found = self.entries.get(cluster)
            if found is not None and key in found:
                self.entries.move_to_end(cluster)
                found.move_to_end(key)
                return found[key]
        ctx = build(key)  # outside the lock (may raise InvalidSpec: nothing kept)
        with self.lock:
            found = self.entries.setdefault(cluster, OrderedDict())
            self.entries.move_to_end(cluster)
            ctx = found.setdefault(key, ctx)  # a concurrent build of the same key: one wins
            found.move_to_end(key)
            evicted = []
            while len(found) > self.per_cluster:
                evicted.append(found.popitem(last=False)[1])
            while len(self.entries) > self.clusters:
                evicted.extend(self.entries.popitem(last=False)[1].values())
        for old in evicted:
            self.on_evict(old)
        return ctx

    def __len__(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.entries.values())


def _forget_manifests(ctx: ClusterContext) -> None:
    """An evicted context's manifests are applied no more: their hashes go too (kube/cache.py
    keeps them by manifest, which would keep the manifests alive)."""
    manifests = []
    for value in ctx.memo.values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, dict) and "metadata" in item:
                manifests.append(item)
    forget_hashes(manifests)


_CONTEXTS = ContextCache(on_evict=_forget_manifests)


def _cluster_context(key: str, spec_raw: dict | None) -> ClusterContext:
    name, namespace, uid, _, configuration, applied, topology, last_good_parameters, _, _ = json.loads(key)
    status = {k: v for k, v in (("configuration", configuration), ("applied", applied), ("topology", topology))
              if v is not None}
    spec = parse_spec(spec_raw)
    rejected = rollout_config.rejection(status, spec.postgres.parameters)
    if rejected is not None and not last_good_parameters:
        raise InvalidSpec([rollout_config.refusal_message(rejected)])
    if rejected is not None:
        good = rollout_config.last_good_parameters(status)
        spec = spec.model_copy(update={"postgres": spec.postgres.model_copy(update={"parameters": good})})
    problems = unsafe_change_problems(status.get("applied"), spec)
    overlap = recovery_overlap_problem(spec, namespace, name)
    problems += [overlap] if overlap else []
    if problems:
        raise InvalidSpec(problems)
    topology = plan_topology(name, spec, status.get("topology"))
    return ClusterContext(name=name, namespace=namespace, uid=uid, spec=spec, topology=topology,
                          operator_image=operator_image(), operator_namespace=operator_namespace())


def instance_templates(name: str, namespace: str, uid: str, spec_raw: dict | None, status: dict | None,
                       topology: dict) -> list[dict] | None:
    """Each instance's StatefulSet and ConfigMap as the builders make them for `topology`
    (a status.topology record): the labels, resources and settings of each one's role.
    None while the spec cannot be applied (an unsafe change is refused)."""
    try:
        ctx = cluster_context(name, namespace, uid, spec_raw, {**(status or {}), "topology": topology},
                              last_good_parameters=True)
    except InvalidSpec:
        return None
    return instance_objects(ctx)


def ensure_secrets(kube: Kube, ctx: ClusterContext) -> list[str]:
    """Create missing credential Secrets; an existing one is never overwritten."""
    created = []
    for credential in CREDENTIALS:
        name = credential.secret_name(ctx)
        existing = kube.get("v1", "Secret", ctx.namespace, name)
        if existing is None:
            manifest = credential_secret(ctx, credential, secrets.token_urlsafe(32))
            if kube.create(manifest) is not None:
                created.append(name)
            continue
        wanted = credential_secret(ctx, credential, "")["metadata"].get("ownerReferences", [])
        if existing["metadata"].get("ownerReferences", []) != wanted:
            # the reclaim policy changed: only ownership moves, the data stays
            kube.merge_patch("v1", "Secret", ctx.namespace, name, {"metadata": {"ownerReferences": wanted or None}})
    return created


class MissingSecrets(InvalidSpec):
    """Refused until the Secrets appear: unlike a bad spec, this can heal without an edit."""


def referenced_secret_problems(kube: Kube, ctx: ClusterContext) -> list[str]:
    """Each Secret the backup settings name exists with the keys named: otherwise the pods
    would wait on a volume that never mounts, with the reason in no status."""
    wanted: list[tuple[str, str, list[str]]] = []
    repos = [(f"spec.backup.repositories[{r.name}]", r) for r in (ctx.spec.backup.repositories if ctx.spec.backup else [])]
    recovery = ctx.spec.bootstrap.recovery if ctx.spec.bootstrap else None
    if recovery is not None:
        repos.append(("spec.bootstrap.recovery.source.repository", recovery.source.repository))
    for where, repo in repos:
        creds = repo.s3.credentials
        wanted.append((f"{where}.s3.credentials", creds.secret_name, [creds.access_key_id_key, creds.secret_access_key_key]))
        if repo.s3.ca is not None:
            wanted.append((f"{where}.s3.ca", repo.s3.ca.name, [repo.s3.ca.key]))
    problems = []
    for where, secret_name, keys in wanted:
        secret = kube.get("v1", "Secret", ctx.namespace, secret_name)
        if secret is None:
            problems.append(f"{where}: Secret {secret_name} does not exist in namespace {ctx.namespace}")
            continue
        missing = [k for k in keys if k not in (secret.get("data") or {})]
        if missing:
            problems.append(f"{where}: Secret {secret_name} has no key {', '.join(missing)}")
    return problems


def ensure_backup_tls(kube: Kube, ctx: ClusterContext) -> list[str]:
    """The mutual-TLS link of backup Jobs to the instances' pgBackRest servers: a CA of this
    cluster's own, made once (never overwritten, never logged)."""
    if ctx.spec.backup is None:
        return []
    name = backup.tls_secret_name(ctx)
    if kube.get("v1", "Secret", ctx.namespace, name) is not None:
        return []
    ca = certs.new_ca(f"{ctx.namespace}/{ctx.name} pgbackrest CA")
    server = certs.issue(ca, "pgbackrest-server", backup.server_dns_names(ctx))
    client = certs.issue(ca, backup.config.BACKUP_CLIENT_CN, client=True)
    return [name] if kube.create(backup.tls_secret(ctx, ca, server, client)) is not None else []


def ensure_primary_lease(kube: Kube, ctx: ClusterContext) -> None:
    """Create the primary lease naming the recorded primary, before any pod could wait for
    it; afterwards only its timing annotations follow the spec. Its holder changes only in a
    failover's fence step, and the agent renews it: never applied."""
    name = primary_lease_name(ctx)
    lease = kube.get(fencing_lease.API_VERSION, "Lease", ctx.namespace, name)
    if lease is None:
        kube.create(primary_lease(ctx, ctx.topology.primary, datetime.datetime.now(datetime.timezone.utc)))
        return
    wanted = lease_timing(ctx.spec).annotations()
    annotations = lease["metadata"].get("annotations") or {}
    if any(annotations.get(k) != v for k, v in wanted.items()):
        kube.merge_patch(fencing_lease.API_VERSION, "Lease", ctx.namespace, name,
                         {"metadata": {"annotations": wanted}})


def apply_objects(kube: Kube, ctx: ClusterContext, objects: list[dict]) -> int:
    """Apply each object, except where the operator's watches show it as this same manifest's
    last apply left it (kube/cache.py): an idle cluster's drift pass sends nothing."""
    for obj in objects:
        try:
            kube.apply(obj, skip_unchanged=True)
        except KubeError as err:
            if obj["kind"] == "StatefulSet" and err.status == 422 and "volumeClaimTemplates" in err.message:
                grow_volumes(kube, ctx, obj)
            else:
                raise
    return len(objects)


def grow_volumes(kube: Kube, ctx: ClusterContext, statefulset: dict) -> None:
    """Volume claim templates are immutable: resize the claims, then recreate the
    StatefulSet without touching its pod (orphan delete)."""
    name = statefulset["metadata"]["name"]
    size = statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    claim = f"data-{name}-0"
    if kube.get("v1", "PersistentVolumeClaim", ctx.namespace, claim) is not None:
        kube.merge_patch("v1", "PersistentVolumeClaim", ctx.namespace, claim,
                         {"spec": {"resources": {"requests": {"storage": size}}}})
    kube.delete("apps/v1", "StatefulSet", ctx.namespace, name, propagation="Orphan")
    kube.apply(statefulset)


def prune(kube: Kube, ctx: ClusterContext, objects: list[dict]) -> list[str]:
    """Delete children this cluster owns that the spec no longer asks for.

    A removed instance's volume stays (StatefulSet retention policy), so nothing is lost.
    """
    wanted = {(o["kind"], o["metadata"]["name"]) for o in objects}
    pruned = []
    for api_version, kind in PRUNABLE:
        for item in kube.list(api_version, kind, ctx.namespace, {LABEL_CLUSTER: ctx.name}):
            meta = item["metadata"]
            owners = [ref.get("uid") for ref in meta.get("ownerReferences", [])]
            if (kind, meta["name"]) in wanted or ctx.uid not in owners:
                continue
            kube.delete(api_version, kind, ctx.namespace, meta["name"])
            pruned.append(f"{kind}/{meta['name']}")
    return pruned


def reconcile(kube: Kube, name: str, namespace: str, uid: str, spec_raw: dict | None, status: dict | None,
              generation: int | None) -> Outcome:
    """Bring the cluster's children in line with its spec. Raises InvalidSpec before
    touching anything when the spec cannot be built."""
    ctx = cluster_context(name, namespace, uid, spec_raw, status)
    problems = referenced_secret_problems(kube, ctx)
    if problems:
        raise MissingSecrets(problems)
    objects = desired_objects(ctx)
    outcome = Outcome()
    outcome.created_secrets = ensure_secrets(kube, ctx) + ensure_backup_tls(kube, ctx)
    ensure_primary_lease(kube, ctx)
    outcome.applied = apply_objects(kube, ctx, objects)
    outcome.pruned = prune(kube, ctx, objects)
    outcome.status = {
        "topology": ctx.topology.to_status(),
        "currentPrimary": ctx.topology.primary,
        "applied": applied_record(ctx.spec),
        "observedGeneration": generation,
    }
    if ((status or {}).get("configuration") or {}).get("rejected"):
        # parameters PostgreSQL refused earlier are no longer the spec's (cluster_context passed)
        outcome.status["configuration"] = {"rejected": None}
    return outcome


def observe_instances(kube: Kube, ctx: ClusterContext, health: dict | None) -> list[dict]:
    """Each instance as its pod shows it (role label, readiness), with the replication lag
    the failover monitor measured (status.health): no second connection for the same number."""
    pods = database_pods(kube, ctx.namespace, ctx.name)
    measured = (health or {}).get("instances") or {}
    observed = []
    for instance in ctx.topology.instances:
        pod = pods.get(instance.name)
        ready = False
        if pod is not None and not pod["metadata"].get("deletionTimestamp"):
            conditions = pod.get("status", {}).get("conditions", [])
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        observed.append({
            "name": instance.name,
            "role": pod["metadata"]["labels"].get(LABEL_ROLE, "") if pod else ctx.topology.role_of(instance.name),
            "ready": ready,
            "promotable": instance.promotable,
            "routes": ctx.topology.routes_of(instance.name),
        })
        if measured.get(instance.name, {}).get("lagBytes") is not None:
            observed[-1]["lagBytes"] = measured[instance.name]["lagBytes"]
        failure = None if ready else container_failure(pod)
        if failure:
            observed[-1]["error"] = failure
    return observed


def container_failure(pod: dict | None) -> str | None:
    """Why a database pod's container keeps failing, in one line: the last line its last run
    wrote (terminationMessagePolicy FallbackToLogsOnError), e.g. an image without pgBackRest
    or a restore whose target lies beyond the archived WAL."""
    for state in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        terminated = (state.get("lastState") or {}).get("terminated") or (state.get("state") or {}).get("terminated")
        if state.get("ready") or not terminated or terminated.get("exitCode") == 0:
            continue
        lines = [line.strip() for line in (terminated.get("message") or "").splitlines() if line.strip()]
        fatal = [line for line in lines if "FATAL" in line]
        text = (fatal or lines or [terminated.get("reason") or "exited"])[-1]
        return f"{state['name']}: {text}"[:300]
    return None


def observed_status(kube: Kube, ctx: ClusterContext, health: dict | None) -> dict:
    instances = observe_instances(kube, ctx, health)
    ready, phase, all_ready = summarize_instances(instances)
    lags = [i["lagBytes"] for i in instances if "lagBytes" in i]
    return {"instances": instances, "readyInstances": ready, "phase": phase, "allReady": all_ready,
            "maxLagBytes": max(lags) if lags else None}
