"""Status conditions and phase: pure functions over dicts, time passed in."""

from __future__ import annotations

READY = "Ready"
RECONCILED = "Reconciled"
FAILOVER_BLOCKED = "FailoverBlocked"  # True while the recorded failover is refused
PRIMARY_FENCED = "PrimaryFenced"  # True while the primary lease's holder let it run out

PHASE_CREATING = "Creating"
PHASE_READY = "Ready"
PHASE_DEGRADED = "Degraded"
PHASE_INVALID = "InvalidSpec"


def set_condition(conditions: list[dict] | None, type_: str, status: bool, reason: str, message: str,
                  generation: int | None, now: str) -> list[dict]:
    """A new condition list with `type_` set; lastTransitionTime moves only on a change."""
    value = "True" if status else "False"
    result = []
    found = False
    for cond in conditions or []:
        if cond.get("type") != type_:
            result.append(cond)
            continue
        found = True
        changed = cond.get("status") != value
        result.append({
            "type": type_, "status": value, "reason": reason, "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": now if changed else cond.get("lastTransitionTime", now),
        })
    if not found:
        result.append({"type": type_, "status": value, "reason": reason, "message": message,
                       "observedGeneration": generation, "lastTransitionTime": now})
    return result


def condition(conditions: list[dict] | None, type_: str) -> dict | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def summarize_instances(instances: list[dict]) -> tuple[str, str, bool]:
    """(readyInstances like '3/4', phase, all ready) from observed instances."""
    ready = sum(1 for i in instances if i.get("ready"))
    total = len(instances)
    all_ready = total > 0 and ready == total
    phase = PHASE_READY if all_ready else (PHASE_CREATING if ready == 0 else PHASE_DEGRADED)
    return f"{ready}/{total}", phase, all_ready
