"""kopf wiring: one idempotent reconcile for create, update and resume, a timer that
re-applies (undoing drift) and records the observed state in status, and (handlers/
failover.py) the failover daemon. All three hold the cluster's lock and read its status
fresh from the API server, so none writes back a topology another has just changed;
conditions are written against the live list with a resourceVersion precondition
(Kube.update_status), so none drops a condition another has just set."""

from __future__ import annotations

import datetime
import logging

import kopf

from .. import GROUP, KIND, PLURAL, VERSION, metrics
from ..api.validate import InvalidSpec
from ..kube.client import KubeError
from ..status import PHASE_INVALID, READY, RECONCILED, condition, set_condition
from . import backup as backups
from . import reconcile as rec
from .clients import kube
from .locks import cluster_lock

RESOURCE = (GROUP, VERSION, PLURAL)
DRIFT_INTERVAL_SECONDS = 15
FIRST_BACKUP_WAIT_SECONDS = 600  # for every replica to be ready, so it runs off one


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # Events are for what a user must act on
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 8


def _fresh(namespace: str, name: str, cached: bool = False) -> dict | None:
    """The cluster as the API server has it now: kopf's body may predate a failover's write.
    `cached`: as the operator's watch has it (milliseconds behind, and never behind this
    replica's own writes); not for reconcile(), which must see the spec kopf reports changed."""
    read = kube().cached_get if cached else kube().get
    return read(f"{GROUP}/{VERSION}", KIND, namespace, name)


def _unchanged(current: dict, fields: dict, conditions) -> bool:
    """Whether a status write of `fields` and `conditions` would change nothing."""
    status = current.get("status") or {}
    live = status.get("conditions") or []
    if conditions(live, (current.get("metadata") or {}).get("generation")) != live:
        return False
    return merged(status, fields) == status


def merged(target, patch):
    """`target` after a JSON merge patch (RFC 7386) of `patch`."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merged(result.get(key), value)
    return result


def _record(namespace: str, name: str, status: dict, conditions) -> None:
    """Write `status` with conditions computed from the live list (a failover's condition,
    written meanwhile by the daemon or another replica, is kept)."""
    kube().update_status(f"{GROUP}/{VERSION}", KIND, namespace, name, status, conditions)


def _refuse(body, namespace: str, name: str, problems: list[str], generation) -> None:
    message = "; ".join(problems)

    def conditions(live, _):
        now = _now()
        live = set_condition(live, READY, False, "InvalidSpec", message, generation, now)
        return set_condition(live, RECONCILED, False, "InvalidSpec", message, generation, now)

    _record(namespace, name, {"phase": PHASE_INVALID}, conditions)
    kopf.warn(body, reason="InvalidSpec", message=message)


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
@kopf.on.resume(*RESOURCE)
def reconcile(name, namespace, uid, body, logger, **_) -> None:
    with cluster_lock(namespace, name), metrics.reconciling(namespace, name) as measured:
        current = _fresh(namespace, name)
        if current is None:
            measured.skip = True
            return  # deleted meanwhile
        spec, status = current.get("spec") or {}, current.get("status") or {}
        generation = current["metadata"].get("generation")
        try:
            outcome = rec.reconcile(kube(), name, namespace, uid, spec, status, generation)
        except rec.MissingSecrets as err:
            measured.result = metrics.INVALID
            _refuse(body, namespace, name, err.problems, generation)
            metrics.set_cluster_status(namespace, name, merged(status, {"phase": PHASE_INVALID}), spec)
            raise kopf.TemporaryError(f"InvalidSpec: {err}", delay=30) from None
        except InvalidSpec as err:
            measured.result = metrics.INVALID
            _refuse(body, namespace, name, err.problems, generation)
            metrics.set_cluster_status(namespace, name, merged(status, {"phase": PHASE_INVALID}), spec)
            raise kopf.PermanentError(f"InvalidSpec: {err}") from None
        except KubeError as err:
            if err.status in (400, 403, 422):
                raise kopf.TemporaryError(f"the API server refused a child object: {err}", delay=30) from None
            raise kopf.TemporaryError(str(err), delay=5) from None
        _record(namespace, name, outcome.status,
                lambda live, _: set_condition(live, RECONCILED, True, "Applied",
                                              f"{outcome.applied} objects applied", generation, _now()))
        metrics.set_cluster_status(namespace, name, merged(status, outcome.status), spec)
    if outcome.created_secrets:
        kopf.event(body, type="Normal", reason="CredentialsCreated",
                   message=f"created Secrets {', '.join(outcome.created_secrets)}")
    if outcome.pruned:
        kopf.event(body, type="Normal", reason="Pruned", message=f"removed {', '.join(outcome.pruned)}")
    logger.info("reconciled %s/%s: %d objects applied", namespace, name, outcome.applied)


@kopf.timer(*RESOURCE, interval=DRIFT_INTERVAL_SECONDS, initial_delay=DRIFT_INTERVAL_SECONDS)
def keep_in_sync(name, namespace, uid, logger, **_) -> None:
    """Undo drift and record what runs; only for a spec that was applied and is valid."""
    with cluster_lock(namespace, name), metrics.reconciling(namespace, name) as measured:
        current = _fresh(namespace, name, cached=True)
        status = (current or {}).get("status") or {}
        if current is None or "applied" not in status:
            measured.skip = True
            return  # deleted, or the create handler has not succeeded yet
        generation = current["metadata"].get("generation")
        try:
            ctx = rec.cluster_context(name, namespace, uid, current.get("spec") or {}, status)
        except InvalidSpec:
            measured.result = metrics.INVALID
            metrics.set_cluster_status(namespace, name, status, current.get("spec"))
            return  # the condition set by reconcile() already says why
        rec.apply_objects(kube(), ctx, rec.desired_objects(ctx))
        observed = rec.observed_status(kube(), ctx, status.get("health"))
        primary_ready = any(i["ready"] for i in observed["instances"] if i["name"] == ctx.topology.primary)
        age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(
            current["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        backed_up = backups.observe(kube(), ctx, current, observed["allReady"] or (
            primary_ready and age.total_seconds() > FIRST_BACKUP_WAIT_SECONDS))

        def conditions(live, _):
            for type_, ok, reason, message in backed_up.conditions:
                live = set_condition(live, type_, ok, reason, message, generation, _now())
            live = set_condition(live, READY, observed["allReady"],
                                 "AllInstancesReady" if observed["allReady"] else "InstancesNotReady",
                                 f"{observed['readyInstances']} instances ready", generation, _now())
            if condition(live, RECONCILED) is None:
                live = set_condition(live, RECONCILED, True, "Applied", "", generation, _now())
            return live

        fields = {
            "instances": observed["instances"], "readyInstances": observed["readyInstances"],
            "phase": observed["phase"], "maxLagBytes": observed["maxLagBytes"],
            **({"backup": backed_up.status} if backed_up.status else {}),
        }
        if not _unchanged(current, fields, conditions):  # an idle cluster's status stays as it is
            _record(namespace, name, fields, conditions)
        metrics.set_cluster_status(namespace, name, merged(status, fields), current.get("spec"))
    for type_, reason, message in backed_up.events:
        kopf.event(current, type=type_, reason=reason, message=message)
    before = {i.get("name"): i.get("error") for i in status.get("instances") or []}
    for instance in observed["instances"]:
        if instance.get("error") and instance["error"] != before.get(instance["name"]):
            kopf.event(current, type="Warning", reason="InstanceFailing", message=f"{instance['name']}: {instance['error']}")


from . import failover  # noqa: E402,F401  (registers the failover daemon)
