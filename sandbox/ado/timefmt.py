"""ADO's date formats: PAT and job times in SQL ``datetime`` ticks, builds in .NET ticks.

Guarantees: :func:`format_ado_datetime` prints what ADO prints for a time it stored (1/300 s
precision, up to 7 fractional digits, trailing zeros trimmed); :func:`parse_datetime` accepts any
ISO-8601 date-time a client may send (naive means UTC) and raises ValueError for anything else.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

# ---------------------------------------------------------------------------------------------
# Dates. ADO keeps PAT times in SQL ``datetime`` (1/300 s ticks) and prints them with up to 7
# fractional digits, trailing zeros trimmed: ".1033333Z", ".32Z" (SPEC examples). Builds keep
# 100 ns precision.


def ado_time(t: float) -> float:
    """``t`` rounded to the 1/300 s precision ADO stores PAT and job times with."""
    return round(t * 300) / 300


def format_ado_datetime(t: float) -> str:
    """ISO-8601 UTC with up to 7 fractional digits, trailing zeros trimmed, like ADO."""
    n = round(t * 300)
    seconds, rem = divmod(n, 300)
    fraction = f"{round(rem * 10_000_000 / 300):07d}".rstrip("0")
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def format_ticks_datetime(t: float) -> str:
    """ISO-8601 UTC with exactly 7 fractional digits (.NET ticks), as the Build API prints."""
    micros = round(t * 1_000_000)
    seconds, rem = divmod(micros, 1_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{rem * 10:07d}Z"


_DT_RX = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d)(?::(\d\d)(?:\.(\d+))?)?\s*(Z|z|[+-]\d\d:?\d\d)?$"
)


def parse_datetime(text: str) -> float:
    """Parse an ISO-8601 date-time with any number of fractional digits; naive means UTC."""
    m = _DT_RX.match(text.strip())
    if not m:
        raise ValueError(f"not an ISO-8601 date-time: {text!r}")
    year, month, day, hour, minute = (int(m.group(i)) for i in range(1, 6))
    second = int(m.group(6) or 0)
    fraction = float("0." + m.group(7)) if m.group(7) else 0.0
    dt = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    tz = m.group(8)
    if tz and tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        dt -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return dt.timestamp() + fraction
