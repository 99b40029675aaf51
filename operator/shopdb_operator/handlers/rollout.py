"""kopf-free wiring of changes to running instances (rollout/), run by the failover daemon
after its own work in each check, while no failover runs: one operator replica (the Lease
holder) acts, under the cluster's lock, and a failover always comes first.

Each check: PgBouncer and PostgreSQL configuration (rollout/config.py: poke the pods whose
configuration changed, reload those that read it already, all in the same check), resources
resized in place to each instance's role, then one step of the rolling update
(rollout/rolling.py), whose switchover the failover daemon runs.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time

from .. import GROUP, KIND, VERSION, postgres
from ..api.validate import InvalidSpec
from ..builders.common import COMPONENT, LABEL_CLUSTER, PGBOUNCER, POSTGRES_PORT, built, content_hash
from ..builders.pgbouncer import pgbouncer_config_map
from ..builders.common import container_resources
from ..builders.postgres import CONFIG_MOUNT, instance_config_map, instance_resources, instance_statefulset
from ..kube.client import KubeError
from ..rollout import config, rolling
from ..status import PHASE_INVALID, RECONCILED, set_condition
from .reconcile import cluster_context

log = logging.getLogger(__name__)
RELOAD_SEEN_SECONDS = 5  # how long a reload may take to reach new sessions


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def desired_configuration(ctx) -> dict[str, tuple[str, dict[str, str]]]:
    """Each instance's configuration hash and the md5 of each of its files as mounted."""
    return built(ctx, ("desired_configuration",), lambda: _desired_configuration(ctx))


def _desired_configuration(ctx) -> dict[str, tuple[str, dict[str, str]]]:
    desired = {}
    for instance in ctx.topology.instances:
        data = instance_config_map(ctx, instance)["data"]
        desired[instance.name] = (content_hash(data), {f"{CONFIG_MOUNT}/{f}": _md5(t) for f, t in sorted(data.items())})
    return desired


def _reload(conn, reconnect) -> tuple[list[str], list[str]]:
    """Reload, wait until new sessions run with it, and say what waits for a restart and
    whether anything was refused after all."""
    before = postgres.configuration_load_time(conn)
    postgres.reload_configuration(conn)
    deadline = time.monotonic() + RELOAD_SEEN_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.1)
        with reconnect() as fresh:
            if postgres.configuration_load_time(fresh) > before:
                return postgres.pending_restart(fresh), postgres.configuration_errors(fresh)
    raise RuntimeError("the reload did not reach new sessions within 5 s")


def step(actor, body: dict, post_event, now: datetime.datetime) -> rolling.Decision | None:
    """One check's worth of changes; a switchover decision is for the caller to start."""
    check = actor.check
    try:
        ctx = cluster_context(check.name, check.namespace, body["metadata"]["uid"], body.get("spec"), check.status,
                              last_good_parameters=True, generation=body["metadata"].get("generation"))
    except InvalidSpec:
        return None
    apply_pgbouncer(actor, ctx, post_event, now)
    if not apply_configuration(actor, body, ctx, post_event, now):
        return None  # refused: the last good configuration is on its way back
    resize(actor, ctx, post_event)
    return roll(actor, ctx, post_event, now)


def apply_configuration(actor, body: dict, ctx, post_event, now: datetime.datetime) -> bool:
    """One check's worth of configuration rollout; False when PostgreSQL refused it."""
    check = actor.check
    recorded = check.status.get("configuration") or {}
    loaded = dict(recorded.get("instances") or {})
    desired = desired_configuration(ctx)
    changed: dict[str, dict] = {}
    for name, (want, digests) in desired.items():
        observation = check.observations.get(name)
        pod = check.pods.get(name) or {}
        pod_hash = ((pod.get("metadata") or {}).get("annotations") or {}).get(config.ANNOTATION_CONFIG_HASH)
        reachable = bool(observation and observation.reachable)
        incarnation = observation.incarnation if observation else ""
        loaded_hash = config.loaded_hash(loaded.get(name), incarnation)
        step = config.next_step(want, loaded_hash, pod_hash, bool(pod), reachable)
        if step is config.Step.NOTHING:
            continue
        actor.in_flight = True  # the next check goes on with it (see failover.Settled)
        if step is config.Step.POKE:
            _poke(actor, name, want)
            continue
        with actor.databases.connect(name) as conn:
            files_match = postgres.file_digests(conn, digests) == digests
            errors = postgres.configuration_errors(conn) if files_match else []
            step = config.next_step(want, loaded_hash, pod_hash, True, True, files_match, errors)
            if step is config.Step.RELOAD:
                pending, errors = _reload(conn, lambda: actor.databases.connect(name))
                if not errors:
                    changed[name] = config.loaded_entry(want, pending, now, incarnation)
                    continue
                step = config.Step.REFUSE
        if step is config.Step.REFUSE:
            _refuse(actor, body, ctx, [f"{name}: {e}" for e in errors], post_event, now)
            return False
    if not changed:
        return True
    loaded |= changed
    patch: dict = {"instances": changed}
    if config.all_loaded({n: d[0] for n, d in desired.items()}, loaded):
        patch["parameters"] = config.replace_map(recorded.get("parameters"), dict(ctx.spec.postgres.parameters))
    actor.cluster.record({"configuration": patch})
    check.status = {**check.status, "configuration": {**recorded, "instances": loaded}}
    pending = sorted({p for n in changed for p in changed[n]["pendingRestart"]})
    message = f"{', '.join(sorted(changed))}: configuration reloaded"
    if pending:
        message += f"; waiting for a restart: {', '.join(pending)}"
    post_event("Normal", "ConfigurationReloaded", message)
    return True


def apply_pgbouncer(actor, ctx, post_event, now: datetime.datetime) -> None:
    """PgBouncer reads a new pgbouncer.ini on RELOAD, keeping every client connection: each
    pod is poked (its file follows), then reloaded until SHOW CONFIG and SHOW DATABASES say
    it runs with the new file (a RELOAD before the kubelet swapped the file changes nothing)."""
    check = actor.check
    ini = pgbouncer_config_map(ctx)["data"]["pgbouncer.ini"]
    want = content_hash(ini)
    recorded = (check.status.get("configuration") or {}).get("pgbouncer") or {}
    pods = actor.kube.cached_list("v1", "Pod", check.namespace, {LABEL_CLUSTER: check.name, COMPONENT: PGBOUNCER})
    running = {p["metadata"]["name"]: p for p in pods
               if (p.get("status") or {}).get("podIP") and not p["metadata"].get("deletionTimestamp")}
    changed = {}
    for name, pod in sorted(running.items()):
        if recorded.get(name) == want and \
                (pod["metadata"].get("annotations") or {}).get(config.ANNOTATION_CONFIG_HASH) == want:
            continue
        actor.in_flight = True  # the next check goes on with it (see failover.Settled)
        if (pod["metadata"].get("annotations") or {}).get(config.ANNOTATION_CONFIG_HASH) != want:
            _poke(actor, name, want, pod=True)
            continue
        try:
            with postgres.pgbouncer_admin(pod["status"]["podIP"], POSTGRES_PORT, actor.poolers.user,
                                          actor.poolers.password) as conn:
                if not _pgbouncer_runs(conn, ini):
                    conn.execute("RELOAD", prepare=False)
                    if not _pgbouncer_runs(conn, ini):
                        continue  # its file is not there yet: the next check reloads again
        except postgres.Error as err:
            log.warning("PgBouncer %s: reload not checked: %s", name, type(err).__name__)
            continue
        changed[name] = want
    gone = {name: None for name in recorded if name not in running}
    if changed or gone:
        actor.cluster.record({"configuration": {"pgbouncer": {**gone, **changed}}})
    if changed and any(recorded.get(n) for n in changed):  # not a new pod's first record
        post_event("Normal", "PgBouncerReloaded", f"{', '.join(sorted(changed))}: pgbouncer.ini reloaded")


def _pgbouncer_runs(conn, ini: str) -> bool:
    settings = {str(r["key"]): str(r["value"]) for r in postgres.pgbouncer_show(conn, "CONFIG")}
    databases = {str(r["name"]): {k: str(v) for k, v in r.items()} for r in postgres.pgbouncer_show(conn, "DATABASES")}
    return config.pgbouncer_loaded(ini, settings, databases)


def _poke(actor, instance: str, want: str, pod: bool = False) -> None:
    """The kubelet syncs a pod's ConfigMap volumes when the pod changes: now, not in a minute."""
    try:
        actor.kube.merge_patch("v1", "Pod", actor.check.namespace, instance if pod else f"{instance}-0",
                               {"metadata": {"annotations": {config.ANNOTATION_CONFIG_HASH: want}}})
    except KubeError as err:
        if err.status != 404:
            raise


def _refuse(actor, body: dict, ctx, problems: list[str], post_event, now: datetime.datetime) -> None:
    """Parameters PostgreSQL refuses: record it (the spec is InvalidSpec until they change)
    and put the last good configuration back in every instance's ConfigMap."""
    check = actor.check
    rejected = config.rejected_entry(ctx.spec.postgres.parameters, problems, now)
    status = {**check.status, "configuration": {**(check.status.get("configuration") or {}), "rejected": rejected}}
    good = cluster_context(check.name, check.namespace, body["metadata"]["uid"], body.get("spec"), status,
                           last_good_parameters=True)
    for instance in good.topology.instances:
        actor.kube.apply(instance_config_map(good, instance))
    message = config.refusal_message(rejected)
    stamp = config.stamp(now)
    generation = (body.get("metadata") or {}).get("generation")
    actor.kube.update_status(f"{GROUP}/{VERSION}", KIND, check.namespace, check.name,
                             {"configuration": {"rejected": rejected}, "phase": PHASE_INVALID},
                             lambda live, _: set_condition(live, RECONCILED, False, "InvalidSpec", message,
                                                           generation, stamp))
    post_event("Warning", "InvalidSpec", message)
    log.warning("%s/%s: %s", check.namespace, check.name, message)


# --- resources in place ------------------------------------------------------------------

def resize(actor, ctx, post_event) -> None:
    """Each database container gets its role's resources in place (in-place pod resize): a
    promoted replica the primary's, a demoted primary a replica's, and a resources change
    reaches every pod without a restart. Where the cluster cannot resize (no pods/resize
    subresource before Kubernetes 1.33, or the feature off), the pod keeps its resources
    until its next restart, which takes the StatefulSet's."""
    check = actor.check
    for instance in ctx.topology.instances:
        pod = check.pods.get(instance.name)
        if not pod or pod["metadata"].get("deletionTimestamp"):
            continue
        want = container_resources(instance_resources(ctx, instance))
        container = next((c for c in pod["spec"]["containers"] if c["name"] == "postgres"), None)
        if container is None or _same_resources(container.get("resources") or {}, want):
            continue
        try:
            actor.kube.merge_patch("v1", "Pod", check.namespace, pod["metadata"]["name"],
                                   {"spec": {"containers": [{"name": "postgres", "resources": want}]}},
                                   subresource="resize", strategic=True)
        except KubeError as err:
            if err.status in (404, 405, 400, 403, 422):  # no resize here, or refused: the next restart
                log.info("%s/%s: %s not resized in place: %s", check.namespace, check.name, instance.name, err)
                continue
            raise
        post_event("Normal", "Resized", f"{instance.name}: resources resized in place to {want['limits']} "
                                        f"({ctx.topology.role_of(instance.name)})")


def _same_resources(have: dict, want: dict) -> bool:
    from ..api.quantity import parse_quantity

    def norm(section: dict | None) -> dict:
        return {k: parse_quantity(str(v)) for k, v in (section or {}).items()}

    return all(norm(have.get(k)) == norm(want.get(k)) for k in ("requests", "limits"))


# --- the rolling update ---------------------------------------------------------------------

def members(actor, ctx) -> list[rolling.Member]:
    check = actor.check
    loaded = ((check.status.get("configuration") or {}).get("instances")) or {}
    defer = ctx.spec.updates.operator_changes.value == "deferred"
    found = []
    for instance in ctx.topology.instances:
        pod = check.pods.get(instance.name)
        observation = check.observations.get(instance.name)
        incarnation = observation.incarnation if observation else ""
        template = instance_statefulset(ctx, instance)["spec"]["template"]["metadata"]["annotations"]
        annotations = ((pod or {}).get("metadata") or {}).get("annotations") or {}
        reasons, deferred = rolling.restart_reasons(
            config.pending_restart(loaded.get(instance.name), incarnation) if pod else [], annotations if pod else
            {rolling.ANNOTATION_TEMPLATE_HASH: template[rolling.ANNOTATION_TEMPLATE_HASH]},
            template[rolling.ANNOTATION_TEMPLATE_HASH], template[rolling.ANNOTATION_SPEC_HASH], defer)
        primary = instance.name == ctx.topology.primary
        alive = bool(pod) and not pod["metadata"].get("deletionTimestamp")
        ready = alive and any(c.get("type") == "Ready" and c.get("status") == "True"
                              for c in (pod.get("status") or {}).get("conditions") or [])
        streaming = bool(observation) and (observation.is_writable_primary if primary else
                                           observation.is_standby and observation.streaming)
        found.append(rolling.Member(
            name=instance.name, primary=primary, promotable=instance.promotable,
            pod_uid=pod["metadata"].get("uid", "") if alive else "", ready=ready, streaming=streaming,
            wal_position=observation.wal_position if observation else None, reasons=reasons, deferred=deferred))
    return found


def roll(actor, ctx, post_event, now: datetime.datetime) -> rolling.Decision | None:
    """One step of the rolling update; a SWITCH_OVER decision is returned for the failover
    daemon to run (status.rollout.current is recorded first)."""
    check = actor.check
    updates = ctx.spec.updates
    previous = check.status.get("rollout") or {}
    current = previous.get("current")
    found = members(actor, ctx)
    decision = rolling.decide(found, current, updates.primary_update_method.value,
                              updates.primary_update_strategy.value, now)
    by_name = {m.name: m for m in found}
    record = {
        "pending": {m.name: "; ".join(m.reasons) for m in found if m.reasons},
        "deferred": {m.name: "; ".join(m.deferred) for m in found if m.deferred},
        "waiting": decision.reason if decision.action in (rolling.WAIT, rolling.AWAIT_PROMOTE) else None,
    }
    done = list(previous.get("done") or [])
    if current and not (decision.action == rolling.WAIT and decision.instance == current.get("instance")):
        done.append(current["instance"])  # back, ready and streaming
        post_event("Normal", "RollingUpdate", f"{current['instance']} is back, ready and streaming")
        current = None
    if not previous.get("pending") and record["pending"]:
        done = []  # a new rolling update begins
    starting = decision.action in (rolling.RESTART_REPLICA, rolling.RESTART_PRIMARY, rolling.SWITCH_OVER)
    if starting:
        subject = by_name[decision.instance] if decision.action != rolling.SWITCH_OVER else \
            next(m for m in found if m.primary)
        current = rolling.current_record(decision, subject, now)
    record |= {"current": current, "done": done}
    if not record["pending"] and not current:
        record["completedAt"] = previous.get("completedAt") if not previous.get("pending") else config.stamp(now)
    if _changed(previous, record):
        patch = config.replace_map(previous, record)
        for key in ("pending", "deferred"):  # maps: merged by a merge patch, so replaced key by key
            patch[key] = config.replace_map(previous.get(key), record[key])
        actor.cluster.record({"rollout": patch})
        if record["waiting"] and record["waiting"] != previous.get("waiting"):
            post_event("Normal", "RollingUpdateWaiting", record["waiting"])
    if decision.action == rolling.RESTART_REPLICA or decision.action == rolling.RESTART_PRIMARY:
        post_event("Normal", "RollingUpdate", f"restarting {decision.instance}: {decision.reason}")
        actor.kube.delete("v1", "Pod", check.namespace, f"{decision.instance}-0")
    if decision.action == rolling.SWITCH_OVER:
        post_event("Normal", "RollingUpdate", f"switching over to {decision.instance}: {decision.reason}")
        return decision
    return None


def _changed(previous: dict, record: dict) -> bool:
    return any(previous.get(k) != v for k, v in record.items() if k != "completedAt") or (
        record.get("completedAt") and record.get("completedAt") != previous.get("completedAt"))


def primary_restarting(status: dict, now: datetime.datetime) -> bool:
    """The primary restarts in place for the rolling update: no failover meanwhile (bounded)."""
    current = (status.get("rollout") or {}).get("current") or {}
    if current.get("action") != rolling.RESTART_PRIMARY:
        return False
    since = datetime.datetime.fromisoformat(current["since"].replace("Z", "+00:00"))
    return (now - since).total_seconds() < rolling.RESTART_TIMEOUT_SECONDS
