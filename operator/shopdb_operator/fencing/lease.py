"""The primary lease: one coordination.k8s.io/v1 Lease per cluster (`<cluster>-primary`)
naming the one instance that may accept writes. Pure: stdlib only, time passed in (the
instance-agent imports this without the Kubernetes client).

Who writes it:
- The operator creates it naming the first primary, and hands it over (holderIdentity) in
  the fence step of a failover or a switchover. It writes with the resourceVersion it read:
  a renewal in between makes the handover fail (409) and be read again, so the renewTime it
  records is the old holder's last one.
- The holder's instance-agent renews it (renewTime, leaseDurationSeconds) every
  renew_interval, also with the resourceVersion it read. It never takes a lease that names
  another instance: the holder is the operator's record of who is primary.
- The timing the spec asks for travels in annotations, which the operator may change at
  any time; the agent renews with them and writes the duration it used into
  spec.leaseDurationSeconds, so that field is always what the last renewal promised.

The two time rules (seconds):
- The agent lets its primary write until `sent + duration - margin`, `sent` being when it
  sent its last renewal that the API server stored (its own monotonic clock). The API server
  stored it after `sent`, so the old primary stops writing `margin` before the lease ends.
- The operator counts the lease expired once `renewTime + duration + skew` lies in its own
  past. renewTime is the agent's wall clock at `sent`; `skew` allows for the two clocks'
  difference. So a cut-off primary has stopped writing at least margin + skew before anyone
  is promoted on the lease's expiry.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

API_VERSION = "coordination.k8s.io/v1"
ANNOTATION_DURATION = "shopdb.io/lease-duration-seconds"
ANNOTATION_MARGIN = "shopdb.io/fence-margin-seconds"
ANNOTATION_SKEW = "shopdb.io/clock-skew-seconds"
MIN_RENEW_INTERVAL, MAX_RENEW_INTERVAL = 1.0, 2.0


def lease_name(cluster: str) -> str:
    return f"{cluster}-primary"


def micro_time(now: datetime.datetime) -> str:
    """A Lease's MicroTime: RFC 3339 in UTC with microseconds."""
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime.datetime:
    """A MicroTime, or a Time without fractional seconds."""
    value = value.replace("Z", "+00:00")
    if "." not in value:
        value = value.replace("+00:00", ".000000+00:00")
    return datetime.datetime.fromisoformat(value)


@dataclass(frozen=True)
class Timing:
    duration: int  # leaseDurationSeconds
    margin: int  # the holder stops writing this long before its lease ends
    skew: int  # allowance for clock differences, on the operator's side

    @property
    def writable_for(self) -> int:
        """How long after sending a stored renewal the holder may go on writing."""
        return self.duration - self.margin

    @property
    def renew_interval(self) -> float:
        """A third of the writable time, within 1-2 s: three attempts before a fence."""
        return max(MIN_RENEW_INTERVAL, min(MAX_RENEW_INTERVAL, self.writable_for / 3))

    def annotations(self) -> dict[str, str]:
        return {ANNOTATION_DURATION: str(self.duration), ANNOTATION_MARGIN: str(self.margin),
                ANNOTATION_SKEW: str(self.skew)}


def _number(value, fallback: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return fallback
    return number if number >= 0 else fallback


def wanted_timing(lease: dict, default: Timing) -> Timing:
    """The timing the operator asks for (annotations); `default` fills what is missing or
    malformed. What the agent renews with."""
    annotations = (lease.get("metadata") or {}).get("annotations") or {}
    duration = _number(annotations.get(ANNOTATION_DURATION), default.duration)
    margin = _number(annotations.get(ANNOTATION_MARGIN), default.margin)
    if margin < 1 or duration - margin < 3:  # (the spec refuses these; a hand-edited lease too)
        duration, margin = default.duration, default.margin
    return Timing(duration, margin, _number(annotations.get(ANNOTATION_SKEW), default.skew))


def renewed_duration(lease: dict | None, default: int) -> int:
    """The duration the last renewal (or the handover) promised: spec.leaseDurationSeconds."""
    return _number(((lease or {}).get("spec") or {}).get("leaseDurationSeconds"), default)


def holder(lease: dict | None) -> str:
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or ""


def renew_time(lease: dict | None) -> str:
    spec = (lease or {}).get("spec") or {}
    return spec.get("renewTime") or spec.get("acquireTime") or ""


def expires_at(renewed: str, duration: int, skew: int) -> datetime.datetime | None:
    """When a lease last renewed at `renewed` counts as expired for the operator; None when
    it was never renewed (a lease without renewTime is expired)."""
    if not renewed:
        return None
    return parse_time(renewed) + datetime.timedelta(seconds=duration + skew)


def expired(renewed: str, duration: int, skew: int, now: datetime.datetime) -> bool:
    until = expires_at(renewed, duration, skew)
    return until is None or now >= until


def new_lease(name: str, namespace: str, primary: str, timing: Timing, now: datetime.datetime,
              metadata: dict | None = None) -> dict:
    """The lease as the operator creates it: naming the first primary."""
    meta = {**(metadata or {}), "name": name, "namespace": namespace}
    meta["annotations"] = {**meta.get("annotations", {}), **timing.annotations()}
    return {"apiVersion": API_VERSION, "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": primary, "leaseDurationSeconds": timing.duration,
                     "acquireTime": micro_time(now), "renewTime": micro_time(now), "leaseTransitions": 0}}


def handover_patch(lease: dict, to: str, timing: Timing, now: datetime.datetime) -> dict:
    """Merge patch moving `lease` (as read) to `to`; refused (409) if it changed since."""
    spec = lease.get("spec") or {}
    return {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"], "annotations": timing.annotations()},
            "spec": {"holderIdentity": to, "leaseDurationSeconds": timing.duration,
                     "acquireTime": micro_time(now), "renewTime": micro_time(now),
                     "leaseTransitions": int(spec.get("leaseTransitions") or 0) + 1}}


def renewal_patch(lease: dict, timing: Timing, now: datetime.datetime) -> dict:
    """Merge patch of a renewal by the holder's agent, with the duration it renews for;
    refused (409) if the lease changed since it was read (a handover in between)."""
    return {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": {"renewTime": micro_time(now), "leaseDurationSeconds": timing.duration}}
