"""``patrol worker``, ``patrol rotate`` and ``patrol history``: the worker's command line.

``patrol/cli.py`` (the composition root) owns the top-level parser, reads the environment
once and configures logging; it calls :func:`add_parsers` to mount these subcommands, which
receive that environment through ``args.env`` (never shown in ``--help``). Settings precedence
is flag > environment > config file, as everywhere in patrol.

``patrol rotate`` is the runbook in one command: the same saga the worker runs, step by step
on the terminal, with ``--dry-run`` to see the plan first.

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
from core.config import load_config
from core.errors import ConfigError
from core.secret import Secret

if TYPE_CHECKING:
    from remediation.journal import RotationRecord
    from remediation.saga import RotationPreview, StepEvent

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
WEBHOOK_TOKEN_ENV = "PATROL_WEBHOOK_TOKEN"
STATE_DIR_ENV = "PATROL_STATE_DIR"


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
               "  patrol rotate keda --config patrol.yaml --reason 'leaked in a log'")
    rotate.add_argument("token", metavar="TOKEN", help="a token name from the configuration")
    rotate.add_argument("--dry-run", action="store_true",
                        help="print the plan (scopes, lifetime, sinks, consumers, what would be revoked)")
    rotate.add_argument("--reason", default=None, help="why (recorded in the journal)")
    rotate.set_defaults(handler=run_rotate)
    finish(rotate)

    history = sub.add_parser(
        "history", help="show past rotations from the journal", formatter_class=fmt,
        description="Show past rotations (newest first) from the journal in the state dir.",
        epilog="examples:\n  patrol history --config patrol.yaml\n  patrol history keda --steps")
    history.add_argument("token", metavar="TOKEN", nargs="?", default=None, help="only this token")
    history.add_argument("--limit", type=int, default=20, help="how many rotations")
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
        await service.serve(host, port, stop=stop)

    try:
        service.start()
        asyncio.run(main())
    finally:
        service.stop()
        world.close()
    return EXIT_OK


# -- patrol rotate --------------------------------------------------------------------------------

def _print_step(out: TextIO) -> Callable[[StepEvent], None]:
    def show(event: StepEvent) -> None:
        if event.status == "running":
            print(f"  {event.step:<8} ...", file=out, flush=True)
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
    print("  switch (bump pod-template annotation), then verify:", file=out)
    for consumer in preview.consumers:
        c = consumer.consumer
        state = (f"problem: {consumer.problem}" if consumer.problem else
                 f"generation {consumer.generation}, Ready {consumer.ready}")
        if consumer.rollout_strategy is not None and not consumer.problem:
            state += f", rollout strategy {consumer.rollout_strategy}"
        print(f"    {c.k8s_kind} {c.cluster}/{c.namespace}/{c.name} (pool {c.pool}): {state}", file=out)
    if not preview.consumers:
        print("    (no consumers: verification probes the new token only)", file=out)
    print("  revoke after verification: " + (", ".join(preview.would_revoke) or
          "nothing known (no authorizationId in the sinks, no earlier patrol PAT)"), file=out)
    for warning in preview.warnings:
        print(f"  WARNING: {warning}", file=out)
    for problem in preview.problems:
        print(f"  PROBLEM: {problem}", file=out)


def run_rotate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from core.lease import LeaseLock
    from remediation.journal import Journal
    from remediation.leadership import Leadership
    from remediation.planner import Planner, TokenLocks
    from remediation.saga import RotationSaga
    from remediation.world import CoreWorld

    out = out or sys.stdout
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
            saga = RotationSaga(cfg, world, journal, on_step=_print_step(out),
                                may_continue=leadership.is_leader)
            if args.dry_run:
                preview = saga.preview(args.token)
                print_preview(preview, out)
                return EXIT_FAILURE if preview.problems else EXIT_OK
            if lease is not None:
                if not leadership.tick():
                    print(f"patrol: the worker {lease.holder() or '(unknown)'} holds the lease "
                          f"{lease.namespace}/{lease.name}; let it rotate (send the alert, or stop it) "
                          "and try again", file=sys.stderr)
                    return EXIT_FAILURE
                leadership.start()
            planner = Planner([t.name for t in cfg.tokens], journal, cooldown=cfg.worker.cooldown,
                              locks=TokenLocks(state_dir / "locks"))
            reason = args.reason or f"patrol rotate by {getpass.getuser()}"
            decision, request = planner.request(args.token, trigger="manual", reason=reason, force=True)
            if request is None:
                print(f"patrol: {args.token}: not started ({decision.reason})", file=sys.stderr)
                return EXIT_FAILURE
            print(f"rotating {args.token} (rotation {request.rotation_id}): {reason}", file=out, flush=True)
            try:
                outcome = saga.run(request)
            finally:
                planner.locks.release(args.token)
            record = journal.get(request.rotation_id)
            if outcome == "succeeded":
                print(f"rotation {record.id} succeeded: now {record.new_authorization_id}", file=out)
                return EXIT_OK
            if outcome is None:
                print(f"rotation {record.id} paused (lease lost); the worker resumes it", file=out)
                return EXIT_FAILURE
            print(f"rotation {record.id} FAILED: {record.error}", file=out)
            return EXIT_FAILURE
        finally:
            leadership.stop()
            journal.close()


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
    if not (state_dir / JOURNAL_FILE).exists():
        print(f"no rotations recorded in {state_dir}", file=out)
        return EXIT_OK
    with Journal.in_state_dir(state_dir) as journal:
        records = journal.recent(args.token, limit=max(1, args.limit))
    if args.json:
        doc: list[dict[str, Any]] = [r.to_json() for r in records]
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(format_history(records, steps=args.steps), file=out)
    return EXIT_OK
