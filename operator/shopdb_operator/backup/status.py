"""What the backup Jobs and PostgreSQL's archiver report, turned into status: pure
functions over the Jobs' logs (`pgbackrest info --output=json`) and pg_stat_archiver."""

from __future__ import annotations

import datetime
import json
import re

from ..api.spec import BackupSpec

INFO_MARKER = "SHOPDB-INFO "
VERIFY_MARKER = "SHOPDB-VERIFY "
_ERROR_LINE = re.compile(r"(ERROR: \[\d+\]: .*|FATAL: .*)")
MAX_LISTED_BACKUPS = 60  # per repository, newest kept: status stays small


def _iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _marked(log: str, marker: str):
    for line in reversed(log.splitlines()):
        if line.startswith(marker):
            try:
                return json.loads(line[len(marker):])
            except json.JSONDecodeError:
                return None
    return None


def parse_info(log: str) -> list[dict] | None:
    """The `pgbackrest info --output=json` a backup Job printed last, or None."""
    return _marked(log, INFO_MARKER)


def parse_verification(log: str) -> dict | None:
    """What a restore-verification Job found: {repo, label, ok, seconds, reason}, or None."""
    return _marked(log, VERIFY_MARKER)


def failure_reason(log: str) -> str:
    """The last pgBackRest error (or our FATAL line) of a failed Job's log; never a secret:
    pgBackRest redacts keys and our scripts never print them."""
    errors = [m.group(1).strip() for m in map(_ERROR_LINE.search, log.splitlines()) if m]
    errors = [e for e in errors if not e.startswith("FATAL: backup failed for repo")] or errors
    return (errors[-1] if errors else "the backup Job failed; see its pod's log")[:500]


def _backup_entry(backup: dict) -> dict:
    info = backup.get("info") or {}
    stamp = backup.get("timestamp") or {}
    return {
        "label": backup.get("label"),
        "type": backup.get("type"),
        "startedAt": _iso(stamp.get("start")),
        "finishedAt": _iso(stamp.get("stop")),
        "durationSeconds": (stamp["stop"] - stamp["start"]) if "start" in stamp and "stop" in stamp else None,
        "sizeBytes": info.get("size"),
        "repositorySizeBytes": (info.get("repository") or {}).get("size"),
        "walStart": (backup.get("archive") or {}).get("start"),
        "walStop": (backup.get("archive") or {}).get("stop"),
    }


def repositories_from_info(info: list[dict], backup: BackupSpec) -> dict[str, dict]:
    """Repository name -> what it holds, from one stanza's info."""
    stanza = info[0] if info else {}
    result = {}
    for index, repo in enumerate(backup.repositories, start=1):
        sets = [_backup_entry(b) for b in stanza.get("backup") or []
                if (b.get("database") or {}).get("repo-key") == index and not b.get("error")]
        sets.sort(key=lambda b: b["startedAt"] or "")
        archives = [a for a in stanza.get("archive") or [] if (a.get("database") or {}).get("repo-key") == index]
        repo_state = next((r.get("status") or {} for r in stanza.get("repo") or [] if r.get("key") == index), {})
        result[repo.name] = {
            "backups": sets[-MAX_LISTED_BACKUPS:],
            "lastSuccessfulBackup": sets[-1] if sets else None,
            # the oldest point a restore can reach: the end of the oldest backup still kept
            "firstRecoverabilityPoint": sets[0]["finishedAt"] if sets else None,
            "walRange": [archives[-1].get("min"), archives[-1].get("max")] if archives else None,
            "repositoryStatus": repo_state.get("message"),
        }
    return result


_REPO_ERROR = re.compile(r"^repo(\d+): (.*)$")
_ARCHIVE_ERROR = re.compile(r"^(?:ERROR|FATAL): (?:\[\d+\]: )?(.*)$")
_CAUSE = re.compile(r"^[A-Z][A-Za-z]*Error: (.*?):?$")
_S3_CODE = re.compile(r"<Code>([^<]{1,64})</Code>")


def archive_push_errors(text: str | None, repository_names: list[str]) -> dict[str, str]:
    """What pgBackRest's archive-push printed on its last failure, per repository name
    ("*" when it names none: a configuration or local error), the cause first. Its form, 2.45:

        ERROR: [103]: unable to find a valid repository:
               repo2: [ProtocolError] unable to load info file '.../archive.info' or ...:
               ProtocolError: HTTP request failed with 403 (Forbidden):
               *** Path/Query ***: ... *** Response Content ***: ... <Code>SignatureDoesNotMatch</Code> ...
    """
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    general = None
    for line in (text or "").splitlines():
        line = line.strip()
        repo = _REPO_ERROR.match(line)
        if repo:
            index = int(repo.group(1))
            name = repository_names[index - 1] if 0 < index <= len(repository_names) else f"repo{index}"
            current = blocks.setdefault(name, [repo.group(2)])
            continue
        error = _ARCHIVE_ERROR.match(line)
        if error:
            current = None
            if not error.group(1).startswith(("archive-push command encountered error",
                                              "unable to find a valid repository")):
                general = _trim(error.group(1))
        elif current is not None:
            current.append(line)
    errors = {name: _summary(lines) for name, lines in blocks.items()}
    if general and not errors:
        errors["*"] = general
    return errors


def _summary(lines: list[str]) -> str:
    """A repository's error block in one line: the cause (pgBackRest's first nested error and
    the S3 error code), then what failed; never the request's headers."""
    cause = next((m.group(1) for m in map(_CAUSE.match, lines[1:]) if m), None)
    code = next((m.group(1) for m in map(_S3_CODE.search, lines[1:]) if m), None)
    head = lines[0].rstrip(":")
    if cause is None:
        return _trim(head)
    return _trim(f"{cause}{': ' + code if code else ''} ({head})")


def _trim(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def archiving_state(row: dict | None, now: datetime.datetime,
                    repository_names: list[str] | None = None) -> tuple[bool, str, str, dict]:
    """(ok, reason, message, status fields) from the primary's pg_stat_archiver row:
    archiving is failing when its last failure is newer than its last success; the reason
    per repository comes from what the archive command left behind (`last_error`)."""
    if row is None:
        return False, "Unknown", "the primary could not be asked (pg_stat_archiver)", {}
    archived_at, failed_at = row.get("last_archived_time"), row.get("last_failed_time")
    fields = {
        "lastArchivedWal": row.get("last_archived_wal"),
        "lastArchivedAt": _stamp(archived_at),
        "lastArchivedAgeSeconds": int((now - archived_at).total_seconds()) if archived_at else None,
        "lastFailedWal": row.get("last_failed_wal"),
        "lastFailedAt": _stamp(failed_at),
        "failedCount": row.get("failed_count"),
        # a list (and None when nothing fails): a merge patch of status replaces it whole
        "failingRepositories": None,
    }
    if failed_at and (archived_at is None or failed_at > archived_at):
        errors = archive_push_errors(row.get("last_error"), repository_names or [])
        fields["failingRepositories"] = [{"repository": name, "error": why} if name != "*" else {"error": why}
                                         for name, why in errors.items()] or None
        message = f"archiving {row.get('last_failed_wal')} failed at {_stamp(failed_at)}"
        if errors:
            message += ": " + "; ".join(f"{name}: {why}" if name != "*" else why for name, why in errors.items())
        return False, "ArchiveFailing", message, fields
    if archived_at is None:
        return True, "NothingArchivedYet", "no WAL segment was complete yet", fields
    return True, "Archiving", f"{row.get('last_archived_wal')} archived at {_stamp(archived_at)}", fields


def _stamp(moment: datetime.datetime | None) -> str | None:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None
