"""Kubernetes resource quantities ("500m", "32Gi", "1Ti") as numbers."""

import re
from decimal import Decimal

# The subset of the Kubernetes quantity grammar we accept; the CRD uses the same pattern.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$"

_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
}

_RE = re.compile(QUANTITY_PATTERN)


def parse_quantity(text: str) -> Decimal:
    """The value of a quantity in base units (bytes, or cores)."""
    match = _RE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a quantity like '500m', '4', '16Gi' or '1Ti'")
    suffix = match.group(2) or ""
    number = str(text)[: len(str(text)) - len(suffix)]
    return Decimal(number) * _SUFFIX[suffix]


def to_bytes(text: str) -> int:
    return int(parse_quantity(text))


def to_millicores(text: str) -> int:
    return int(parse_quantity(text) * 1000)
