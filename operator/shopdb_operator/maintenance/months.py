"""Calendar arithmetic for monthly partitions: pure, no clock (today is always passed in)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

# Partition names get a `_YYYY_MM` suffix; PostgreSQL truncates identifiers at 63 bytes.
_MAX_IDENTIFIER = 63
_SUFFIX_LENGTH = len("_2024_01")


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(month: date, count: int) -> date:
    """The first day of the month `count` months after the month of `month` (count may be < 0)."""
    index = month.year * 12 + (month.month - 1) + count
    return date(index // 12, index % 12 + 1, 1)


@dataclass(frozen=True)
class MonthRange:
    lower: date  # inclusive, first day of the month
    upper: date  # exclusive, first day of the next month

    def partition_name(self, table: str) -> str:
        return f"{table[: _MAX_IDENTIFIER - _SUFFIX_LENGTH]}_{self.lower:%Y_%m}"


def months_to_keep_ready(today: date, premake: int, covered_until: date | None = None,
                         not_before: date | None = None) -> list[MonthRange]:
    """The current month and the next `premake` months, plus, after missed runs, the months
    between the end of the newest existing partition (`covered_until`) and now, so that no
    gap is left; never months that start before `not_before` (the retention cutoff).
    """
    first = month_start(today)
    if covered_until is not None and covered_until < first:
        first = month_start(covered_until)
    if not_before is not None and first < not_before:
        first = month_start(not_before)
    last = add_months(month_start(today), premake)
    months = []
    while first <= last:
        months.append(MonthRange(first, add_months(first, 1)))
        first = add_months(first, 1)
    return months


def retention_cutoff(today: date, retention_months: int) -> date:
    """Partitions that end on or before this day hold only data older than the retention."""
    return add_months(month_start(today), -retention_months)
