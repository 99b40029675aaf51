"""The instance-agent's state machine: pure, time passed in (CLOCK_BOOTTIME seconds, the
clock the database container's fence.sh reads from /proc/uptime).

Each attempt to renew the primary lease ends in one of three ways: stored (this instance
holds the lease and renewed it), another holder (the operator handed the lease over), or no
answer (API errors, timeouts, a cut network). Only a stored renewal extends how long the
primary may write; another holder ends it at once; no answer changes nothing, and the
deadline runs out by itself. A primary past its deadline is fenced (its postmaster gets a
fast shutdown); the fence lifts only with a new stored renewal, that is, when this instance
again holds the lease the operator records it primary by.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .lease import Timing

STORED, OTHER_HOLDER, NO_ANSWER = "stored", "other-holder", "no-answer"
QUICK_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Attempt:
    """One renewal attempt, as the agent saw it."""

    sent_at: float  # when the request was sent
    outcome: str  # STORED, OTHER_HOLDER or NO_ANSWER
    timing: Timing | None = None  # what a stored renewal promised
    holder: str = ""  # the lease's holder, when it was read
    error: str = ""  # why there was no answer (no secrets: a status code or a class name)
    holder_silent_for: float | None = None  # another holder: seconds since its last renewal (wall clocks)


@dataclass(frozen=True)
class AgentState:
    me: str
    renewed_at: float | None = None  # when the last stored renewal was sent
    writable_until: float | None = None  # the primary may write until then; None: never
    holder: str = ""  # last known holder
    error: str = ""  # the last attempt's error, "" after an answer
    fenced: str = ""  # why the primary was fenced; "" while it may write


def after(state: AgentState, attempt: Attempt) -> AgentState:
    if attempt.outcome == STORED:
        until = attempt.sent_at + attempt.timing.writable_for
        return replace(state, renewed_at=attempt.sent_at, writable_until=until, holder=state.me, error="")
    if attempt.outcome == OTHER_HOLDER:
        until = attempt.sent_at if state.writable_until is None else min(state.writable_until, attempt.sent_at)
        return replace(state, writable_until=until, holder=attempt.holder, error="")
    return replace(state, error=attempt.error or "no answer")


def may_write(state: AgentState, now: float) -> bool:
    return state.writable_until is not None and now < state.writable_until


def fence_reason(state: AgentState, now: float) -> str:
    """Why this primary may not write now (one line for the log and the fence file)."""
    if state.holder and state.holder != state.me:
        return f"the primary lease names {state.holder}: this instance is no longer the recorded primary"
    if state.renewed_at is None:
        return "this instance has not renewed the primary lease since it started" + (
            f" (last error: {state.error})" if state.error else "")
    ago = now - state.renewed_at
    return (f"the primary lease was last renewed {ago:.1f} s ago and could not be renewed since"
            + (f" ({state.error})" if state.error else ""))


def verdict(state: AgentState, now: float, primary_running: bool) -> tuple[AgentState, str, str]:
    """(new state, action, log line): action "fence" (stop the postmaster), "lift" (writes may
    resume: the lease file already says so) or "" (nothing new). `primary_running`: a
    postmaster runs on data that is not a standby's."""
    if may_write(state, now):
        if state.fenced:
            return replace(state, fenced=""), "lift", "primary lease renewed: this instance may accept writes again"
        return state, "", ""
    if not primary_running:
        return state, "", ""
    reason = fence_reason(state, now)
    if state.fenced:
        return state, "fence", ""  # again (a postmaster started meanwhile): logged once already
    return replace(state, fenced=reason), "fence", f"fencing this primary: {reason}; stopping PostgreSQL (fast shutdown)"


def next_attempt_in(attempt: Attempt, interval: float) -> float:
    """Seconds until the next attempt: every renewal interval, but every QUICK_POLL_SECONDS
    while another holder has gone silent for more than two intervals. A failover is then
    likely, and the promoted instance's agent must renew the lease handed to it before the
    operator promotes it: polling fast there shortens the failover by up to an interval."""
    silent = attempt.holder_silent_for
    if attempt.outcome == OTHER_HOLDER and silent is not None and silent > 2 * interval:
        return min(QUICK_POLL_SECONDS, interval)
    return interval


def lease_file_line(state: AgentState) -> str:
    """What the lease file holds for instance.sh and fence.sh: the stored renewal's time and
    the deadline, in hundredths of a second of CLOCK_BOOTTIME (0: none)."""
    def hundredths(value: float | None) -> int:
        return 0 if value is None else int(value * 100)

    return f"{hundredths(state.renewed_at)} {hundredths(state.writable_until)}\n"
