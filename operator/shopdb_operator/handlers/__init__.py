"""kopf wiring: one idempotent reconcile for create, update and resume, and a timer that
re-applies (undoing drift) and records the observed state in status."""

from __future__ import annotations

import datetime
import logging

import kopf

from .. import GROUP, PLURAL, VERSION
from ..api.validate import InvalidSpec
from ..kube.client import Kube, KubeError
from ..status import (PHASE_INVALID, READY, RECONCILED, condition, set_condition)
from . import reconcile as rec

RESOURCE = (GROUP, VERSION, PLURAL)
DRIFT_INTERVAL_SECONDS = 15

_kube: Kube | None = None


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube()
    return _kube


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


def _refuse(body, patch, problems: list[str], generation) -> None:
    message = "; ".join(problems)
    conditions = (body.get("status") or {}).get("conditions")
    conditions = set_condition(conditions, READY, False, "InvalidSpec", message, generation, _now())
    conditions = set_condition(conditions, RECONCILED, False, "InvalidSpec", message, generation, _now())
    patch.status["conditions"] = conditions
    patch.status["phase"] = PHASE_INVALID
    kopf.warn(body, reason="InvalidSpec", message=message)


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
@kopf.on.resume(*RESOURCE)
def reconcile(name, namespace, uid, spec, status, body, patch, meta, logger, **_) -> None:
    generation = meta.get("generation")
    try:
        outcome = rec.reconcile(kube(), name, namespace, uid, dict(spec), dict(status), generation)
    except InvalidSpec as err:
        _refuse(body, patch, err.problems, generation)
        raise kopf.PermanentError(f"InvalidSpec: {err}") from None
    except KubeError as err:
        if err.status in (400, 403, 422):
            raise kopf.TemporaryError(f"the API server refused a child object: {err}", delay=30) from None
        raise kopf.TemporaryError(str(err), delay=5) from None
    for key, value in outcome.status.items():
        patch.status[key] = value
    conditions = set_condition((status or {}).get("conditions"), RECONCILED, True, "Applied",
                               f"{outcome.applied} objects applied", generation, _now())
    patch.status["conditions"] = conditions
    if outcome.created_secrets:
        kopf.event(body, type="Normal", reason="CredentialsCreated", message=f"created Secrets {', '.join(outcome.created_secrets)}")
    if outcome.pruned:
        kopf.event(body, type="Normal", reason="Pruned", message=f"removed {', '.join(outcome.pruned)}")
    logger.info("reconciled %s/%s: %d objects applied", namespace, name, outcome.applied)


@kopf.timer(*RESOURCE, interval=DRIFT_INTERVAL_SECONDS, initial_delay=DRIFT_INTERVAL_SECONDS)
def keep_in_sync(name, namespace, uid, spec, status, body, patch, meta, logger, **_) -> None:
    """Undo drift and record what runs; only for a spec that was applied and is valid."""
    status = dict(status or {})
    generation = meta.get("generation")
    if "applied" not in status:
        return  # the create handler has not succeeded yet
    try:
        ctx = rec.cluster_context(name, namespace, uid, dict(spec), status)
    except InvalidSpec:
        return  # the condition set by reconcile() already says why
    objects = rec.desired_objects(ctx)
    rec.apply_objects(kube(), ctx, objects)
    observed = rec.observed_status(kube(), ctx)
    patch.status["instances"] = observed["instances"]
    patch.status["readyInstances"] = observed["readyInstances"]
    patch.status["phase"] = observed["phase"]
    patch.status["maxLagBytes"] = observed["maxLagBytes"]
    conditions = status.get("conditions")
    ready_message = f"{observed['readyInstances']} instances ready"
    conditions = set_condition(conditions, READY, observed["allReady"],
                               "AllInstancesReady" if observed["allReady"] else "InstancesNotReady",
                               ready_message, generation, _now())
    if condition(conditions, RECONCILED) is None:
        conditions = set_condition(conditions, RECONCILED, True, "Applied", "", generation, _now())
    patch.status["conditions"] = conditions
