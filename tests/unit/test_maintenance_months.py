"""Month arithmetic and partition bounds for `maintain partitions` (pure)."""

from __future__ import annotations

from datetime import date

import pytest

from shopdb_operator.maintenance.errors import MaintenanceError
from shopdb_operator.maintenance.months import (MonthRange, add_months, months_to_keep_ready,
                                                 retention_cutoff)
from shopdb_operator.maintenance.partitions import ExistingPartition, parse_bound


def lowers(months: list[MonthRange]) -> list[str]:
    return [f"{m.lower:%Y-%m}" for m in months]


@pytest.mark.parametrize("start, count, expected", [
    (date(2026, 1, 1), 1, date(2026, 2, 1)),
    (date(2026, 12, 1), 1, date(2027, 1, 1)),
    (date(2026, 11, 1), 14, date(2028, 1, 1)),
    (date(2026, 1, 1), -1, date(2025, 12, 1)),
    (date(2026, 3, 1), -27, date(2023, 12, 1)),
])
def test_add_months(start, count, expected):
    assert add_months(start, count) == expected


def test_current_and_next_months_across_the_year_boundary():
    months = months_to_keep_ready(date(2026, 12, 31), 3)
    assert lowers(months) == ["2026-12", "2027-01", "2027-02", "2027-03"]
    assert months[0].upper == date(2027, 1, 1)
    assert months[-1].upper == date(2027, 4, 1)


def test_any_day_of_the_month_gives_the_same_months():
    assert {tuple(lowers(months_to_keep_ready(date(2026, 2, d), 1))) for d in (1, 14, 28)} == {("2026-02", "2026-03")}


def test_missed_runs_fill_the_gap_after_the_newest_partition():
    months = months_to_keep_ready(date(2026, 6, 3), 1, covered_until=date(2026, 3, 1))
    assert lowers(months) == ["2026-03", "2026-04", "2026-05", "2026-06", "2026-07"]
    # Partitions already ahead: nothing before the current month.
    assert lowers(months_to_keep_ready(date(2026, 6, 3), 1, covered_until=date(2026, 9, 1))) == ["2026-06", "2026-07"]


def test_gap_filling_stops_at_the_retention_cutoff():
    cutoff = retention_cutoff(date(2026, 6, 3), 2)
    assert cutoff == date(2026, 4, 1)
    months = months_to_keep_ready(date(2026, 6, 3), 0, covered_until=date(2025, 1, 1), not_before=cutoff)
    assert lowers(months) == ["2026-04", "2026-05", "2026-06"]


def test_partition_names_fit_in_an_identifier():
    month = MonthRange(date(2027, 1, 1), date(2027, 2, 1))
    assert month.partition_name("orders") == "orders_2027_01"
    assert len(month.partition_name("x" * 63)) == 63


@pytest.mark.parametrize("bound, expected", [
    ("FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-02-01 00:00:00+00')", (date(2026, 1, 1), date(2026, 2, 1))),
    ("FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')", (date(2026, 1, 1), date(2026, 2, 1))),
    ("FOR VALUES FROM (MINVALUE) TO ('2026-02-01 00:00:00')", (None, date(2026, 2, 1))),
    ("FOR VALUES FROM ('2026-01-01 00:00:00+00') TO (MAXVALUE)", (date(2026, 1, 1), None)),
    # An upper bound inside a day rounds up: retention must not drop that day's rows.
    ("FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-01-31 12:00:00+00')", (date(2026, 1, 1), date(2026, 2, 1))),
    ("DEFAULT", None),
])
def test_parse_bound(bound, expected):
    assert parse_bound(bound) == expected


def test_unexpected_bound_is_an_error():
    with pytest.raises(MaintenanceError):
        parse_bound("FOR VALUES IN (1, 2)")


def test_overlap():
    january = MonthRange(date(2026, 1, 1), date(2026, 2, 1))
    quarter = ExistingPartition("public", "q1", date(2026, 1, 1), date(2026, 4, 1), False)
    december = ExistingPartition("public", "d", date(2025, 12, 1), date(2026, 1, 1), False)
    open_start = ExistingPartition("public", "old", None, date(2026, 1, 15), False)
    assert quarter.overlaps(january)
    assert not december.overlaps(january)
    assert open_start.overlaps(january)
