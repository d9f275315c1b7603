"""The whole loop, many times, judged by what the simulated world suffered.

``make soak`` (``bench/soak.py``), its short version in ``make test`` and ``bench/mttr.py`` start
the loop exactly as ``make demo`` does — the sandbox, patrol's exporter and worker as separate
processes, real Prometheus and Alertmanager — and then let it run:

- :func:`soak` waits for N planned rotations of the KEDA token (the ``soak`` scenario gives PATs
  a lifetime of about a minute, renewed at half-life, with builds running across rotations and an
  External-Secrets-style reader on the Key Vault token). patrol is judged by the sandbox's
  ``harm`` counters — builds interrupted, agents that could not unregister, KEDA polls that failed
  after KEDA's own refresh-and-retry, Key Vault readers and pipeline runs left holding a dead
  value — by the PATs still active once every drain ended, and by the resident memory of the
  exporter and the worker, sampled after every rotation. Nothing patrol says about itself counts.
- :func:`mttr` revokes the KEDA PAT out of band, again and again, and measures the time from the
  revocation to the worker's rotation finishing with recovery confirmed, and to the alerts
  resolving.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from patrol.demo import Demo, _post_json
from patrol.stack import get_json

HARM_KEYS = ("builds_interrupted", "agent_unregister_failures", "keda_failed_polls",
             "secret_reader_failures", "pipeline_runs_failed")
ROTATE_ALERTS = frozenset({"PatInvalid", "KedaScalerAuthFailing", "PatRenewalDue", "PatExpired"})
RSS_TOLERANCE = 0.10
# Samples at each end whose medians are compared. One sample is noise: the exporter and the worker
# hand freed heap back to the kernel (core/arenas.py) at most every 10 s, so the RSS read at a
# rotation's end swings by ±3 MB with where that falls relative to the last refresh's peak.
RSS_WINDOW = 5


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass(frozen=True)
class RssSample:
    rotation: int
    exporter_mb: float
    worker_mb: float


@dataclass
class SoakReport:
    target: int
    seconds: float = 0.0
    succeeded: dict[str, int] = field(default_factory=dict)      # token -> rotations succeeded
    failed: list[str] = field(default_factory=list)              # "token rotation: error"
    harm: dict[str, int] = field(default_factory=dict)
    leftover: list[str] = field(default_factory=list)            # patrol PATs active after their drain
    rss: list[RssSample] = field(default_factory=list)
    workdir: str = ""

    def rss_ends(self) -> tuple[RssSample, RssSample]:
        """The medians of the first and the last :data:`RSS_WINDOW` samples (fewer in a short run,
        never overlapping), each labelled with the rotation of its window's middle sample."""
        window = max(1, min(RSS_WINDOW, len(self.rss) // 2))
        head, tail = self.rss[:window], self.rss[-window:]

        def middle(part: list[RssSample]) -> RssSample:
            return RssSample(part[len(part) // 2].rotation, statistics.median(s.exporter_mb for s in part),
                             statistics.median(s.worker_mb for s in part))
        return middle(head), middle(tail)

    def rss_growth(self) -> dict[str, float]:
        """End of the run against just after the first rotations, as a fraction (0.05 = +5 %),
        from the medians of :meth:`rss_ends`."""
        if len(self.rss) < 2:
            return {}
        first, last = self.rss_ends()
        return {"exporter": last.exporter_mb / first.exporter_mb - 1,
                "worker": last.worker_mb / first.worker_mb - 1}

    def problems(self, *, rss: bool = True) -> list[str]:
        """Every target the run missed; empty when it met them all. ``rss=False`` leaves out the
        memory target, which says nothing over a handful of rotations (imports and caches still
        warming up)."""
        found: list[str] = []
        if self.succeeded.get("keda", 0) < self.target:
            found.append(f"only {self.succeeded.get('keda', 0)} of {self.target} KEDA rotations succeeded")
        found += [f"rotation failed: {f}" for f in self.failed]
        missing = [k for k in HARM_KEYS if k not in self.harm]
        if missing:
            found.append(f"the sandbox reports no harm counter {', '.join(missing)}")
        found += [f"harm: {k} = {v}" for k, v in sorted(self.harm.items()) if v]
        found += [f"left active: {p}" for p in self.leftover]
        found += [f"RSS of the {name} grew {growth:+.1%} (limit {RSS_TOLERANCE:.0%})"
                  for name, growth in self.rss_growth().items() if rss and growth > RSS_TOLERANCE]
        return found

    def lines(self) -> list[str]:
        out = [f"soak: {sum(self.succeeded.values())} rotations in {self.seconds:.0f} s "
               f"({', '.join(f'{t}={n}' for t, n in sorted(self.succeeded.items()))}), "
               f"{len(self.failed)} failed"]
        out.append("harm: " + ", ".join(f"{k}={self.harm.get(k, 'missing')}" for k in HARM_KEYS))
        out.append(f"patrol PATs left active after their drain: {len(self.leftover)}")
        if self.rss:
            first, last = self.rss[0], self.rss[-1]
            out.append(f"RSS after rotation {first.rotation}: exporter {first.exporter_mb:.1f} MB, worker "
                       f"{first.worker_mb:.1f} MB; after rotation {last.rotation}: exporter "
                       f"{last.exporter_mb:.1f} MB, worker {last.worker_mb:.1f} MB")
        if len(self.rss) >= 2:
            head, tail = self.rss_ends()
            growth = self.rss_growth()
            out.append(f"RSS medians of the first and last {max(1, min(RSS_WINDOW, len(self.rss) // 2))} "
                       f"samples: exporter {head.exporter_mb:.1f} -> {tail.exporter_mb:.1f} MB "
                       f"({growth['exporter']:+.1%}), worker {head.worker_mb:.1f} -> {tail.worker_mb:.1f} MB "
                       f"({growth['worker']:+.1%})")
        out.append(f"logs: {self.workdir}")
        return out


def _rotations(demo: Demo) -> dict[str, Any]:
    doc: dict[str, Any] = get_json(f"{demo.worker_url}/rotations?limit=500", timeout=10)
    return doc


def _wait(what: str, check: Callable[[], bool], timeout: float, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def _leftover(demo: Demo, rotations: list[dict[str, Any]]) -> list[str]:
    """Active PATs patrol created that are not the current one of their token."""
    current: dict[str, str] = {}
    for rotation in sorted(rotations, key=lambda r: r["created_at"]):
        if rotation["outcome"] == "succeeded" and rotation["new_authorization_id"]:
            current[rotation["token"]] = rotation["new_authorization_id"]
    pats = get_json(f"{demo.ready['control_url']}/ado/pats", timeout=10)
    items = pats.get("pats", pats) if isinstance(pats, dict) else pats
    left = []
    for pat in items:
        name = str(pat.get("displayName", ""))
        if pat.get("status") != "active" or not name.startswith("patrol-"):
            continue
        token = name.removeprefix("patrol-").rsplit("-", 1)[0]
        if current.get(token) != pat.get("authorizationId"):
            left.append(f"{name} ({pat.get('authorizationId')})")
    return left


def soak(rotations: int, *, workdir: Path, out: TextIO, scenario: str = "soak",
         timeout: float | None = None, progress: Callable[[str], None] | None = None) -> SoakReport:
    """Run the loop until ``rotations`` planned KEDA rotations succeeded (or ``timeout``)."""
    demo = Demo(workdir=workdir, out=out, scenario=scenario, alert_for="1s", fast="rotate")
    report = SoakReport(target=rotations, workdir=str(workdir))
    say = progress or (lambda _line: None)
    started = time.monotonic()
    limit = timeout if timeout is not None else 120.0 * rotations + 300
    try:
        demo.start()  # inside the try: a start that times out must not leave processes behind
        exporter, worker = demo.named["exporter"], demo.named["worker"]
        seen = 0
        while True:
            doc = _rotations(demo)
            done = [r for r in doc["rotations"] if r["outcome"] is not None]
            keda_ok = sum(1 for r in done if r["token"] == "keda" and r["outcome"] == "succeeded")
            if keda_ok > seen:
                seen = keda_ok
                report.rss.append(RssSample(seen, rss_mb(exporter.pid), rss_mb(worker.pid)))
                say(f"[{time.monotonic() - started:6.0f}s] KEDA rotations: {seen}/{rotations}; RSS exporter "
                    f"{report.rss[-1].exporter_mb:.1f} MB, worker {report.rss[-1].worker_mb:.1f} MB")
            if seen >= rotations or time.monotonic() - started > limit:
                break
            for proc, name in ((exporter, "exporter"), (worker, "worker")):
                if proc.poll() is not None:
                    raise RuntimeError(f"the {name} exited with {proc.returncode}; see {workdir}/{name}.log")
            time.sleep(1.0)
        # Let the rotations in flight (a drain, most likely) finish before judging what is left.
        _wait("rotations in flight to finish", lambda: not _rotations(demo)["running"], timeout=300)
        doc = _rotations(demo)
        for r in doc["rotations"]:
            if r["outcome"] == "succeeded":
                report.succeeded[r["token"]] = report.succeeded.get(r["token"], 0) + 1
            elif r["outcome"] == "failed":
                report.failed.append(f"{r['token']} {r['id']}: {r['error']}")
        state = get_json(f"{demo.ready['control_url']}/state", timeout=10)
        report.harm = {str(k): int(v) for k, v in (state.get("harm") or {}).items()}
        report.leftover = _leftover(demo, doc["rotations"])
    finally:
        report.seconds = time.monotonic() - started
        demo.stop()
    return report


@dataclass
class Recovery:
    revoked_at: float
    recovered_at: float | None = None          # the rotation finished, recovery confirmed
    resolved_at: float | None = None           # no rotate alert firing any more
    rotation: str = ""

    @property
    def seconds(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.revoked_at


@dataclass
class MttrReport:
    recoveries: list[Recovery] = field(default_factory=list)
    workdir: str = ""

    def median(self) -> float | None:
        values = [r.seconds for r in self.recoveries if r.seconds is not None]
        return statistics.median(values) if values else None

    def median_resolved(self) -> float | None:
        values = [r.resolved_at - r.revoked_at for r in self.recoveries if r.resolved_at is not None]
        return statistics.median(values) if values else None

    def lines(self) -> list[str]:
        out = []
        for i, r in enumerate(self.recoveries, 1):
            rec = f"{r.seconds:.1f} s" if r.seconds is not None else "not recovered"
            res = f"{r.resolved_at - r.revoked_at:.1f} s" if r.resolved_at is not None else "never"
            out.append(f"incident {i}: recovered in {rec} (rotation {r.rotation or '-'}), alerts resolved after {res}")
        median, resolved = self.median(), self.median_resolved()
        out.append(f"time to recovery: median {median:.1f} s over {len(self.recoveries)} incidents" if median
                   is not None else "time to recovery: no incident recovered")
        if resolved is not None:
            out.append(f"alerts resolved: median {resolved:.1f} s after the revocation")
        out.append(f"logs: {self.workdir}")
        return out


def mttr(incidents: int, *, workdir: Path, out: TextIO, cooldown: float = 35.0,
         progress: Callable[[str], None] | None = None) -> MttrReport:
    """Revoke the KEDA PAT out of band ``incidents`` times; time each recovery."""
    demo = Demo(workdir=workdir, out=out, scenario="default", alert_for="1s", fast="rotate")
    report = MttrReport(workdir=str(workdir))
    say = progress or (lambda _line: None)
    try:
        demo.start()  # inside the try: a start that times out must not leave processes behind
        assert demo.stack is not None, "mttr needs Prometheus and Alertmanager (make test installs them)"
        stack = demo.stack
        _wait("the rules to evaluate", lambda: bool(stack.query("patrol:pat_days_to_expiry")), timeout=60)
        for i in range(incidents):
            sink = {"kind": "kubernetes-secret", "cluster": "build-a", "namespace": "azure-devops",
                    "secret": "azure-devops-token", "key": "token"}
            recovery = Recovery(revoked_at=time.time())
            _post_json(f"{demo.ready['control_url']}/ado/sinks/revoke", sink)

            def recovered(r: Recovery = recovery) -> bool:
                for rotation in _rotations(demo)["rotations"]:
                    if rotation["token"] == "keda" and rotation["created_at"] >= r.revoked_at \
                            and rotation["outcome"] == "succeeded":
                        r.recovered_at, r.rotation = float(rotation["finished_at"]), str(rotation["id"])
                        return True
                return False

            def resolved(r: Recovery = recovery) -> bool:
                firing = {a["labels"]["alertname"] for a in stack.firing_alerts()}
                if firing & ROTATE_ALERTS:
                    return False
                r.resolved_at = time.time()
                return True

            try:
                _wait(f"recovery from incident {i + 1}", recovered, timeout=180, every=0.2)
                _wait(f"alerts of incident {i + 1} to resolve", resolved, timeout=180, every=0.2)
            except TimeoutError as exc:
                say(f"incident {i + 1}: {exc}")
            report.recoveries.append(recovery)
            say(report.lines()[i])
            if i + 1 < incidents:
                time.sleep(max(0.0, cooldown - (time.time() - (recovery.recovered_at or time.time()))))
    finally:
        demo.stop()
    return report
