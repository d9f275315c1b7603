"""How the demo's story is printed: events as lines, the world as one status line.

Guarantees: on a terminal the status line is rewritten in place (``\\r``, cut to the terminal's
width so it never wraps) and every event is printed above it; piped, nothing is rewritten — the
status line is printed only when it changed, and then at most once every ``status_every``
seconds, so a log file reads as a timeline. Colour only when asked for or when the stream is a
terminal and ``NO_COLOR`` is unset (https://no-color.org); piped output carries no escape codes.
The narrator holds no clock: every call says what time it is about.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TextIO

from patrol.timeline import Event, Snapshot, Tone, short_sink

ColourChoice = Literal["auto", "always", "never"]

_RESET = "\x1b[0m"
_TONES: dict[Tone | str, str] = {
    "bad": "\x1b[1;31m", "good": "\x1b[32m", "warn": "\x1b[33m", "info": "\x1b[1;36m", "step": "\x1b[36m",
    "dim": "\x1b[2m", "title": "\x1b[1m",
}


def use_colour(stream: TextIO, env: Mapping[str, str], choice: ColourChoice = "auto") -> bool:
    """Colour for a person at a terminal; never in a pipe, a file, ``TERM=dumb`` or with ``NO_COLOR``."""
    if choice != "auto":
        return choice == "always"
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def status_line(snap: Snapshot) -> str:
    """The world in one line, most telling first: tokens, alerts, the rotation running, each ScaledJob."""
    if snap.valid is None:
        parts = ["exporter: no answer"]
    else:
        bad = [f"{token} INVALID at {','.join(sorted(short_sink(s) for s, v in sinks.items() if v < 1))}"
               for token, sinks in sorted(snap.valid.items()) if any(v < 1 for v in sinks.values())]
        parts = ["; ".join(bad) if bad else f"tokens valid ({len(snap.valid)})" if snap.valid
                 else "exporter warming up"]
    if snap.alerts is not None:
        firing = sorted(name for name, state in snap.alerts.items() if state == "firing")
        pending = sum(1 for state in snap.alerts.values() if state == "pending")
        text = ", ".join(firing) if firing else "none firing"
        parts.append(f"alerts: {text}" + (f" ({pending} pending)" if pending else ""))
    running = [r for r in snap.rotations or [] if not r.get("outcome")]
    parts.append("rotating " + ", ".join(f"{r.get('token')}: {r.get('state') or '?'}" for r in running)
                 if running else "no rotation running")
    keda = []
    for key, job in sorted((snap.scaledjobs or {}).items()):
        ready = "Ready" if job.get("ready") == "True" else "NOT READY" if job.get("ready") == "False" else "?"
        keda.append(f"{job.get('cluster', key)} {ready} q{job.get('queue_length', '?')} "
                    f"a{job.get('agents_running', '?')}")
    parts.append("KEDA " + (", ".join(keda) if keda else "?"))
    return " | ".join(parts)


class Narrator:
    """Prints events, a status line and plain lines to ``out`` (see the module's guarantees)."""

    def __init__(self, out: TextIO, *, started_at: float, colour: bool = False, live: bool = False,
                 status_every: float = 15.0, width: int = 120) -> None:
        self.out = out
        self.started_at = started_at
        self.colour = colour
        self.live = live
        self.status_every = status_every
        self.width = max(width, 20)
        self._drawn = False
        self._last_status = ""
        self._last_status_at = float("-inf")

    def paint(self, text: str, tone: str) -> str:
        return f"{_TONES[tone]}{text}{_RESET}" if self.colour and tone in _TONES else text

    def stamp(self, at: float) -> str:
        return f"[{at - self.started_at:+7.1f}s]"

    def _clear(self) -> None:
        if self._drawn:
            self.out.write("\r\x1b[K")
            self._drawn = False

    def line(self, text: str = "", tone: str = "") -> None:
        """A line that is not an event (the URLs, the summary)."""
        self._clear()
        self.out.write(self.paint(text, tone) + "\n")
        self.out.flush()

    def event(self, event: Event) -> None:
        self._clear()
        self.out.write(f"{self.paint(self.stamp(event.at), 'dim')} {self.paint(event.text, event.tone)}\n")
        self.out.flush()

    def status(self, snap: Snapshot, at: float) -> None:
        text = status_line(snap)
        if self.live:
            line = f"{self.stamp(at)} {text}"
            if len(line) > self.width - 1:
                line = line[:self.width - 2] + "…"
            self.out.write("\r\x1b[K" + self.paint(line, "dim"))
            self.out.flush()
            self._drawn = True
            return
        if text == self._last_status or at - self._last_status_at < self.status_every:
            return
        self._last_status, self._last_status_at = text, at
        self.out.write(f"{self.stamp(at)} {text}\n")
        self.out.flush()

    def close(self) -> None:
        """Leave the terminal on a fresh line."""
        self._clear()
        self.out.flush()
