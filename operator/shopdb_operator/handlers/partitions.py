"""status.partitions: the rows each partitioned table's DEFAULT partition holds, read on the
primary every 5 minutes by the failover daemon. Rows there belong to no prepared month
(a maintenance run missed, or dates far off); the next run moves those of a month it makes."""

from __future__ import annotations

import datetime

from ..maintenance.partitions import default_partition_rows
from ..rollout.config import replace_map

CHECK_SECONDS = 300  # a fresh connection to the primary each time; the exporter's metric is the alert's


def due(last: datetime.datetime | None, now: datetime.datetime) -> bool:
    return last is None or (now - last).total_seconds() >= CHECK_SECONDS


def observe(actor, spec, status: dict, post_event) -> None:
    tables = spec.maintenance.partitioned_tables
    previous = status.get("partitions") or {}
    found = {}
    if tables:
        with actor.databases.connect(actor.check.topology.primary, dbname=spec.postgres.database) as conn:
            for table in tables:
                held = default_partition_rows(conn, table.schema_name, table.table)
                if held is not None:
                    found[f"{table.schema_name}.{table.table}"] = {"defaultPartition": held[0], "defaultRows": held[1]}
    if found != previous:
        actor.cluster.record({"partitions": replace_map(previous, found)})
    for name, entry in sorted(found.items()):
        if entry["defaultRows"] and not (previous.get(name) or {}).get("defaultRows"):
            post_event("Warning", "RowsInDefaultPartition",
                       f"{name}: {entry['defaultPartition']} holds {entry['defaultRows']} row(s) of no prepared "
                       f"month; the partition maintenance Job moves them when it makes their month")
