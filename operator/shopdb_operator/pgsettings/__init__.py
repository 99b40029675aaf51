"""PostgreSQL's own description of its settings, per major version, and the checks a
`spec.postgres.parameters` value must pass before it reaches an instance.

The tables (`<major>.json`) are pg_settings as a server of that major version reports it
(`python -m shopdb_operator.pgsettings DSN` writes one; a dataplane test checks the shipped
table against the local PostgreSQL). Values are parsed with the rules of guc.c (integers in
any base with a unit, fractions rounded; booleans and their prefixes; enums without case),
so what passes here is what the server accepts, except for the checks a setting's own hook
makes (a time zone's name, a library to preload): pg_file_settings catches those after a
reload, and the operator restores the last good configuration.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

_TABLES = Path(__file__).parent
MEMORY_UNITS = {"B": 1, "kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}
TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "min": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}
_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")
_INT_MIN, _INT_MAX = -2 ** 31, 2 ** 31 - 1
# C's strtol(value, &end, 0) and strtod(): the leading number and where it ends.
_C_INTEGER = re.compile(r"\s*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_C_REAL = re.compile(r"\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf(inity)?|nan)", re.IGNORECASE)

# Contexts (pg_settings.context): where a new value takes effect.
INTERNAL, POSTMASTER = "internal", "postmaster"


@dataclass(frozen=True)
class Setting:
    name: str
    type: str  # bool, integer, real, enum, string
    context: str
    unit: str | None = None  # the base unit: "8kB", "kB", "ms", "s", ...
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] = ()

    @property
    def needs_restart(self) -> bool:
        return self.context == POSTMASTER

    def base_bytes(self) -> int | None:
        """Bytes in one base unit of a memory setting ("8kB" -> 8192), None otherwise."""
        match = re.fullmatch(r"(\d*)(B|kB|MB|GB|TB)", self.unit or "")
        return int(match.group(1) or 1) * MEMORY_UNITS[match.group(2)] if match else None

    def base_ms(self) -> float | None:
        return TIME_UNITS.get(self.unit or "")


@functools.cache
def table(major: int) -> dict[str, Setting] | None:
    """The settings of a PostgreSQL major version by lower-case name (names are not case
    sensitive: TimeZone is timezone), or None when no table ships for it."""
    path = _TABLES / f"{major}.json"
    if not path.exists():
        return None
    rows = json.loads(path.read_text())
    return {name.lower(): Setting(name=name, type=row["type"], context=row["context"], unit=row.get("unit"),
                          min=row.get("min"), max=row.get("max"), values=tuple(row.get("values") or ()))
            for name, row in rows.items()}


def shipped_majors() -> list[int]:
    return sorted(int(p.stem) for p in _TABLES.glob("*.json"))


def _is_bool(text: str) -> bool:
    """parse_bool(): the words above in any case, and unambiguous prefixes of them."""
    word = text.strip().lower()
    if word in ("o", ""):
        return False  # "o" could be on or off
    return any(full.startswith(word) and (len(word) >= 2 or full[0] not in "o") for full in _BOOL_WORDS)


def _with_unit(setting: Setting, number: float, rest: str) -> float | str:
    """`number` followed by `rest` (a unit or nothing) in the setting's base unit, or why not."""
    unit = rest.strip()
    if not unit:
        return number
    if setting.base_bytes() is not None:
        if unit not in MEMORY_UNITS:
            return "valid units are B, kB, MB, GB and TB"
        return number * MEMORY_UNITS[unit] / setting.base_bytes()
    if setting.base_ms() is not None:
        if unit not in TIME_UNITS:
            return "valid units are us, ms, s, min, h and d"
        return number * TIME_UNITS[unit] / setting.base_ms()
    return "it takes no unit"


def _number(setting: Setting, text: str) -> float | str:
    """The value of an integer or real setting in its base unit, or what is wrong."""
    match = _C_INTEGER.match(text) if setting.type == "integer" else None
    if match and text[match.end():match.end() + 1] not in (".", "e", "E"):
        digits = match.group(0).strip()
        number: float = int(digits, 16 if "x" in digits.lower() else 8 if re.fullmatch(r"[+-]?0[0-7]+", digits) else 10)
    else:
        match = _C_REAL.match(text)
        if not match:
            return "it is not a number"
        number = float(match.group(0))
        if math.isnan(number):
            return "it is not a number"
    value = _with_unit(setting, number, text[match.end():])
    if isinstance(value, str):
        return value
    return float(round(value)) if setting.type == "integer" else value


def _allowed(setting: Setting) -> str:
    """What a user may write, in words: the type, its unit and its range."""
    if setting.type == "bool":
        return "on or off"
    if setting.type == "enum":
        return "one of " + ", ".join(setting.values)
    low, high = _amount(setting, setting.min), _amount(setting, setting.max)
    if setting.base_bytes() is not None:
        return f"an amount of memory from {low} to {high} (units B, kB, MB, GB, TB)"
    if setting.base_ms() is not None:
        return f"a duration from {low} to {high} (units us, ms, s, min, h, d)"
    return f"{'a whole number' if setting.type == 'integer' else 'a number'} from {low} to {high}"


def _amount(setting: Setting, value: float | None) -> str:
    """A bound in the largest unit that keeps it exact: 16 x 8kB is '128kB', 86400 s is '1d'."""
    if value is None:
        return "?"
    if value < 0 or not float(value).is_integer() or abs(value) >= 1e15:
        return f"{value:g}{setting.unit or ''}"
    size, units = (setting.base_bytes(), MEMORY_UNITS) if setting.base_bytes() else (setting.base_ms(), TIME_UNITS)
    if size is None:
        return str(int(value))
    for unit, factor in sorted(units.items(), key=lambda u: -u[1]):
        amount = value * size / factor
        if amount >= 1 and float(amount).is_integer() and unit not in ("B", "us"):
            return f"{int(amount)}{unit}"
    return f"{int(value)}{setting.unit}"


def value_problem(setting: Setting, text: str) -> str | None:
    """None when PostgreSQL would accept `text` for `setting`, else what is allowed."""
    if setting.context == INTERNAL:
        return "is fixed when PostgreSQL is built or initialized and cannot be set"
    if setting.type == "string":
        return None
    if setting.type == "bool":
        ok = _is_bool(text)
    elif setting.type == "enum":
        word = text.strip().lower()
        # on/off enums (synchronous_commit, ...) also take every boolean spelling, unlisted
        ok = word in (v.lower() for v in setting.values) or ({"on", "off"} <= set(setting.values) and _is_bool(word))
    else:
        value = _number(setting, text)
        if isinstance(value, str):
            return f"{text!r} is not valid ({value}); allowed: {_allowed(setting)}"
        too_big = setting.type == "integer" and not _INT_MIN <= value <= _INT_MAX
        ok = not too_big and (setting.min is None or value >= setting.min) and (setting.max is None or value <= setting.max)
    return None if ok else f"{text!r} is not valid; allowed: {_allowed(setting)}"


def parameter_problems(major: int, parameters: dict[str, str]) -> list[str]:
    """Each parameter PostgreSQL `major` would refuse, as `name: why`. Names with a dot are an
    extension's (known only once it is loaded) and pass; without a table, nothing is checked."""
    settings = table(major)
    if settings is None:
        return []
    problems = []
    for name, text in sorted(parameters.items()):
        setting = settings.get(name.lower())
        if setting is None:
            if "." not in name:
                problems.append(f"{name}: PostgreSQL {major} has no such setting")
            continue
        problem = value_problem(setting, text)
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def in_bytes(major: int, name: str, text: str) -> int | None:
    """A memory setting's value in bytes (None: not a memory setting, or not valid)."""
    setting = (table(major) or {}).get(name.lower())
    if setting is None or setting.base_bytes() is None or value_problem(setting, text):
        return None
    value = _number(setting, text)
    return None if isinstance(value, str) or value < 0 else int(value) * setting.base_bytes()


def needs_restart(major: int, name: str) -> bool:
    setting = (table(major) or {}).get(name.lower())
    return setting is not None and setting.needs_restart


def dump(rows) -> str:
    """A table from `SELECT name, vartype, context, unit, min_val, max_val, enumvals FROM pg_settings`."""
    def number(text):
        return None if text is None else (int(text) if re.fullmatch(r"-?\d+", text) else float(text))

    table_ = {}
    for name, vartype, context, unit, low, high, values in sorted(rows):
        row = {"type": vartype, "context": context}
        if unit:
            row["unit"] = unit
        if vartype in ("integer", "real"):
            row |= {"min": number(low), "max": number(high)}
        if values:
            row["values"] = list(values)
        table_[name] = row
    return "{\n" + ",\n".join(f"  {json.dumps(n)}: {json.dumps(r, sort_keys=True)}" for n, r in table_.items()) + "\n}\n"


QUERY = "SELECT name, vartype, context, unit, min_val, max_val, enumvals FROM pg_settings"
