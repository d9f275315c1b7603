"""How the demo prints: colour only for a terminal, the status line in place or deduplicated."""

from __future__ import annotations

import io

from patrol.narrator import Narrator, status_line, use_colour
from patrol.timeline import Event, Snapshot

FAILING = Snapshot(
    at=130.0,
    scaledjobs={"build-a/azure-devops/agent": {"cluster": "build-a", "ready": "False", "queue_length": 3,
                                                "agents_running": 0},
                "build-b/azure-devops/agent": {"cluster": "build-b", "ready": "True", "queue_length": 1,
                                                "agents_running": 2}},
    alerts={"PatInvalid{token=keda}": "firing", "PatrolRotationStuck": "pending"},
    rotations=[{"id": "r1", "token": "keda", "state": "verify", "outcome": None},
               {"id": "r0", "token": "keda", "state": "finished", "outcome": "succeeded"}],
    valid={"keda": {"kubernetes-secret/build-a/ns/s/k": 0.0, "kubernetes-secret/build-b/ns/s/k": 1.0},
           "daily-checks": {"keyvault/host/name": 1.0}},
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color() -> None:
    assert use_colour(Terminal(), {}) is True
    assert use_colour(io.StringIO(), {}) is False                      # piped
    assert use_colour(Terminal(), {"NO_COLOR": "1"}) is False
    assert use_colour(Terminal(), {"NO_COLOR": ""}) is True            # no-color.org: set and non-empty
    assert use_colour(Terminal(), {"TERM": "dumb"}) is False
    assert use_colour(io.StringIO(), {}, "always") is True
    assert use_colour(Terminal(), {}, "never") is False


def test_the_status_line_says_how_things_stand() -> None:
    assert status_line(FAILING) == (
        "keda INVALID at build-a | alerts: PatInvalid{token=keda} (1 pending) | rotating keda: verify | "
        "KEDA build-a NOT READY q3 a0, build-b Ready q1 a2")
    assert status_line(Snapshot(at=0.0)) == "exporter: no answer | no rotation running | KEDA ?"
    calm = Snapshot(at=0.0, valid={"keda": {"s": 1.0}, "other": {"k": 1.0}}, alerts={}, rotations=[])
    assert status_line(calm) == "tokens valid (2) | alerts: none firing | no rotation running | KEDA ?"


def test_piped_output_is_a_plain_timeline_with_the_status_only_when_it_changed() -> None:
    out = io.StringIO()
    narrator = Narrator(out, started_at=100.0, colour=False, live=False, status_every=10.0)
    narrator.status(FAILING, at=101.0)
    narrator.status(FAILING, at=120.0)                                  # unchanged: not printed again
    narrator.event(Event(105.5, "alert-firing", "alert PatInvalid{token=keda} firing", "warn"))
    calm = Snapshot(at=106.0, scaledjobs={}, alerts={}, rotations=[], valid={})
    narrator.status(calm, at=106.0)                                     # changed, but 5 s after the last
    narrator.status(calm, at=112.0)                                     # changed and 11 s after: printed
    narrator.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "[   +1.0s] keda INVALID at build-a | alerts: PatInvalid{token=keda} (1 pending) | rotating keda: verify"
        " | KEDA build-a NOT READY q3 a0, build-b Ready q1 a2",
        "[   +5.5s] alert PatInvalid{token=keda} firing",
        "[  +12.0s] exporter warming up | alerts: none firing | no rotation running | KEDA ?",
    ]
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_on_a_terminal_the_status_is_rewritten_in_place_under_the_events() -> None:
    out = Terminal()
    narrator = Narrator(out, started_at=100.0, colour=True, live=True, width=60)
    narrator.status(FAILING, at=101.0)
    narrator.event(Event(102.0, "keda-ready", "agent pool p recovered", "good"))
    narrator.status(FAILING, at=103.0)
    narrator.close()
    text = out.getvalue()
    first, event, second = text.split("\r\x1b[K")[1:4]
    assert first.startswith("\x1b[2m[   +1.0s] keda INVALID") and not first.endswith("\n")
    assert len(first.removeprefix("\x1b[2m").removesuffix("\x1b[0m")) == 59   # cut to the width, no wrap
    assert event == "\x1b[2m[   +2.0s]\x1b[0m \x1b[32magent pool p recovered\x1b[0m\n"
    assert second.startswith("\x1b[2m[   +3.0s]")
    assert text.endswith("\r\x1b[K")                                    # close() leaves a clean line


def test_plain_lines_clear_the_status_first() -> None:
    out = Terminal()
    narrator = Narrator(out, started_at=0.0, colour=False, live=True)
    narrator.status(FAILING, at=1.0)
    narrator.line("summary", "title")
    assert out.getvalue().endswith("\r\x1b[Ksummary\n")
