"""``patrol worker``, ``patrol rotate`` and ``patrol history``: the worker's command line.

``patrol/cli.py`` (the composition root) owns the top-level parser, reads the environment
once and configures logging; it calls :func:`add_parsers` to mount these subcommands, which
receive that environment through ``args.env`` (never shown in ``--help``). Settings precedence
is flag > environment > config file, as everywhere in patrol.

``patrol rotate`` is the runbook in one command: the same saga the worker runs, step by step
on the terminal, with ``--dry-run`` to see the plan first. When a worker holds the Lease, it
asks that worker instead (``POST /rotations`` at ``--worker-url`` / ``PATROL_WORKER_URL`` /
``worker.url``, with the webhook's bearer) and follows the rotation there.

``patrol.cli`` imports this module to build its parser, whatever the subcommand, so the
journal (sqlite3), planner and saga are imported inside the commands that use them: the
exporter process does not load them (~1.7 MB RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from core import config
from core.arenas import WORKER_ARENAS, cap_arenas
from core.config import load_config
from core.errors import ConfigError, ListenError
from core.secret import Secret

if TYPE_CHECKING:
    from remediation.adopt import AdoptionPlan
    from remediation.journal import RotationRecord
    from remediation.saga import RotationPreview, StepEvent

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
WEBHOOK_TOKEN_ENV = "PATROL_WEBHOOK_TOKEN"
STATE_DIR_ENV = "PATROL_STATE_DIR"
WORKER_URL_ENV = "PATROL_WORKER_URL"
FOLLOW_EVERY = 2.0
FOLLOW_TOLERANCE = 5


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Mapping[str, str],
                common: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Mount ``worker``, ``rotate`` and ``history`` on ``sub``.

    ``common`` adds the shared flags (``--config``, logging); without it ``--config`` is added
    here (default env ``PATROL_CONFIG``).
    """
    fmt = argparse.RawDescriptionHelpFormatter

    def finish(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--state-dir", default=env.get(STATE_DIR_ENV), metavar="DIR",
                            help=f"journal and locks (env {STATE_DIR_ENV}; default: worker.state_dir)")
        if common is not None:
            common(parser)
        else:
            parser.add_argument("--config", metavar="FILE", default=env.get("PATROL_CONFIG"),
                                help="patrol configuration file (env PATROL_CONFIG)")
        parser.set_defaults(env=env)

    worker = sub.add_parser(
        "worker", help="receive Alertmanager webhooks and rotate PATs", formatter_class=fmt,
        description="Receive Alertmanager webhooks on POST /webhook/alertmanager and rotate PATs.",
        epilog="The webhook bearer token comes from env PATROL_WEBHOOK_TOKEN, else from the file\n"
               "named by worker.webhook_token_file.\n\nexamples:\n"
               "  PATROL_WEBHOOK_TOKEN=... patrol worker --config patrol.yaml --listen 0.0.0.0:9878")
    worker.add_argument("--listen", metavar="HOST:PORT", default=None,
                        help="address to serve on (default: worker.listen)")
    worker.add_argument("--insecure-no-auth", action="store_true",
                        help="accept webhooks without a bearer token (local tests only)")
    worker.set_defaults(handler=run_worker)
    finish(worker)

    rotate = sub.add_parser(
        "rotate", help="rotate one token now (the runbook in one command)", formatter_class=fmt,
        description="Rotate TOKEN now with the same saga the worker runs, showing each step.",
        epilog="examples:\n  patrol rotate keda --config patrol.yaml --dry-run\n"
               "  patrol rotate keda --config patrol.yaml --json | jq -r .outcome\n"
               "  patrol rotate keda --config patrol.yaml --reason 'leaked in a log' --compromised\n\n"
               "--compromised revokes the previous PAT as soon as the new one is delivered and verified,\n"
               "without waiting for builds that still hold it; if TOKEN's rotation is running (say,\n"
               "draining), it is marked compromised instead and revokes at once.\n\n"
               "When a worker holds the Lease (worker.lease), the rotation is asked of it: POST /rotations\n"
               f"at --worker-url (env {WORKER_URL_ENV}, else worker.url), with the webhook bearer token\n"
               f"({WEBHOOK_TOKEN_ENV} or worker.webhook_token_file); from outside the cluster, e.g.\n"
               "  kubectl -n patrol port-forward pod/<lease holder> 9878 &\n"
               "  patrol rotate keda --config patrol.yaml --worker-url http://127.0.0.1:9878")
    rotate.add_argument("token", metavar="TOKEN", help="a token name from the configuration")
    rotate.add_argument("--dry-run", action="store_true",
                        help="print the plan (scopes, lifetime, sinks, consumers, what would be revoked)")
    rotate.add_argument("--reason", default=None, help="why (recorded in the journal)")
    rotate.add_argument("--json", action="store_true",
                        help="print only the final result as one JSON document (the journal record; "
                             "with --dry-run, the plan)")
    rotate.add_argument("--compromised", action="store_true",
                        help="the current PAT leaked: skip the drain, revoke as soon as delivery is verified")
    rotate.add_argument("--worker-url", metavar="URL", default=env.get(WORKER_URL_ENV),
                        help=f"the worker to ask when one holds the Lease (env {WORKER_URL_ENV}; "
                             "default: worker.url)")
    rotate.add_argument("--no-wait", action="store_true",
                        help="when a worker rotates: return once it has started (follow with patrol history)")
    rotate.set_defaults(handler=run_rotate)
    finish(rotate)

    history = sub.add_parser(
        "history", help="show past rotations from the journal", formatter_class=fmt,
        description="Show past rotations (newest first) from the journal in the state dir.",
        epilog="examples:\n  patrol history --config patrol.yaml\n  patrol history keda --steps")
    history.add_argument("token", metavar="TOKEN", nargs="?", default=None, help="only this token")
    history.add_argument("--limit", type=int, default=20, help="how many rotations (default: 20)")
    history.add_argument("--steps", action="store_true", help="show every step of each rotation")
    history.add_argument("--json", action="store_true", help="print JSON")
    history.set_defaults(handler=run_history)
    finish(history)


# -- shared ---------------------------------------------------------------------------------------

def _config(args: argparse.Namespace) -> config.Config:
    if not args.config:
        raise ConfigError("(none)", "", "no configuration file given",
                          "pass --config FILE or set PATROL_CONFIG")
    return load_config(args.config)


def _state_dir(args: argparse.Namespace, cfg: config.Config | None) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    if cfg is not None:
        return Path(cfg.worker.state_dir)
    raise ConfigError("(none)", "worker.state_dir", "no state dir",
                      f"pass --state-dir, set {STATE_DIR_ENV}, or --config FILE")


def _env(args: argparse.Namespace) -> Mapping[str, str]:
    env: Mapping[str, str] | None = getattr(args, "env", None)
    return os.environ if env is None else env


def webhook_token(cfg: config.Config, env: Mapping[str, str]) -> Secret | None:
    """env PATROL_WEBHOOK_TOKEN, else the contents of worker.webhook_token_file, else None."""
    value = env.get(WEBHOOK_TOKEN_ENV, "").strip()
    if value:
        return Secret(value)
    path = cfg.worker.webhook_token_file
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(cfg.source, "worker.webhook_token_file", f"cannot read {path}: {exc.strerror}",
                          "mount the webhook token there or set PATROL_WEBHOOK_TOKEN") from exc
    if not text:
        raise ConfigError(cfg.source, "worker.webhook_token_file", f"{path} is empty",
                          "put the bearer token Alertmanager sends in it")
    return Secret(text)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError("(flags)", "--listen", f"{text!r} is not HOST:PORT", "e.g. 0.0.0.0:9878")
    return host.strip("[]") or "0.0.0.0", int(port)


def lease_identity(env: Mapping[str, str]) -> str:
    return env.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


# -- patrol worker --------------------------------------------------------------------------------

def run_worker(args: argparse.Namespace) -> int:
    from core.lease import LeaseLock
    from remediation.service import WorkerService
    from remediation.world import CoreWorld

    env = _env(args)
    # before any thread starts: a thread keeps the malloc arena it was first given (core/arenas.py)
    cap_arenas(env, WORKER_ARENAS)
    cfg = _config(args)
    token = webhook_token(cfg, env)
    if token is None and not args.insecure_no_auth:
        raise ConfigError(cfg.source, "worker.webhook_token_file", "no webhook bearer token configured",
                          f"set {WEBHOOK_TOKEN_ENV} or worker.webhook_token_file "
                          "(or pass --insecure-no-auth for a local test)")
    host, port = parse_listen(args.listen or cfg.worker.listen)
    world = CoreWorld(cfg, env=env)
    try:
        lease = None
        if cfg.worker.lease is not None:
            settings = cfg.worker.lease
            lease = LeaseLock(world.cluster(settings.cluster), settings.namespace, settings.name,
                              lease_identity(env), settings.duration)
        # An unusable state dir is a ConfigError naming it (exit 2); a corrupt journal is moved
        # aside and a fresh one started (remediation.journal).
        service = WorkerService(cfg, world, state_dir=_state_dir(args, cfg), webhook_token=token,
                                insecure_no_auth=args.insecure_no_auth, lease=lease)
    except BaseException:
        world.close()
        raise

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # the lease and the reconciler start once the port is bound: a worker that cannot
        # listen must not take the lease from one that can
        await service.serve(host, port, stop=stop, started=lambda _port: service.start())

    try:
        asyncio.run(main())
    except OSError as exc:
        error = ListenError.from_os_error(exc, host, port, "--listen")
        if error is None:
            raise
        raise error from None
    finally:
        service.stop()
        world.close()
    return EXIT_OK


# -- patrol rotate --------------------------------------------------------------------------------

def _print_step(out: TextIO) -> Callable[[StepEvent], None]:
    def show(event: StepEvent) -> None:
        if event.status == "running":
            # the drain reports what it waits for on every round
            print(f"  {event.step:<8} ... {event.detail}".rstrip(), file=out, flush=True)
        else:
            print(f"  {event.step:<8} {event.status:<6} {event.seconds:6.2f}s  {event.detail}", file=out,
                  flush=True)
    return show


def print_preview(preview: RotationPreview, out: TextIO) -> None:
    token = preview.token
    print(f"plan for token {token.name} (organization {token.organization}) — dry run, nothing changes",
          file=out)
    print(f"  create:  {preview.display_name}", file=out)
    print(f"           scopes {' '.join(token.scopes)}, allOrgs false, lifetime "
          f"{config.format_duration(token.lifetime)} (validTo ~{preview.valid_to:%Y-%m-%dT%H:%MZ}; "
          "an org policy may clamp it)", file=out)
    print("  deliver to:", file=out)
    for sink in preview.sinks:
        if sink.refusal is not None:
            print(f"    {sink.sink_id}: REFUSED: {sink.refusal}", file=out)
            continue
        assert sink.state is not None
        expires = f", expires {sink.state.expires_at:%Y-%m-%d}" if sink.state.expires_at else ""
        holds = sink.state.authorization_id or ("unknown PAT" if sink.state.exists else "nothing yet")
        print(f"    {sink.sink_id}: holds {holds}{expires}", file=out)
    print("  switch (refresh: no spec change; bump: pod-template annotation), then verify:", file=out)
    for consumer in preview.consumers:
        c = consumer.consumer
        state = (f"problem: {consumer.problem}" if consumer.problem else
                 f"generation {consumer.generation}, Ready {consumer.ready}")
        if consumer.rollout_strategy is not None and not consumer.problem:
            state += f", rollout strategy {consumer.rollout_strategy}"
        if consumer.switch is not None and not consumer.problem:
            state += f", switch {consumer.switch}"
        print(f"    {c.k8s_kind} {c.cluster}/{c.namespace}/{c.name} (pool {c.pool}): {state}", file=out)
    if not preview.consumers:
        print("    (no consumers: verification probes the new token only)", file=out)
    drain = (f"at most {config.format_duration(token.drain_max)}" if token.drain_max is not None
             else "bounded by the consumers' activeDeadlineSeconds, sink refresh intervals, pipeline timeout")
    print(f"  drain: keep the previous PAT valid while something started before delivery holds it ({drain})",
          file=out)
    print("  revoke after the drain, then confirm: " + (", ".join(preview.would_revoke) or
          "nothing known (no authorizationId in the sinks, no earlier patrol PAT)"), file=out)
    for warning in preview.warnings:
        print(f"  WARNING: {warning}", file=out)
    for problem in preview.problems:
        print(f"  PROBLEM: {problem}", file=out)


def preview_json(preview: RotationPreview) -> dict[str, Any]:
    """``rotate --dry-run --json``: the plan as data (no token values: ids, names, states)."""
    return {
        "token": preview.token.name, "dry_run": True, "display_name": preview.display_name,
        "scopes": list(preview.token.scopes), "valid_to": preview.valid_to.isoformat(),
        "sinks": [{"id": s.sink_id, "refusal": s.refusal,
                   "authorization_id": s.state.authorization_id if s.state else None}
                  for s in preview.sinks],
        "consumers": [{"kind": c.consumer.k8s_kind, "cluster": c.consumer.cluster,
                       "namespace": c.consumer.namespace, "name": c.consumer.name, "pool": c.consumer.pool,
                       "generation": c.generation, "ready": c.ready, "problem": c.problem}
                      for c in preview.consumers],
        "would_revoke": list(preview.would_revoke), "warnings": list(preview.warnings),
        "problems": list(preview.problems),
    }


def _result_json(token: str, outcome: str, record: RotationRecord | None, message: str) -> str:
    """``rotate --json``'s final result: the outcome, a sentence, and the journal record if any."""
    doc: dict[str, Any] = {"token": token, "outcome": outcome, "message": message,
                           "rotation": record.to_json() if record is not None else None}
    return json.dumps(doc, indent=2)


def run_rotate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from core.lease import LeaseLock
    from remediation.journal import Journal
    from remediation.leadership import Leadership
    from remediation.planner import Planner, TokenLocks
    from remediation.saga import RotationSaga
    from remediation.world import CoreWorld

    out = out or sys.stdout
    as_json = bool(getattr(args, "json", False))
    env = _env(args)
    cfg = _config(args)
    if args.token not in {t.name for t in cfg.tokens}:
        known = ", ".join(t.name for t in cfg.tokens) or "none"
        print(f"patrol: no token named {args.token!r} in {cfg.source} (configured: {known})", file=sys.stderr)
        return EXIT_USAGE
    with CoreWorld(cfg, env=env) as world:
        state_dir = _state_dir(args, cfg)
        journal = Journal.in_state_dir(state_dir)
        lease = None
        if cfg.worker.lease is not None and not args.dry_run:
            settings = cfg.worker.lease
            lease = LeaseLock(world.cluster(settings.cluster), settings.namespace, settings.name,
                              lease_identity(env), settings.duration)
        leadership = Leadership(lease)
        try:
            saga = RotationSaga(cfg, world, journal, on_step=None if as_json else _print_step(out),
                                may_continue=leadership.is_leader)
            if args.dry_run:
                preview = saga.preview(args.token)
                if as_json:
                    print(json.dumps(preview_json(preview), indent=2), file=out)
                else:
                    print_preview(preview, out)
                return EXIT_FAILURE if preview.problems else EXIT_OK
            reason = args.reason or f"patrol rotate by {getpass.getuser()}"
            if lease is not None:
                if not leadership.tick():
                    holder = lease.holder()
                    return rotate_through_worker(args, cfg, env, reason, holder=holder, out=out,
                                                 where=f"{lease.namespace}/{lease.name}")
                leadership.start()
            planner = Planner([t.name for t in cfg.tokens], journal, cooldown=cfg.worker.cooldown,
                              locks=TokenLocks(state_dir / "locks"))
            if args.compromised:
                reason += " (compromised)"
            decision, request = planner.request(args.token, trigger="manual", reason=reason, force=True,
                                                compromised=args.compromised)
            if request is None and decision.reason == "marked-compromised":
                print(f"rotation {decision.rotation_id} of {args.token} is running: marked compromised, so "
                      "it revokes the previous PAT as soon as delivery is verified (a drain ends at its "
                      "next round); follow it with: patrol history --steps", file=out)
                return EXIT_OK
            if request is None:
                if as_json:
                    print(_result_json(args.token, "not-started", None, decision.reason), file=out)
                else:
                    print(f"patrol: {args.token}: not started ({decision.reason})", file=sys.stderr)
                return EXIT_FAILURE
            if not as_json:
                print(f"rotating {args.token} (rotation {request.rotation_id}): {reason}", file=out, flush=True)
            try:
                outcome = saga.run(request)
            finally:
                planner.locks.release(args.token)
            record = journal.get(request.rotation_id)
            if outcome == "succeeded":
                result, code = f"rotation {record.id} succeeded: now {record.new_authorization_id}", EXIT_OK
            elif outcome is None:
                result, code = f"rotation {record.id} paused (lease lost); the worker resumes it", EXIT_FAILURE
            else:
                result, code = f"rotation {record.id} FAILED: {record.error}", EXIT_FAILURE
            if as_json:
                print(_result_json(args.token, outcome or "paused", record, result), file=out)
            else:
                print(result, file=out)
            return code
        finally:
            leadership.stop()
            journal.close()


def _refuse(args: argparse.Namespace, message: str, out: TextIO) -> int:
    if getattr(args, "json", False):
        print(_result_json(args.token, "not-started", None, message), file=out)
    else:
        print(f"patrol: {message}", file=sys.stderr)
    return EXIT_FAILURE


def rotate_through_worker(args: argparse.Namespace, cfg: config.Config, env: Mapping[str, str], reason: str,
                          *, holder: str | None, out: TextIO, where: str,
                          sleep: Callable[[float], None] | None = None) -> int:
    """Another process (a worker) holds the Lease: ask it with ``POST /rotations``, then follow
    the rotation through ``GET /rotations/{id}`` unless ``--no-wait``."""
    import time

    from core.errors import UnavailableError
    from remediation.remote import WorkerClient

    sleep = sleep or time.sleep
    who = holder or "(unknown)"
    url = getattr(args, "worker_url", None) or cfg.worker.url
    if not url:
        return _refuse(args, (
            f"the worker {who} holds the lease {where}, and no worker URL is set to ask it: set worker.url "
            f"in {cfg.source}, {WORKER_URL_ENV} or --worker-url (from outside the cluster: kubectl -n "
            f"<namespace> port-forward pod/{holder or '<lease holder>'} 9878, then --worker-url "
            "http://127.0.0.1:9878)"), out)
    bearer = webhook_token(cfg, env)
    if bearer is None:
        return _refuse(args, (
            f"the worker {who} holds the lease {where}; to ask it at {url}, patrol needs the webhook bearer "
            f"token: set {WEBHOOK_TOKEN_ENV} or worker.webhook_token_file"), out)
    try:
        client = WorkerClient(url, bearer, sleep=sleep)
    except ValueError:
        raise ConfigError("(flags)", "--worker-url", f"{url!r} is not an http(s) URL",
                          "e.g. --worker-url http://127.0.0.1:9878 (or worker.url, PATROL_WORKER_URL)") from None
    as_json = bool(getattr(args, "json", False))
    try:
        answer = client.start(args.token, reason=reason, compromised=bool(args.compromised), force=True)
    except UnavailableError as exc:
        return _refuse(args, str(exc), out)
    body = answer.body
    if answer.status == 202 and body.get("reason") == "marked-compromised":
        print(f"rotation {body.get('rotation_id')} of {args.token} is running on the worker: marked compromised, "
              "so it revokes the previous PAT as soon as delivery is verified; follow it with: patrol history "
              "--steps", file=out)
        return EXIT_OK
    if answer.status != 202:
        return _refuse(args, _worker_refusal(answer, url, who), out)
    rotation_id = str(body.get("rotation_id"))
    if not as_json:
        print(f"rotating {args.token} on the worker {who} at {url} (rotation {rotation_id}): {reason}", file=out,
              flush=True)
    if getattr(args, "no_wait", False):
        if as_json:
            print(json.dumps({"token": args.token, "outcome": "started", "rotation_id": rotation_id,
                              "message": f"rotation {rotation_id} started on the worker at {url}",
                              "rotation": None}, indent=2), file=out)
        return EXIT_OK
    return _follow(client, rotation_id, args.token, out, as_json=as_json, sleep=sleep)


def _worker_refusal(answer: Any, url: str, who: str) -> str:
    body: dict[str, Any] = answer.body
    if answer.status == 401:
        return (f"the worker at {url} refused the bearer token: {WEBHOOK_TOKEN_ENV} (or "
                "worker.webhook_token_file) must hold the token the worker's webhook expects")
    if answer.status == 409:
        return (f"{answer.reason} (rotation {body.get('rotation_id') or 'unknown'}); follow it with: "
                "patrol history --steps")
    if answer.status == 503:
        leader = body.get("leader") or who
        return (f"the worker at {url} cannot take the rotation ({answer.reason}); the Lease holder is "
                f"{leader}: reach it directly (kubectl -n <namespace> port-forward pod/{leader} 9878, then "
                "--worker-url http://127.0.0.1:9878)")
    return f"the worker at {url} refused: {answer.reason} (HTTP {answer.status})"


def _follow(client: Any, rotation_id: str, token: str, out: TextIO, *, as_json: bool,
            sleep: Callable[[float], None]) -> int:
    """Poll the worker until the rotation finishes, printing each step as it completes."""
    from core.errors import UnavailableError

    shown: set[tuple[str, str]] = set()
    record: dict[str, Any] = {}
    unreachable = 0
    while True:
        try:
            answer = client.rotation(rotation_id)
            unreachable = 0
        except UnavailableError as exc:
            unreachable += 1                  # e.g. a pod restarting during a roll: a few are fine
            if unreachable < FOLLOW_TOLERANCE:
                sleep(FOLLOW_EVERY)
                continue
            print(f"patrol: {exc}; the worker continues rotation {rotation_id}: follow it with patrol history",
                  file=sys.stderr)
            return EXIT_FAILURE
        if answer.status != 200:
            # another replica answered (its own journal), or the worker restarted: not ours to judge
            print(f"patrol: the worker at {client.url} does not know rotation {rotation_id} ({answer.reason});"
                  " the Lease holder runs it: follow it with patrol history", file=sys.stderr)
            return EXIT_FAILURE
        record = answer.body
        for step in record.get("steps") or []:
            key = (str(step.get("name")), str(step.get("status")))
            if key not in shown and key[1] not in ("pending", "running"):
                shown.add(key)
                if not as_json:
                    print(f"  {key[0]:<8} {key[1]:<6} {step.get('detail') or ''}".rstrip(), file=out, flush=True)
        if record.get("outcome"):
            break
        sleep(FOLLOW_EVERY)
    outcome = str(record["outcome"])
    if outcome == "succeeded":
        result, code = f"rotation {rotation_id} succeeded: now {record.get('new_authorization_id')}", EXIT_OK
    else:
        result, code = f"rotation {rotation_id} {outcome.upper()}: {record.get('error')}", EXIT_FAILURE
    if as_json:
        print(json.dumps({"token": token, "outcome": outcome, "message": result, "rotation": record}, indent=2),
              file=out)
    else:
        print(result, file=out)
    return code


# -- patrol history -------------------------------------------------------------------------------

def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def format_history(records: list[RotationRecord], *, steps: bool) -> str:
    if not records:
        return "no rotations recorded"
    lines = [f"{'ROTATION':<12}  {'TOKEN':<16} {'TRIGGER':<8} {'RESULT':<10} {'STARTED (UTC)':<19}  "
             f"{'TOOK':>7}  DETAIL"]
    for r in records:
        result = r.outcome or f"({r.state})"
        took = f"{(r.finished_at or r.updated_at) - r.received_at:6.1f}s"
        detail = r.error if r.outcome == "failed" else (
            f"{r.old_authorization_id or '?'} -> {r.new_authorization_id or '?'}" if r.new_authorization_id
            else r.reason)
        if r.state == "drain" and r.outcome is None:
            detail += f"; draining: {r.step('drain').detail or 'starting'}"
        if any(t.step == "plan" and t.target == "compromised" for t in r.targets):
            detail = f"COMPROMISED; {detail}"
        lines.append(f"{r.id:<12}  {r.token:<16} {r.trigger:<8} {result:<10} {_when(r.created_at):<19}  "
                     f"{took:>7}  {detail}")
        if steps:
            for s in r.steps:
                lines.append(f"    {s.name:<8} {s.status:<8} {s.detail}")
    return "\n".join(lines)


def run_history(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from remediation.journal import JOURNAL_FILE, Journal

    out = out or sys.stdout
    cfg = _config(args) if args.config else None
    state_dir = _state_dir(args, cfg)
    if cfg is not None and args.token is not None and args.token not in {t.name for t in cfg.tokens}:
        known = ", ".join(t.name for t in cfg.tokens) or "none"
        print(f"patrol: no token named {args.token!r} in {cfg.source} (configured: {known})", file=sys.stderr)
        return EXIT_USAGE
    if not (state_dir / JOURNAL_FILE).exists():
        if cfg is None and args.token is not None:
            print(f"patrol: no rotations of {args.token!r} recorded in {state_dir} (none at all); pass --config "
                  "to check the name against the configured tokens", file=sys.stderr)
            return EXIT_USAGE
        print(f"no rotations recorded in {state_dir}", file=out)
        return EXIT_OK
    with Journal.in_state_dir(state_dir) as journal:
        if cfg is None and args.token is not None:
            recorded = journal.tokens()
            if args.token not in recorded:
                print(f"patrol: no rotations of {args.token!r} recorded in {state_dir} (tokens with rotations: "
                      f"{', '.join(recorded) or 'none'}); pass --config to check the name against the "
                      "configured tokens", file=sys.stderr)
                return EXIT_USAGE
        records = journal.recent(args.token, limit=max(1, args.limit))
    if args.json:
        doc: list[dict[str, Any]] = [r.to_json() for r in records]
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(format_history(records, steps=args.steps), file=out)
    return EXIT_OK


# -- patrol adopt ---------------------------------------------------------------------------------
# Self-contained: its parser, its printing and its handler; patrol/cli.py mounts it with
# add_adopt_parser. The adoption logic itself lives in remediation/adopt.py.

def add_adopt_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Mapping[str, str],
                     common: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Mount ``adopt`` on ``sub`` (``common`` as for :func:`add_parsers`)."""
    adopt = sub.add_parser(
        "adopt", help="take over a hand-pasted PAT: record which PAT the sinks hold",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Find which of the bot's active PATs the sinks of TOKEN hold, prove it as far as\n"
                    "ADO allows, and write the metadata patrol's worker writes (Secret annotations,\n"
                    "Key Vault tags and exp) into every sink, without changing the token value.",
        epilog="examples:\n  patrol adopt keda --config patrol.yaml --dry-run\n"
               "  patrol adopt keda --config patrol.yaml --yes\n"
               "  patrol adopt keda --config patrol.yaml --authorization-id 3f2c...\n"
               "  patrol adopt keda --config patrol.yaml --json --yes | jq -r .outcome\n\n"
               "exit codes: 0 adopted (or already adopted, or a dry run that would adopt),\n"
               "1 refused or failed (nothing written), 2 usage or configuration error")
    adopt.add_argument("token", metavar="TOKEN", help="a token name from the configuration")
    adopt.add_argument("--authorization-id", metavar="ID", default=None,
                       help="the PAT the sinks hold, when several fit (or to settle it yourself)")
    adopt.add_argument("--dry-run", action="store_true", help="show the plan and write nothing")
    adopt.add_argument("--yes", action="store_true",
                       help="do not ask: adopt when exactly one PAT fits")
    adopt.add_argument("--json", action="store_true",
                       help="print the result as one JSON object (never asks: use --yes, "
                            "--authorization-id or --dry-run)")
    adopt.set_defaults(handler=run_adopt)
    if common is not None:
        common(adopt)
    else:
        adopt.add_argument("--config", metavar="FILE", default=env.get("PATROL_CONFIG"),
                           help="patrol configuration file (env PATROL_CONFIG)")
    adopt.set_defaults(env=env)


def print_adoption_plan(plan: AdoptionPlan, out: TextIO) -> None:
    token = plan.token
    print(f"adopt token {token.name} (organization {token.organization}, scopes "
          f"{' '.join(token.scopes)})", file=out)
    print("  sinks:", file=out)
    for h in plan.holdings:
        held = "holds a token" if h.value is not None else "holds nothing"
        recorded = (f", records {h.meta.authorization_id}" if h.meta.authorization_id
                    else ", no patrol metadata")
        print(f"    {h.sink_id}: {held}{recorded}", file=out)
    if plan.probe is not None:
        print(f"  probe: {'authenticates' if plan.probe.ok else 'REJECTED'} ({plan.probe.detail})", file=out)
    if plan.candidates:
        print("  active PATs of the bot with these scopes:", file=out)
        for c in plan.candidates:
            p = c.pat
            mark = "fits" if c.fits else "ruled out: " + "; ".join(c.objections)
            scope = "all organizations" if p.is_global else "this organization"
            print(f"    {p.authorization_id}  {p.display_name!r}  scopes {' '.join(p.scopes)}  validTo "
                  f"{p.valid_to:%Y-%m-%dT%H:%M:%SZ}  ({scope}) — {mark}", file=out)
    elif plan.probe is not None and plan.probe.ok:
        print("  active PATs of the bot with these scopes: none", file=out)
    for note in plan.notes:
        print(f"  note: {note}", file=out)
    if plan.chosen is not None and not plan.already_adopted:
        print(f"  plan: record {plan.chosen.authorization_id} (validTo "
              f"{plan.chosen.valid_to:%Y-%m-%dT%H:%M:%SZ}) in every sink; token values unchanged", file=out)


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in {"y", "yes"}
    except EOFError:
        return False


def _adopt_json(plan: AdoptionPlan | None, token: str, outcome: str, message: str,
                written: list[str]) -> str:
    """``adopt --json``: the outcome, a sentence, the sinks written, and the plan if one was made."""
    from remediation.adopt import plan_json

    doc: dict[str, Any] = {"token": token, "outcome": outcome, "message": message, "written": written}
    if plan is not None:
        details = plan_json(plan)
        chosen = details["chosen"]
        doc["authorization_id"] = chosen["authorization_id"] if chosen else None
        doc.update({k: v for k, v in details.items() if k != "token"})
    return json.dumps(doc, indent=2)


def run_adopt(args: argparse.Namespace, out: TextIO | None = None,
              confirm: Callable[[str], bool] = _ask) -> int:
    """``patrol adopt``; with ``--json`` the same decisions and exit codes, reported as one object
    on stdout (outcomes: adopted, already-adopted, would-adopt, refused, not-confirmed, failed)."""
    from core.errors import PatrolError
    from core.logs import redact
    from remediation.adopt import Adopter
    from remediation.world import CoreWorld

    out = out or sys.stdout
    as_json = bool(getattr(args, "json", False))
    cfg = _config(args)
    if args.token not in {t.name for t in cfg.tokens}:
        known = ", ".join(t.name for t in cfg.tokens) or "none"
        print(f"patrol: no token named {args.token!r} in {cfg.source} (configured: {known})", file=sys.stderr)
        return EXIT_USAGE
    plan: AdoptionPlan | None = None
    written: list[str] = []

    def report(outcome: str, message: str, code: int) -> int:
        print(_adopt_json(plan, args.token, outcome, message, written), file=out)
        return code

    with CoreWorld(cfg, env=_env(args)) as world:
        adopter = Adopter(cfg, world)
        try:
            plan = adopter.plan(args.token, authorization_id=args.authorization_id)
        except PatrolError as exc:
            if not as_json:
                raise
            return report("failed", redact(str(exc)), EXIT_FAILURE)
        if not as_json:
            print_adoption_plan(plan, out)
        if plan.refusal is not None:
            if as_json:
                return report("refused", f"adopt {args.token} refused, nothing written: {plan.refusal}",
                              EXIT_FAILURE)
            print(f"patrol: adopt {args.token} refused, nothing written: {plan.refusal}", file=sys.stderr)
            return EXIT_FAILURE
        assert plan.chosen is not None
        if plan.already_adopted:
            message = (f"{args.token} is already adopted: every sink records {plan.chosen.authorization_id}; "
                       "nothing changed")
            if as_json:
                return report("already-adopted", message, EXIT_OK)
            print(message, file=out)
            return EXIT_OK
        if args.dry_run:
            if as_json:
                return report("would-adopt", f"dry run: would record {plan.chosen.authorization_id} in "
                              f"{len(plan.holdings)} sink(s); nothing written", EXIT_OK)
            print("dry run: nothing written", file=out)
            return EXIT_OK
        confirmed = bool(args.yes or args.authorization_id) or (
            not as_json and confirm(f"record {plan.chosen.authorization_id} in {len(plan.holdings)} sink(s)?"))
        if not confirmed:
            message = (f"adopt {args.token}: not confirmed, nothing written (pass --yes to adopt "
                       "without asking)")
            if as_json:
                return report("not-confirmed", message, EXIT_FAILURE)
            print(f"patrol: {message}", file=sys.stderr)
            return EXIT_FAILURE
        try:
            for sink_id, line in adopter.apply_each(plan):
                written.append(sink_id)
                if not as_json:
                    print(f"  {line}", file=out)
        except PatrolError as exc:
            if not as_json:
                raise
            return report("failed", redact(str(exc)), EXIT_FAILURE)
        message = (f"{args.token} adopted as {plan.chosen.authorization_id}: the exporter reports its expiry "
                   "from the PAT Lifecycle API from its next refresh")
        if as_json:
            return report("adopted", message, EXIT_OK)
        print(message, file=out)
        return EXIT_OK
