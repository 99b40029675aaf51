"""A new configuration reaches every running instance within seconds, or is refused.

The operator writes each instance's ConfigMap; the kubelet puts its files in place when the
pod is synced, which an annotation on the pod (the configuration's hash) triggers at once
instead of after its sync period (a minute or more). Once the server reads the new files
(their md5 through pg_read_file), pg_file_settings and pg_hba_file_rules say whether it
would accept them. Only then is it reloaded: a configuration PostgreSQL refuses is never
loaded, and the ConfigMaps go back to the last configuration every instance loaded, so a
restart cannot fail on it. Settings that need a restart are listed per instance
(pending_restart) for the rolling update.

Status (`status.configuration`):
    parameters      spec.postgres.parameters as every instance loaded them (the last good)
    instances.NAME  {hash, loadedAt, pendingRestart: [...]}: what each one loaded
    rejected        {parametersHash, problems, at}: parameters PostgreSQL refused; the spec
                    is InvalidSpec until they change
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping

from ..builders.common import content_hash

ANNOTATION_CONFIG_HASH = "shopdb.io/config-hash"


class Step(enum.Enum):
    NOTHING = "nothing"  # loaded already, or not running (it reads the files when it starts)
    POKE = "poke"  # annotate the pod: the kubelet syncs its volumes now
    WAIT_FILES = "wait-files"  # the files are not in place yet
    REFUSE = "refuse"  # the server would refuse them: restore the last good configuration
    RELOAD = "reload"


def parameters_hash(parameters: Mapping[str, str]) -> str:
    return content_hash(dict(parameters))


def next_step(desired_hash: str, loaded_hash: str | None, pod_hash: str | None, pod_exists: bool,
              reachable: bool, files_match: bool | None = None, errors: list[str] | None = None) -> Step:
    """What to do for one instance now. `files_match` and `errors` are read from the server
    (None when it was not asked yet). A pod is poked even while its server is down: a
    crash-looping server then starts on the configuration put back."""
    if pod_exists and pod_hash != desired_hash:
        return Step.POKE
    if loaded_hash == desired_hash or not reachable:
        return Step.NOTHING
    if files_match is None:
        return Step.WAIT_FILES  # ask the server
    if not files_match:
        return Step.WAIT_FILES
    return Step.REFUSE if errors else Step.RELOAD


def rejection(status: Mapping | None, parameters: Mapping[str, str]) -> dict | None:
    """The recorded refusal of exactly these parameters, if any."""
    rejected = ((status or {}).get("configuration") or {}).get("rejected") or {}
    return rejected if rejected.get("parametersHash") == parameters_hash(parameters) else None


def last_good_parameters(status: Mapping | None) -> dict[str, str]:
    return dict(((status or {}).get("configuration") or {}).get("parameters") or {})


def refusal_message(rejected: Mapping) -> str:
    return (f"spec.postgres.parameters: PostgreSQL refused them ({'; '.join(rejected.get('problems') or [])}); "
            f"the instances keep the last good configuration; change the parameters to go on")


def stamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def loaded_entry(desired_hash: str, pending: list[str], now: datetime.datetime, incarnation: str = "") -> dict:
    """What one instance loaded; `incarnation` (pod and container restarts) tells a later
    check whether the server restarted since, which makes pendingRestart stale."""
    return {"hash": desired_hash, "loadedAt": stamp(now), "pendingRestart": pending, "incarnation": incarnation}


def loaded_hash(entry: Mapping | None, incarnation: str) -> str | None:
    """The hash an instance loaded, if the server that loaded it still runs."""
    entry = entry or {}
    return entry.get("hash") if entry.get("incarnation", "") == incarnation else None


def pending_restart(entry: Mapping | None, incarnation: str) -> list[str]:
    entry = entry or {}
    return list(entry.get("pendingRestart") or []) if entry.get("incarnation", "") == incarnation else []


def rejected_entry(parameters: Mapping[str, str], problems: list[str], now: datetime.datetime) -> dict:
    return {"parametersHash": parameters_hash(parameters), "problems": problems[:10], "at": stamp(now)}


def replace_map(old: Mapping | None, new: Mapping) -> dict:
    """A merge patch that makes a map equal to `new` (keys gone from it are deleted)."""
    return {**{k: None for k in (old or {}) if k not in new}, **new}


def all_loaded(desired: Mapping[str, str], loaded: Mapping[str, Mapping]) -> bool:
    return all((loaded.get(name) or {}).get("hash") == h for name, h in desired.items())


# --- PgBouncer -------------------------------------------------------------------------------
# Settings the spec changes, all reloadable (RELOAD through the admin console keeps every
# client connection). What needs a restart (listen address, its start script) is on the
# Deployment's template instead.
PGBOUNCER_RELOADED_KEYS = ("pool_mode", "max_client_conn", "default_pool_size", "max_prepared_statements")


def pgbouncer_expected(ini: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """From a rendered pgbouncer.ini: the reloaded [pgbouncer] settings, and each
    [databases] entry's connection settings."""
    section, settings, databases = "", {}, {}
    for line in ini.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith(";"):
            key, value = (part.strip() for part in line.split("=", 1))
            if section == "pgbouncer" and key in PGBOUNCER_RELOADED_KEYS:
                settings[key] = value
            elif section == "databases":
                databases[key] = dict(pair.split("=", 1) for pair in value.split())
    return settings, databases


def pgbouncer_loaded(ini: str, show_config: dict[str, str], show_databases: dict[str, dict[str, str]]) -> bool:
    """Whether a PgBouncer runs with `ini` (SHOW CONFIG as key -> value, SHOW DATABASES as
    name -> column -> value)."""
    settings, databases = pgbouncer_expected(ini)
    if any(str(show_config.get(k)) != v for k, v in settings.items()):
        return False
    for name, wanted in databases.items():
        shown = show_databases.get(name)
        if shown is None or any(str(shown.get(col)) != wanted[key] for key, col in
                                (("host", "host"), ("port", "port"), ("dbname", "database"),
                                 ("pool_size", "pool_size")) if key in wanted):
            return False
    return True
