"""The rolling update: each instance whose running pod is out of date restarts, replicas
first and one at a time, each back and streaming before the next; then the primary, by a
switchover to the most up-to-date promotable replica that is up to date (never the
analytics one), or restarted in place (`spec.updates.primaryUpdateMethod`).

What is out of date, per instance:
- settings that wait for a restart (status.configuration: pending_restart after a reload);
- the pod template: a hash of what a restart changes (image, command, environment,
  volumes, probes) on the pod, against the StatefulSet's. Labels and resources are left out:
  roles move by relabelling, and resources are resized in place. So is the instance-agent's
  image, the operator's own: a new operator version restarts no database by itself;
- with `operatorChanges: deferred`, a template that changed while the spec did not (a new
  operator version) waits for the next restart of that pod, whatever causes it.

Decisions are taken from what is observed, not from a plan, so a restarted operator
resumes by looking again; status.rollout keeps the restart in progress, so that the pod
being restarted is waited for (not taken for a degraded cluster) and each step's Event is
posted once. Nothing restarts while any instance is not ready or not streaming.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

ANNOTATION_TEMPLATE_HASH = "shopdb.io/template-hash"
ANNOTATION_SPEC_HASH = "shopdb.io/spec-hash"
SWITCHOVER, RESTART = "switchover", "restart"
UNSUPERVISED, SUPERVISED = "unsupervised", "supervised"
RESTART_TIMEOUT_SECONDS = 900  # a restarted instance back within this, or the rollout says it is stuck

# Decision actions
NOTHING, WAIT, RESTART_REPLICA, RESTART_PRIMARY, SWITCH_OVER, AWAIT_PROMOTE = (
    "nothing", "wait", "restart-replica", "restart-primary", "switchover", "await-promote")


@dataclass(frozen=True)
class Member:
    """One instance as this check sees it."""

    name: str
    primary: bool
    promotable: bool
    pod_uid: str = ""  # "" when there is no pod
    ready: bool = False
    streaming: bool = False  # a replica streams from the primary; the primary: writable
    wal_position: int | None = None
    reasons: tuple[str, ...] = ()  # why it must restart; () when up to date
    deferred: tuple[str, ...] = ()  # changes waiting for its next restart, by choice

    @property
    def healthy(self) -> bool:
        return bool(self.pod_uid) and self.ready and self.streaming


@dataclass(frozen=True)
class Decision:
    action: str
    instance: str | None = None
    reason: str = ""
    waiting_for: list[str] = field(default_factory=list)


def restart_reasons(pending_restart: list[str], pod_annotations: dict, desired_template: str, desired_spec: str,
                    defer_operator_changes: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(reasons to restart now, changes deferred to the pod's next restart)."""
    reasons, deferred = [], []
    if pending_restart:
        reasons.append(f"settings wait for a restart: {', '.join(pending_restart)}")
    if pod_annotations.get(ANNOTATION_TEMPLATE_HASH) != desired_template:
        # a pod without hashes was made by an operator version before them
        by_operator = pod_annotations.get(ANNOTATION_SPEC_HASH, desired_spec) == desired_spec
        if defer_operator_changes and by_operator:
            deferred.append("the pod template of a new operator version")
        else:
            reasons.append("a new pod template")
    return tuple(reasons), tuple(deferred)


def replica_order(members: list[Member]) -> list[Member]:
    """Replicas never promoted first (a switchover never waits on them), then the others."""
    return sorted((m for m in members if not m.primary), key=lambda m: (m.promotable, m.name))


def switchover_target(members: list[Member]) -> Member | None:
    """The most up-to-date promotable replica that is itself up to date and streaming: the
    primary moves once, to an instance that will not restart again (no double switchover)."""
    candidates = [m for m in members if not m.primary and m.promotable and m.healthy and not m.reasons]
    return max(candidates, key=lambda m: (m.wal_position or 0, [-ord(c) for c in m.name]), default=None)


def in_progress(current: dict | None, members: dict[str, Member], now: datetime.datetime) -> Decision | None:
    """While a restarted instance is not back (a new pod, ready and streaming): wait for it."""
    if not current:
        return None
    member = members.get(current.get("instance", ""))
    if member is None:
        return None
    back = member.pod_uid and member.pod_uid != current.get("podUID") and member.healthy
    if current.get("action") == SWITCH_OVER:
        back = not member.primary and member.pod_uid != current.get("podUID") and member.healthy
    if back:
        return None
    since = datetime.datetime.fromisoformat(current["since"].replace("Z", "+00:00"))
    if (now - since).total_seconds() > RESTART_TIMEOUT_SECONDS:
        return Decision(WAIT, member.name, f"{member.name} has not come back within {RESTART_TIMEOUT_SECONDS} s "
                                           f"of its restart: the rolling update is stopped until it does")
    return Decision(WAIT, member.name, f"waiting for {member.name} to come back and stream")


def decide(members: list[Member], current: dict | None, method: str, strategy: str,
           now: datetime.datetime) -> Decision:
    """The next step of the rolling update."""
    by_name = {m.name: m for m in members}
    waiting = in_progress(current, by_name, now)
    if waiting is not None:
        return waiting
    outdated = [m for m in members if m.reasons]
    if not outdated:
        return Decision(NOTHING)
    unhealthy = [m.name for m in members if not m.healthy]
    if unhealthy:
        return Decision(WAIT, None, f"paused while {', '.join(unhealthy)} not ready and streaming",
                        waiting_for=unhealthy)
    replicas = [m for m in replica_order(members) if m.reasons]
    if replicas:
        first = replicas[0]
        return Decision(RESTART_REPLICA, first.name, "; ".join(first.reasons))
    primary = outdated[0]
    why = "; ".join(primary.reasons)
    if method == RESTART:
        return Decision(RESTART_PRIMARY, primary.name, why)
    target = switchover_target(members)
    if target is None:
        return Decision(WAIT, primary.name, f"{primary.name} (primary) must restart ({why}), but no promotable "
                                            f"replica is up to date and streaming to switch over to")
    if strategy == SUPERVISED:
        return Decision(AWAIT_PROMOTE, target.name,
                        f"{primary.name} (primary) must restart ({why}): waiting for a switchover, e.g. "
                        f"`shopdb-operator promote <cluster> --to {target.name}`")
    return Decision(SWITCH_OVER, target.name, f"{primary.name} (primary) must restart ({why})")


def current_record(decision: Decision, member: Member, now: datetime.datetime) -> dict:
    """status.rollout.current for a restart or switchover just begun."""
    return {"action": decision.action, "instance": member.name, "podUID": member.pod_uid, "reason": decision.reason,
            "since": now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
