"""A wrapper that keeps token values out of reprs, logs and exceptions.

Every PAT, access token, refresh token and password patrol holds is a :class:`Secret`. Its
``repr``/``str`` never show the value; ``fingerprint`` (a short SHA-256 prefix) is safe to log
and to compare. Creating one registers the value with :mod:`core.logs`' redaction filter, so a
value that leaks into a log message by mistake is still masked.
"""

from __future__ import annotations

import hashlib

_registered: set[str] = set()
_MAX_REGISTERED = 10_000


def registered_values() -> frozenset[str]:
    """Values the redaction filter must mask (every Secret created in this process)."""
    return frozenset(_registered)


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value
        if len(value) >= 8:
            if len(_registered) >= _MAX_REGISTERED:
                _registered.pop()
            _registered.add(value)

    def reveal(self) -> str:
        """The value itself: pass it only to a wire (HTTP body/header, SDK call)."""
        return self._value

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self._value.encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"Secret(sha256:{self.fingerprint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not picklable")
