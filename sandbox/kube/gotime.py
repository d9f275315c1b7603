"""Go's time parsing and formatting as the API server and KEDA apply them.

Guarantees: :func:`parse_go_time` accepts exactly what Go's ``time.Parse`` accepts for the
``RFC3339`` and ``RFC3339Micro`` layouts and fails with Go's exact ``*time.ParseError`` text;
:func:`format_time`/:func:`format_micro_time` write ``metav1.Time``/``metav1.MicroTime`` as the
API server serialises them (UTC ``Z``, whole seconds / exactly six fractional digits).
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta, timezone

RFC3339 = "2006-01-02T15:04:05Z07:00"
RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"


class GoTimeError(ValueError):
    """A ``time.ParseError`` with Go's exact message text."""


def _go_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_error(layout: str, value: str, layout_elem: str, value_elem: str,
                 message: str = "") -> GoTimeError:
    if message:
        return GoTimeError(f"parsing time {_go_quote(value)}{message}")
    return GoTimeError(
        f"parsing time {_go_quote(value)} as {_go_quote(layout)}: cannot parse "
        f"{_go_quote(value_elem)} as {_go_quote(layout_elem)}"
    )


def _getnum(s: str, fixed: bool) -> tuple[int, str] | None:
    if not s[:1].isdigit() or not s[:1].isascii():
        return None
    if not (len(s) > 1 and s[1].isascii() and s[1].isdigit()):
        if fixed:
            return None
        return int(s[0]), s[1:]
    return int(s[:2]), s[2:]


def parse_go_time(value: str, *, micro: bool) -> datetime:
    """``time.Parse(RFC3339, v)`` or ``time.Parse(RFC3339Micro, v)``, errors worded as Go does.

    RFC3339 tolerates any fraction after the seconds; RFC3339Micro demands exactly six digits
    (that is why a Lease ``renewTime`` from ``datetime.isoformat()`` can be refused).
    """
    layout = RFC3339_MICRO if micro else RFC3339
    rest = value
    # (prefix literal, std element) pairs of the two layouts
    steps: list[tuple[str, str]] = [
        ("", "2006"), ("-", "01"), ("-", "02"), ("T", "15"), (":", "04"), (":", "05")]
    if micro:
        steps.append(("", ".000000"))
    steps.append(("", "Z07:00"))
    nums: dict[str, int] = {}
    nsec = 0
    offset = 0
    for prefix, std in steps:
        for ch in prefix:
            if not rest or rest[0] != ch:
                raise _parse_error(layout, value, prefix, rest)
            rest = rest[1:]
        hold = rest
        bad = False
        range_err = ""
        if std == "2006":
            if len(rest) < 4 or not rest[:4].isascii() or not rest[:4].isdigit():
                bad = True
            else:
                nums["year"], rest = int(rest[:4]), rest[4:]
        elif std in ("01", "02", "15", "04", "05"):
            got = _getnum(rest, fixed=std != "15")
            if got is None:
                bad = True
            else:
                n, rest = got
                name, lo, hi = {"01": ("month", 1, 12), "02": ("day", 0, 31), "15": ("hour", 0, 23),
                                "04": ("minute", 0, 59), "05": ("second", 0, 59)}[std]
                nums[name] = n
                if not lo <= n <= hi:
                    range_err = name
                if std == "05" and not micro and len(rest) >= 2 and rest[0] in ".," and rest[1].isdigit():
                    n_end = 2
                    while n_end < len(rest) and rest[n_end].isascii() and rest[n_end].isdigit():
                        n_end += 1
                    digits = rest[1:n_end]
                    nsec = int((digits + "000000000")[:9])
                    rest = rest[n_end:]
        elif std == ".000000":
            if len(rest) < 7 or rest[0] not in ".," or not rest[1:7].isascii() or not rest[1:7].isdigit():
                bad = True
            else:
                nsec, rest = int(rest[1:7]) * 1000, rest[7:]
        elif rest[:1] == "Z":
            rest = rest[1:]
        elif len(rest) < 6 or rest[3] != ":":
            bad = True
        else:
            sign, hh, mm, rest = rest[0], rest[1:3], rest[4:6], rest[6:]
            h = _getnum(hh, True)
            m = _getnum(mm, True)
            if h is None or m is None or sign not in "+-":
                bad = True
            else:
                offset = (h[0] * 60 + m[0]) * 60 * (-1 if sign == "-" else 1)
        if range_err:
            raise _parse_error(layout, value, std, rest, f": {range_err} out of range")
        if bad:
            raise _parse_error(layout, value, std, hold)
    if rest:
        raise _parse_error(layout, value, "", rest, f": extra text: {_go_quote(rest)}")
    year, month, day = nums["year"], nums["month"], nums["day"]
    if day < 1 or day > calendar.monthrange(year, month)[1]:
        raise _parse_error(layout, value, "", rest, ": day out of range")
    tz = timezone(timedelta(seconds=offset))
    return datetime(year, month, day, nums["hour"], nums["minute"], nums["second"], nsec // 1000, tzinfo=tz)


def format_time(t: float) -> str:
    """metav1.Time as the API server writes it: RFC3339, whole seconds, UTC ``Z``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(t: float) -> str:
    """metav1.MicroTime as the API server writes it: exactly six fractional digits, ``Z``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
